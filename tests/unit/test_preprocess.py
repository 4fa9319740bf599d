"""Preprocessing: resampling keeps physical space and labels; normalisation; fingerprint."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from deltarad import io
from deltarad.body import body_mask
from deltarad.preprocess import (
    PreprocessSettings,
    fingerprint,
    normalize,
    preprocess_scan,
    resample_to_spacing,
)


def _center(image: sitk.Image) -> np.ndarray:
    size = np.asarray(image.GetSize())
    return np.asarray(image.TransformContinuousIndexToPhysicalPoint(tuple((size - 1) / 2.0)))


def test_resampling_keeps_the_field_of_view_and_binary_labels(tiny_cohort_ro):
    image = io.read_image(tiny_cohort_ro / "images/C2-001/baseline.nii.gz")  # 2.5x2.5x5 mm
    mask = io.read_image(tiny_cohort_ro / "masks/C2-001/baseline.nii.gz")
    out = resample_to_spacing(image, (2.0, 2.0, 2.0), is_label=False)
    out_mask = resample_to_spacing(mask, (2.0, 2.0, 2.0), is_label=True)
    assert out.GetSpacing() == (2.0, 2.0, 2.0)
    np.testing.assert_allclose(_center(out), _center(image), atol=1e-6)
    assert io.Geometry.of(out).mismatches(io.Geometry.of(out_mask)) == []
    assert set(np.unique(sitk.GetArrayViewFromImage(out_mask)).tolist()) == {0, 1}
    vol = [
        np.count_nonzero(sitk.GetArrayViewFromImage(m)) * np.prod(m.GetSpacing())
        for m in (mask, out_mask)
    ]
    assert vol[1] == pytest.approx(vol[0], rel=0.1)


def test_mr_zscore_inside_body_and_ct_window():
    rng = np.random.default_rng(0)
    arr = np.zeros((20, 30, 30), np.float32)
    arr[:, 5:25, 5:25] = rng.normal(500.0, 50.0, (20, 20, 20))
    image = sitk.GetImageFromArray(arr)
    out, record = normalize(image, "MR", PreprocessSettings())
    body = sitk.GetArrayFromImage(body_mask(image, "MR")) > 0
    values = sitk.GetArrayViewFromImage(out)[body]
    assert abs(values.mean()) < 1e-4 and values.std() == pytest.approx(1.0, abs=1e-4)
    assert record["zscore"]["mean"] == pytest.approx(500.0, abs=2.0)
    ct = sitk.GetImageFromArray(
        np.linspace(-1000, 1000, 8000, dtype=np.float32).reshape(20, 20, 20)
    )
    clipped, record = normalize(ct, "CT", PreprocessSettings(ct_window=(-200.0, 300.0)))
    assert sitk.GetArrayViewFromImage(clipped).min() == -200.0
    assert sitk.GetArrayViewFromImage(clipped).max() == 300.0
    assert record["ct_window"] == [-200.0, 300.0]


def test_preprocess_scan_records_every_choice_and_crops(tiny_cohort_ro, tmp_path):
    c = tiny_cohort_ro
    settings = PreprocessSettings(spacing=(2.0, 2.0, 2.0), crop=True, crop_margin_mm=4.0)
    record = preprocess_scan(
        c / "images/C1-001/baseline.nii.gz",
        c / "masks/C1-001/baseline.nii.gz",
        "CT",
        settings,
        tmp_path / "i.nii.gz",
        tmp_path / "m.nii.gz",
        tmp_path / "r.json",
    )
    assert json.loads((tmp_path / "r.json").read_text())["crop_box_xyz"] == record["crop_box_xyz"]
    image = io.read_image(tmp_path / "i.nii.gz")
    assert image.GetSize() == tuple(record["output_size"])
    # Resampled 3x3x4 mm -> 2 mm gives 48^3; the body (a cylinder along z) crops x and y only.
    assert record["output_size"][0] < 48 and record["output_size"][1] < 48
    assert record["output_size"][2] == 48
    assert record["interpolation"]["mask"].startswith("linear")
    assert record["mask_voxels"] > 100


def test_preprocess_requires_a_mask(tiny_cohort_ro, tmp_path):
    with pytest.raises(io.ImageReadError, match="patient X, baseline: no mask"):
        preprocess_scan(
            tiny_cohort_ro / "images/C1-001/baseline.nii.gz",
            None,
            "CT",
            PreprocessSettings(),
            tmp_path / "i.nii.gz",
            tmp_path / "m.nii.gz",
            tmp_path / "r.json",
            where="patient X, baseline",
        )


def test_fingerprint_and_auto_spacing(tiny_cohort_ro, monkeypatch):
    monkeypatch.chdir(tiny_cohort_ro)
    samples = io.read_tsv("samples.tsv")
    fp = fingerprint(samples)
    assert fp["n_scans"] == 12
    assert fp["median_spacing"] == [2.75, 2.75, 4.5]  # half the scans 3x3x4, half 2.5x2.5x5
    assert set(fp["intensity_in_mask"]) == {"C1/CT", "C2/CT"}
    assert PreprocessSettings.from_config({"spacing": "auto"}, fp).spacing == (2.75, 2.75, 4.5)
    assert PreprocessSettings.from_config({"spacing": None}).spacing is None
