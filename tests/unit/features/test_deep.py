"""Deep features: pooling inside regions, and one patient's row from a trained network folder."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import torch

from deltarad import io
from deltarad.features import naming
from deltarad.features.deep import (
    NO_PARAMS,
    _starts,
    own_encoder,
    patient_deep_features,
    pool_regions,
    write_patient_deep,
)
from deltarad.features.table import FeatureSettings
from deltarad.layout import scan_paths
from deltarad.runlog import UserError
from deltarad.segment.data import PairCase
from deltarad.segment.plan import Preset, normalize
from deltarad.segment.stage import pair_cases
from deltarad.segment.train import train_network
from tests.unit.segment.test_network import SETTINGS, STUDY_CHANNELS, write_two_channel_study


def test_pooling_is_the_region_weighted_mean_and_max():
    act = torch.zeros(2, 2, 2, 2)
    act[0, 0] = 1.0  # channel 0: 1 in the first z-half, 0 elsewhere
    act[1] = 5.0  # channel 1: constant
    region = np.zeros((4, 4, 4), bool)
    region[:2, :2, :2] = True  # exactly coarse voxel (0, 0, 0)
    region[2:, :2, :1] = True  # half of coarse voxel (1, 0, 0)
    empty = np.zeros_like(region)
    out = pool_regions([None, act], {"r": region, "e": empty}, [1], ("mean", "max"))
    # weights: 1 (value 1) and 0.5 (value 0) -> mean 1 / 1.5
    assert math.isclose(out["r"]["l1_f000_mean"], 1 / 1.5, rel_tol=1e-6)
    assert math.isclose(out["r"]["l1_f001_mean"], 5.0, rel_tol=1e-6)
    assert out["r"]["l1_f000_max"] == 1.0
    assert math.isnan(out["e"]["l1_f000_mean"]) and math.isnan(out["e"]["l1_f001_max"])


def test_patient_row_has_every_timepoint_region_level_and_channel(tmp_path):
    rng = np.random.default_rng(0)
    grid = np.indices((16, 16, 16)).astype(float)
    paths = {}
    for tp, r in (("baseline", 4.5), ("followup", 3.5)):
        # Tumour label 2; label 5 (an organ) must not count as tumour.
        mask = 2 * (np.sqrt(((grid - 8) ** 2).sum(0)) <= r).astype(np.uint8)
        mask[:, :2, :2] = 5
        for kind, arr in (("image", 100.0 * mask + rng.normal(0, 10, mask.shape)), ("mask", mask)):
            img = sitk.GetImageFromArray(arr.astype(np.float32 if kind == "image" else np.uint8))
            img.SetSpacing((2.0, 2.0, 2.0))
            paths[tp, kind] = io.write_image(img, tmp_path / f"{tp}_{kind}.nii.gz")
    cases = [
        PairCase(
            pid,
            "followup",
            paths["baseline", "image"],
            paths["followup", "image"],
            paths["baseline", "mask"],
            paths["followup", "mask"],
        )  # fmt: skip
        for pid in ("P1", "P2")
    ]
    settings = {**SETTINGS, "training": {**SETTINGS["training"], "epochs": 1}}
    preset = Preset("seg", ("segmentation",), "both", 1, {})
    train_network(cases, [], preset, "MR", settings, tmp_path / "m", "cpu", seed=0)
    scans = {tp: (paths[tp, "image"], paths[tp, "mask"]) for tp in ("baseline", "followup")}
    settings = FeatureSettings(NO_PARAMS, rings_mm=((0, 2), (2, 4)), label=2)
    row = patient_deep_features("P1", own_encoder(tmp_path / "m"), scans, ["MR"], settings, [1, 2])
    assert isinstance(row, pd.DataFrame) and row["patient_id"].tolist() == ["P1"]
    cols = row.columns[1:]
    # features of levels 1 and 2: 8 + 16 channels (base 4, doubling), 3 regions, 2 timepoints
    assert len(cols) == 2 * 3 * (8 + 16)
    assert "followup__MR__ring2to4mm__deep__l2_f015_mean" in cols
    assert row[cols].notna().all(axis=None)
    # The adapter's path: config blocks, the mask label passed through, a parquet partial file.
    block = {"rings_mm": [[0, 2], [2, 4]], "body_threshold": {}, "mask_label": 2,
             "deep": {"method": "seg", "levels": [1, 2], "stats": ["mean"]}}  # fmt: skip
    out = write_patient_deep(
        "P1", tmp_path / "m", scans, ["MR"], block, "MR", tmp_path / "P1.parquet"
    )
    pd.testing.assert_frame_equal(pd.read_parquet(out), row)
    # With label 1 nothing is tumour: tumour pools are NA (the organ label is never taken).
    wrong = patient_deep_features(
        "P1", own_encoder(tmp_path / "m"), scans, ["MR"], FeatureSettings(NO_PARAMS, label=1), [1]
    )
    assert wrong.filter(like="__tumor__").isna().all(axis=None)


def test_window_starts_align_with_the_coarsest_grid():
    assert _starts(32, 32, 16, 0.5) == [0]
    assert _starts(96, 32, 16, 0.5) == [0, 16, 32, 48, 64]
    assert _starts(80, 48, 16, 0.5) == [0, 16, 32]  # step 24 rounded down to 16; last flush
    assert all(s % 8 == 0 for s in _starts(200, 64, 8, 0.3))
    assert _starts(200, 64, 8, 0.3)[-1] == 200 - 64


def test_two_channel_encoder_names_every_channel_it_reads(tmp_path):
    """A CT + PET network: the encoder reads both channels of each timepoint; the columns'
    channel part names both (``CT+PET``); a study with other channels is a clear error."""
    results, samples, _ = write_two_channel_study(tmp_path, n_patients=2)
    cases = pair_cases(results, io.read_tsv(samples), ["P0", "P1"], None, extra_channels=["PET"])
    settings = {**SETTINGS, "training": {**SETTINGS["training"], "epochs": 1}}
    preset = Preset("seg", ("segmentation",), "both", 1, {})
    train_network(cases, [], preset, STUDY_CHANNELS, settings, tmp_path / "m", "cpu", seed=0)
    scans = {tp: scan_paths(results, "P0", tp) for tp in ("baseline", "followup")}
    extra = {tp: [scan_paths(results, "P0", tp, "PET")[0]] for tp in scans}
    channels = ["CT", "PET"]
    encoder = own_encoder(tmp_path / "m", channels=channels)
    regions = FeatureSettings(NO_PARAMS, rings_mm=((0, 2),))
    row = patient_deep_features(
        "P0", encoder, scans, channels, regions, [0, 1], modality="CT", extra_images=extra
    )
    assert naming.deep_channel(channels) == "CT+PET"
    assert "followup__CT+PET__ring0to2mm__deep__l1_f007_mean" in row.columns
    assert {naming.parse(c).channel for c in row.columns[1:]} == {"CT+PET"}
    assert row.iloc[:, 1:].notna().all(axis=None)

    # By hand: both channels normalised as the plan says, stacked, the encoder's first level,
    # feature map 0 averaged over the tumour voxels.
    from deltarad.segment.infer import load_model

    net, plan, _ = load_model(tmp_path / "m", torch.device("cpu"))
    image, mask = scan_paths(results, "P0", "baseline")
    arrays = [sitk.GetArrayFromImage(io.read_image(p)) for p in (image, extra["baseline"][0])]
    x = np.stack([normalize(a, plan, c) for c, a in enumerate(arrays)])
    with torch.no_grad():
        level0 = net.encode(torch.from_numpy(x)[None])[0][0, 0].numpy()
    inside = sitk.GetArrayFromImage(io.read_image(mask)) == 1
    got = row["baseline__CT+PET__tumor__deep__l0_f000_mean"].iloc[0]
    assert math.isclose(got, float(level0[inside].mean()), rel_tol=1e-4, abs_tol=1e-5)

    with pytest.raises(UserError, match=r"reads the channels \['CT', 'PET'\].*has \['CT'\]"):
        own_encoder(tmp_path / "m", channels=["CT"])
    with pytest.raises(UserError, match=r"baseline: 0 image\(s\) besides the reference"):
        patient_deep_features("P0", encoder, scans, channels, regions, [1])
