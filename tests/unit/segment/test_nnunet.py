"""The nnU-Net v2 backend on a CI-sized dataset: export → plan/preprocess → train → predict.

6 patients × 2 timepoints of 32³ noisy spheres; 2 epochs × 3 iterations on CPU. The pipeline
runs once per module (about a minute on 2 cores); the other tests read what it wrote.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from deltarad import io
from deltarad.layout import nnunet_model_folder
from deltarad.runlog import UserError
from deltarad.segment import nnunet, nnunet_network
from deltarad.segment.nnunet import NnunetCase

DATASET_ID = 501
EPOCHS, ITERATIONS = 2, 3
MODEL_NAME = "nnUNetTrainer__nnUNetPlans__3d_fullres"


def _sphere_scan(rng: np.random.Generator, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    zz, yy, xx = np.mgrid[:size, :size, :size]
    centre, radius = rng.uniform(11, size - 11, 3), rng.uniform(5, 8)
    inside = ((zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2) <= radius**2
    image = 100.0 * inside + rng.normal(0.0, 15.0, inside.shape)
    return image.astype(np.float32), inside


def _write_scan(array: np.ndarray, path: Path, origin: tuple[float, ...], pixel=None) -> Path:
    image = sitk.GetImageFromArray(array if pixel is None else array.astype(pixel))
    image.SetSpacing((1.0, 1.0, 1.5))
    image.SetOrigin(origin)
    return io.write_image(image, path)


TUMOUR_LABEL, ORGAN_LABEL = 3, 5


def make_cases(folder: Path, n_patients: int = 6, seed: int = 0) -> list[NnunetCase]:
    """Seeded cases; masks hold the tumour as label 3 and an "organ" (label 5) in a corner, so
    that the export's binarisation (tumour label only) is exercised."""
    rng = np.random.default_rng(seed)
    cases = []
    for p in range(n_patients):
        pid = f"P{p:03d}"
        for tp in ("baseline", "followup"):
            image, inside = _sphere_scan(rng)
            origin = (float(p), 2.0, -3.0)
            img = _write_scan(image, folder / pid / f"{tp}.nii.gz", origin)
            labels = TUMOUR_LABEL * inside
            labels[:3, :3, :3] = ORGAN_LABEL
            mask = _write_scan(labels, folder / pid / f"{tp}_mask.nii.gz", origin, np.uint8)
            cases.append(NnunetCase(nnunet.case_id(pid, tp), pid, img, mask))
    return cases


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("nnunet")
    root = tmp / "nn"
    cases = make_cases(tmp / "data")
    # An unlabelled scan (goes to imagesTs) with a rotated, shifted grid for the geometry check.
    image, _ = _sphere_scan(np.random.default_rng(7))
    odd = sitk.GetImageFromArray(image)
    odd.SetSpacing((0.9, 1.1, 1.4))
    odd.SetOrigin((-20.0, 5.0, 12.5))
    odd.SetDirection((0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    unlabelled = NnunetCase("P099__baseline", "P099", io.write_image(odd, tmp / "odd.nii.gz"))
    raw = nnunet.export_dataset(
        cases + [unlabelled], root, DATASET_ID, "Test", "MR", mask_label=TUMOUR_LABEL
    )
    pre = root / "preprocessed" / raw.name
    splits = nnunet.write_patient_splits(cases, n_folds=2, seed=3, preprocessed_dir=pre)
    planned = nnunet.plan_and_preprocess(
        root, DATASET_ID, plans_out=tmp / "out/plans.json", fingerprint_samples=10**6
    )
    budget = {"iterations_per_epoch": ITERATIONS, "val_iterations": 1, "device": "cpu"}
    # Train one epoch, then pretend the run was killed after it: only checkpoint_latest is left.
    first = nnunet.train(root, DATASET_ID, "3d_fullres", 0, epochs=1, validate=False, **budget)
    fold = first / "fold_0"
    (fold / "checkpoint_final.pth").rename(fold / "checkpoint_latest.pth")
    interrupted_at = time.time()
    model = nnunet.train(
        root, DATASET_ID, "3d_fullres", 0, epochs=EPOCHS, seed=0, validate=False, **budget
    )
    # Predict from a copy elsewhere: what a user's pretrained model folder looks like.
    pretrained = tmp / "pretrained" / model.name
    shutil.copytree(model, pretrained)
    targets = [(c.case_id, c.image) for c in cases[:2]] + [(unlabelled.case_id, unlabelled.image)]
    masks = nnunet.predict(pretrained, targets, tmp / "pred", "cpu", use_mirroring=False)
    return {
        "tmp": tmp, "root": root, "cases": cases, "raw": raw, "splits": splits,
        "planned": planned, "model": model, "pretrained": pretrained, "targets": targets,
        "masks": masks, "interrupted_at": interrupted_at,
    }  # fmt: skip


def test_export_layout_and_binary_labels(pipeline):
    raw = pipeline["raw"]
    meta = json.loads((raw / "dataset.json").read_text())
    assert meta["numTraining"] == 12
    assert meta["labels"] == {"background": 0, "tumor": 1}
    assert meta["channel_names"] == {"0": "MR"}
    assert (raw / "imagesTr/P000__baseline_0000.nii.gz").is_file()
    assert (raw / "imagesTs/P099__baseline_0000.nii.gz").is_file()
    assert len(list((raw / "labelsTr").iterdir())) == 12
    label = sitk.GetArrayFromImage(io.read_image(raw / "labelsTr/P000__baseline.nii.gz"))
    assert set(np.unique(label)) == {0, 1}
    given = sitk.GetArrayFromImage(io.read_image(pipeline["cases"][0].mask))
    np.testing.assert_array_equal(label, given == TUMOUR_LABEL)  # the organ is background
    assert not [p for p in raw.parent.iterdir() if p.name.startswith(".")]


def test_plans_and_fingerprint_are_json(pipeline):
    planned = pipeline["planned"]
    plans = json.loads(planned["plans"].read_text())
    assert planned["plans"] == pipeline["tmp"] / "out/plans.json"
    assert plans["configurations"]["3d_fullres"]["patch_size"] == [32, 32, 32]
    fingerprint = json.loads(planned["fingerprint"].read_text())
    assert len(fingerprint["shapes_after_crop"]) == 12
    assert (planned["preprocessed"] / "nnUNetPlans.json").is_file()


def test_splits_keep_patients_together(pipeline):
    splits = json.loads(pipeline["splits"].read_text())
    assert len(splits) == 2
    seen_val = []
    for fold in splits:
        train_patients = {c.split("__")[0] for c in fold["train"]}
        val_patients = {c.split("__")[0] for c in fold["val"]}
        assert train_patients.isdisjoint(val_patients)
        assert len(val_patients) >= 2
        assert len(fold["train"]) + len(fold["val"]) == 12
        seen_val += fold["val"]
    assert sorted(seen_val) == sorted(c.case_id for c in pipeline["cases"])


def test_model_folder_layout_and_checkpoint(pipeline):
    model = pipeline["model"]
    assert model.name == MODEL_NAME
    assert model == nnunet_model_folder(pipeline["root"], DATASET_ID, "Test").resolve()
    for name in ("dataset.json", "plans.json", "fold_0/checkpoint_final.pth"):
        assert (model / name).is_file(), name
    assert not (model / "fold_0/checkpoint_latest.pth").exists()
    ckpt = torch.load(model / "fold_0/checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert ckpt["trainer_name"] == "nnUNetTrainer"
    assert ckpt["current_epoch"] == EPOCHS
    assert len(ckpt["logging"]["train_losses"]) == EPOCHS
    # Resumed, not restarted: epoch 0 ran before the interruption, epoch 1 after it.
    starts = ckpt["logging"]["epoch_start_timestamps"]
    assert starts[0] < pipeline["interrupted_at"] < starts[1]


def test_cases_from_rule_inputs():
    named = {"P1__baseline": "a.nii.gz", "P1__baseline_mask": "m.nii.gz", "P1__followup": "b",
             "samples": "s.tsv"}  # fmt: skip
    cases = nnunet.cases_from_inputs(named)
    assert cases == [
        NnunetCase("P1__baseline", "P1", Path("a.nii.gz"), Path("m.nii.gz")),
        NnunetCase("P1__followup", "P1", Path("b"), None),
    ]


def test_cases_from_rule_inputs_with_extra_channels():
    named = {"P1__baseline": "a.nii.gz", "P1__baseline__PET": "a_pet.nii.gz",
             "P1__baseline_mask": "m.nii.gz", "P1__followup": "b", "P1__followup__PET": "b_pet",
             "samples": "s.tsv"}  # fmt: skip
    cases = nnunet.cases_from_inputs(named, ["PET"])
    assert [c.images for c in cases] == [
        [Path("a.nii.gz"), Path("a_pet.nii.gz")],
        [Path("b"), Path("b_pet")],
    ]
    assert cases[0].mask == Path("m.nii.gz") and cases[1].mask is None
    del named["P1__followup__PET"]
    with pytest.raises(UserError, match=r"P1__followup: no image of channel\(s\) \['PET'\]"):
        nnunet.cases_from_inputs(named, ["PET"])


def test_two_channel_export(tmp_path):
    """A CT + PET study: the reference channel is nnU-Net's input 0 (``_0000``), PET input 1
    (``_0001``), named after their modalities in dataset.json; a channel off its scan's grid is
    a clear error."""
    cases = []
    for case in make_cases(tmp_path / "data", n_patients=2):
        pet = io.read_image(case.image) * 0.1
        pet_path = io.write_image(pet, case.image.with_name(f"{case.case_id}__PET.nii.gz"))
        cases.append(case._replace(extra_images=(pet_path,)))
    raw = nnunet.export_dataset(cases, tmp_path / "nn", 8, "Two", ["CT", "PET"])
    meta = json.loads((raw / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "CT", "1": "PET"}
    names = sorted(p.name for p in (raw / "imagesTr").iterdir())
    assert names == [f"{c.case_id}_{i:04d}.nii.gz" for c in cases for i in (0, 1)]
    pet = sitk.GetArrayFromImage(io.read_image(raw / "imagesTr/P000__baseline_0001.nii.gz"))
    np.testing.assert_allclose(pet, sitk.GetArrayFromImage(io.read_image(cases[0].image)) * 0.1)
    with pytest.raises(UserError, match=r"P000__baseline has 2 channel image\(s\) but .* \['CT'\]"):
        nnunet.export_dataset(cases, tmp_path / "nn", 8, "Two", "CT")
    shifted = io.read_image(cases[0].extra_images[0])
    shifted.SetOrigin((40.0, 0.0, 0.0))
    io.write_image(shifted, cases[0].extra_images[0])
    with pytest.raises(UserError, match=r"channel image .*__PET.nii.gz differs from .* in origin"):
        nnunet.export_dataset(cases, tmp_path / "nn", 8, "Two", ["CT", "PET"])


def test_prediction_needs_the_model_channels(pipeline):
    """A single-channel model given two images per scan (a study with another channel) fails
    before loading anything."""
    cid, image = pipeline["targets"][0]
    with pytest.raises(UserError, match=r"expects 1 input channel\(s\).*gives 2 image\(s\)"):
        nnunet.predict(pipeline["pretrained"], [(cid, [image, image])], pipeline["tmp"] / "y")


def test_network_normalisation_of_each_channel():
    """nnU-Net's normalisation of a two-channel scan (CT scheme for channel 0, z-score for 1),
    cropped to where any channel is non-zero, as its preprocessor does it."""
    from types import SimpleNamespace

    model = nnunet_network.NnunetNetwork(
        None,
        SimpleNamespace(foreground_intensity_properties_per_channel={
            "0": {"percentile_00_5": 10.0, "percentile_99_5": 90.0, "mean": 50.0, "std": 20.0},
            "1": {},
        }),
        SimpleNamespace(normalization_schemes=["CTNormalization", "ZScoreNormalization"],
                        use_mask_for_norm=[False, False]),
        "cpu",
    )  # fmt: skip
    rng = np.random.default_rng(2)
    scan = np.zeros((2, 6, 7, 8), np.float32)
    scan[:, 1:5, 2:6, 1:7] = rng.normal(50, 30, (2, 4, 4, 6))
    out = nnunet_network.normalize_for_network(scan, model)
    inside = (slice(1, 5), slice(2, 6), slice(1, 7))
    np.testing.assert_allclose(out[0][inside], (np.clip(scan[0][inside], 10, 90) - 50) / 20,
                               rtol=1e-5)  # fmt: skip
    pet = scan[1][inside]
    np.testing.assert_allclose(out[1][inside], (pet - pet.mean()) / pet.std(), rtol=1e-4,
                               atol=1e-5)  # fmt: skip
    assert not out[:, 0].any() and not out[:, :, :, 0].any()  # outside the non-zero box: 0


def test_finished_training_is_not_repeated(pipeline):
    final = pipeline["model"] / "fold_0/checkpoint_final.pth"
    before = final.stat().st_mtime_ns
    again = nnunet.train(
        pipeline["root"], DATASET_ID, "3d_fullres", 0, epochs=EPOCHS,
        iterations_per_epoch=ITERATIONS, val_iterations=1, device="cpu", validate=False,
    )  # fmt: skip
    assert again == pipeline["model"]
    assert final.stat().st_mtime_ns == before


def test_predicted_masks_binary_on_input_grid(pipeline):
    masks = pipeline["masks"]
    assert [m.name for m in masks] == [f"{cid}.nii.gz" for cid, _ in pipeline["targets"]]
    for mask_path, (_, image_path) in zip(masks, pipeline["targets"], strict=True):
        mask = io.read_image(mask_path)
        assert mask.GetPixelID() == sitk.sitkUInt8
        assert set(np.unique(sitk.GetArrayFromImage(mask))) <= {0, 1}
        assert io.Geometry.of(mask) == io.Geometry.of(io.read_image(image_path))
    assert not [p for p in masks[0].parent.iterdir() if p.name.startswith(".")]


def test_cuda_without_gpu_is_a_clear_error(pipeline):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(UserError, match="'cuda' but torch sees no GPU"):
        nnunet.train(pipeline["root"], DATASET_ID, "3d_fullres", 0, device="cuda")
    with pytest.raises(UserError, match="no GPU"):
        nnunet.predict(pipeline["model"], pipeline["targets"], pipeline["tmp"] / "x", "cuda")


def test_too_few_patients_per_fold(tmp_path):
    cases = [
        NnunetCase(f"P{p}__{tp}", f"P{p}", tmp_path / "i.nii.gz", tmp_path / "m.nii.gz")
        for p in range(6)
        for tp in ("baseline", "followup")
    ]
    with pytest.raises(UserError, match=r"6 training patients give fewer than 2 per fold for 4"):
        nnunet.write_patient_splits(cases, 4, 0, tmp_path)
    with pytest.raises(UserError, match=r"6 training patients cannot fill 7 folds"):
        nnunet.write_patient_splits(cases, 7, 0, tmp_path)
    assert not (tmp_path / "splits_final.json").exists()


def test_pretrained_folder_missing_files(pipeline, tmp_path):
    broken = tmp_path / MODEL_NAME
    shutil.copytree(pipeline["pretrained"], broken)
    (broken / "fold_0/checkpoint_final.pth").unlink()
    with pytest.raises(UserError, match=r"lacks fold 0: .*fold_0/checkpoint_final\.pth"):
        nnunet.predict(broken, pipeline["targets"], tmp_path / "out", "cpu")
    (broken / "plans.json").unlink()
    with pytest.raises(UserError, match="lacks plans.json"):
        nnunet.predict(broken, pipeline["targets"], tmp_path / "out", "cpu")
    assert not (tmp_path / "out").exists()


def test_training_fold_outside_splits(pipeline, tmp_path):
    with pytest.raises(UserError, match="fold 5 requested but .* has 2"):
        nnunet.train(pipeline["root"], DATASET_ID, "3d_fullres", 5, device="cpu")


def test_interrupted_export_leaves_nothing(tmp_path, monkeypatch):
    cases = make_cases(tmp_path / "data", n_patients=2)
    calls = []

    def failing(case, folder, label):
        calls.append(case)
        if len(calls) == 3:
            raise KeyboardInterrupt
        real(case, folder, label)

    real = nnunet._write_case
    monkeypatch.setattr(nnunet, "_write_case", failing)
    with pytest.raises(KeyboardInterrupt):
        nnunet.export_dataset(cases, tmp_path / "nn", 7, "Half", "CT")
    assert list((tmp_path / "nn/raw").iterdir()) == []


def test_export_rejects_bad_input(tmp_path):
    cases = make_cases(tmp_path / "data", n_patients=1)
    bad_id = [cases[0]._replace(case_id="P000 baseline")]
    with pytest.raises(UserError, match=r"must be \[A-Za-z0-9_-\]\+"):
        nnunet.export_dataset(bad_id, tmp_path / "nn", 7, "Bad", "CT")
    shifted = io.read_image(cases[0].mask)
    shifted.SetOrigin((50.0, 0.0, 0.0))
    io.write_image(shifted, cases[0].mask)
    with pytest.raises(UserError, match="P000__baseline: mask .* differs from its image in origin"):
        nnunet.export_dataset(cases, tmp_path / "nn", 7, "Bad", "CT")


def test_nnunet_deep_features_pool_the_encoder_maps(pipeline):
    """Deep features from the trained model's encoder (one patient, one 32³ window per scan)."""
    from deltarad.features.deep import NO_PARAMS, nnunet_encoder, patient_deep_features
    from deltarad.features.table import FeatureSettings

    base, follow = pipeline["cases"][:2]  # P000
    scans = {"baseline": (base.image, base.mask), "followup": (follow.image, follow.mask)}
    settings = FeatureSettings(NO_PARAMS, rings_mm=((0, 3), (3, 6)), label=TUMOUR_LABEL)
    encoder = nnunet_encoder(pipeline["pretrained"], "cpu", fold=0)
    row = patient_deep_features("P000", encoder, scans, ["MR"], settings, [0, 1], ("mean", "max"))
    plans = json.loads((pipeline["pretrained"] / "plans.json").read_text())
    widths = plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]
    widths = widths["features_per_stage"][:2]
    cols = list(row.columns[1:])
    assert len(cols) == 2 * 3 * sum(widths) * 2  # timepoints x regions x channels x stats
    assert f"followup__MR__ring3to6mm__deep__l1_f{widths[1] - 1:03d}_max" in cols
    assert np.isfinite(row[cols].to_numpy(float)).all()
    tumour = row.filter(like="baseline__MR__tumor__deep__l1_").to_numpy(float)
    ring = row.filter(like="baseline__MR__ring0to3mm__deep__l1_").to_numpy(float)
    assert not np.allclose(tumour, ring, rtol=0.05)

    # By hand: nnU-Net's z-score of the whole scan (non-zero everywhere), its encoder's first
    # stage, channel 0 averaged over the tumour voxels.
    assert plans["configurations"]["3d_fullres"]["normalization_schemes"] == ["ZScoreNormalization"]
    assert plans["transpose_forward"] == [0, 1, 2]
    array = sitk.GetArrayFromImage(io.read_image(base.image)).astype(np.float64)
    x = ((array - array.mean()) / array.std()).astype(np.float32)
    model = nnunet_network.load_network(pipeline["pretrained"], 0, device="cpu")
    with torch.no_grad():
        maps = model.network.encoder(torch.from_numpy(x)[None, None])
    inside = sitk.GetArrayFromImage(io.read_image(base.mask)) == TUMOUR_LABEL
    expected = float(maps[0][0, 0].numpy()[inside].mean())
    got = row["baseline__MR__tumor__deep__l0_f000_mean"].iloc[0]
    assert got == pytest.approx(expected, rel=1e-4, abs=1e-5)

    # A scan off the plans' spacing is resampled to it (same columns, finite values).
    odd = {}
    for kind, path in (("image", base.image), ("mask", base.mask)):
        img = io.read_image(path)
        img.SetSpacing((1.0, 1.0, 1.0))  # the plans say 1.5 mm along z
        odd[kind] = io.write_image(img, pipeline["tmp"] / f"odd_spacing_{kind}.nii.gz")
    resampled = patient_deep_features(
        "P000", encoder, {"baseline": (odd["image"], odd["mask"])}, ["MR"], settings, [0, 1]
    )
    assert len(resampled.columns) == 1 + 3 * sum(widths)
    assert np.isfinite(resampled.iloc[:, 1:].to_numpy(float)).all()
    with pytest.raises(UserError, match=r"features.deep.levels: \[9\] outside"):
        patient_deep_features("P000", encoder, scans, ["MR"], settings, [9])


def test_export_leaves_out_registration_gate_failures(tmp_path):
    """Patients the registration QC gate dropped are neither trained on nor in a fold."""
    cases = make_cases(tmp_path / "data", n_patients=5)
    named = {c.case_id: c.image for c in cases} | {f"{c.case_id}_mask": c.mask for c in cases}
    out = nnunet.export_training_set(
        named, tmp_path / "nn", 9, "Gate", "CT", n_folds=2, seed=0, mask_label=TUMOUR_LABEL,
        excluded={"P001"},
    )  # fmt: skip
    dataset = json.loads(out["dataset_json"].read_text())
    assert dataset["numTraining"] == 8
    raw = sorted(p.name for p in (out["dataset_json"].parent / "imagesTr").iterdir())
    assert raw and not [n for n in raw if n.startswith("P001")]
    folds = json.loads(out["splits"].read_text())
    patients = {case.split("__")[0] for fold in folds for case in fold["train"] + fold["val"]}
    assert patients == {"P000", "P002", "P003", "P004"}
