"""Deep features: pooling inside regions, and one patient's row from a trained network folder."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import SimpleITK as sitk
import torch

from deltarad import io
from deltarad.features.deep import patient_deep_features, pool_regions
from deltarad.segment.data import PairCase
from deltarad.segment.plan import Preset
from deltarad.segment.train import train_network
from tests.unit.segment.test_network import SETTINGS


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
        mask = (np.sqrt(((grid - 8) ** 2).sum(0)) <= r).astype(np.uint8)
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
    row = patient_deep_features("P1", tmp_path / "m", scans, [(0, 2), (2, 4)], None, [1, 2])
    assert isinstance(row, pd.DataFrame) and row["patient_id"].tolist() == ["P1"]
    cols = row.columns[1:]
    # features of levels 1 and 2: 8 + 16 channels (base 4, doubling), 3 regions, 2 timepoints
    assert len(cols) == 2 * 3 * (8 + 16)
    assert "followup__ring2to4mm__deep__l2_f015_mean" in cols
    assert row[cols].notna().all(axis=None)
