"""Shared-work extraction equals pyradiomics' own extractor, region by region."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from deltarad.features import handcrafted as hc
from deltarad.features import regions as rg

REPO = Path(__file__).resolve().parents[3]
RINGS = [(0.0, 3.0), (3.0, 6.0), (6.0, 10.0)]


def _params(resample: bool) -> dict:
    params = copy.deepcopy(hc.load_params(REPO / "config/radiomics/ct.yaml"))
    params["imageType"] = {"Original": {}, "LoG": {"sigma": [2.0, 3.0]}, "Wavelet": {}}
    params["setting"]["resampledPixelSpacing"] = [2.0, 2.0, 2.0] if resample else None
    params["setting"]["interpolator"] = "sitkBSpline"
    return params


@pytest.fixture(scope="module")
def scan(tiny_cohort_ro):
    samples = pd.read_csv(tiny_cohort_ro / "samples.tsv", sep="\t")
    row = samples.iloc[0]
    image, mask = hc.read_scan(
        tiny_cohort_ro / row["image"], tiny_cohort_ro / row["mask"], "C1-001 baseline"
    )
    return image, rg.build_regions(image, mask, RINGS, body_threshold=-500)


def _plain(values: dict) -> dict[str, float]:
    return {k: float(v) for k, v in values.items() if not k.startswith("diagnostics_")}


def _assert_equal(ours: dict[str, float], ref: dict[str, float]) -> None:
    assert set(ours) == set(ref)
    a = np.array([ours[k] for k in ref])
    b = np.array([ref[k] for k in ref])
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-12)


def test_equals_pyradiomics_extractor_for_every_region(scan):
    image, regions = scan
    extractor = hc.make_extractor(_params(resample=False))
    ours, errors = hc.extract_regions(image, regions, extractor)
    assert errors == {} and list(ours) == list(regions)
    assert len(ours["tumor"]) > 500  # original + 2 LoG + 8 wavelet images, all classes
    for name, mask in regions.items():
        _assert_equal(ours[name], _plain(extractor.execute(image, mask)))


def test_with_resampling_equals_pyradiomics_on_the_shared_grid(scan):
    image, regions = scan
    extractor = hc.make_extractor(_params(resample=True))
    ours, errors = hc.extract_regions(image, regions, extractor)
    assert errors == {}
    work_image, _, work_regions = hc.prepare_scan(image, regions, extractor)
    assert work_image.GetSpacing() == (2.0, 2.0, 2.0)
    plain = hc.make_extractor(_params(resample=False))
    for name in ("tumor", "ring3to6mm"):
        _assert_equal(ours[name], _plain(plain.execute(work_image, work_regions[name])))
    # A scan's only region: identical to pyradiomics' own resampling.
    alone, _ = hc.extract_regions(image, {"tumor": regions["tumor"]}, extractor)
    _assert_equal(alone["tumor"], _plain(extractor.execute(image, regions["tumor"])))


def test_each_filter_runs_once_per_scan(scan, monkeypatch):
    from radiomics import imageoperations

    calls = {"LoG": 0, "Wavelet": 0}
    for kind in calls:
        real = getattr(imageoperations, f"get{kind}Image")

        def counted(*args, _real=real, _kind=kind, **kwargs):
            calls[_kind] += 1
            yield from _real(*args, **kwargs)

        monkeypatch.setattr(imageoperations, f"get{kind}Image", counted)
    image, regions = scan
    hc.extract_regions(image, regions, hc.make_extractor(_params(resample=False)))
    assert calls == {"LoG": 1, "Wavelet": 1}


def test_small_or_empty_regions_fail_softly(scan):
    image, regions = scan
    empty = sitk.Image(regions["tumor"])
    empty = empty * 0
    extractor = hc.make_extractor(_params(resample=False) | {"imageType": {"Original": {}}})
    ours, errors = hc.extract_regions(
        image, {**regions, "ring6to10mm": empty}, extractor, min_voxels={"tumor": 10**6}
    )
    assert set(errors) == {"tumor", "ring6to10mm"}
    assert "minimum 1000000" in errors["tumor"] and "0 voxels" in errors["ring6to10mm"]
    assert set(ours) == {"ring0to3mm", "ring3to6mm"}


def test_geometry_mismatch_names_the_scan_and_both_geometries(tiny_cohort, tmp_path):
    from deltarad import io

    image_path = tiny_cohort / "images/C1-001/baseline.nii.gz"
    mask = io.read_image(tiny_cohort / "masks/C1-001/baseline.nii.gz")
    mask.SetOrigin((5.0, 0.0, 0.0))
    bad = io.write_image(mask, tmp_path / "mask.nii.gz")
    with pytest.raises(hc.GeometryMismatchError) as err:
        hc.read_scan(image_path, bad, "patient C1-001, baseline")
    text = str(err.value)
    assert "patient C1-001, baseline" in text and "origin" in text
    assert "origin (5, 0, 0)" in text and text.count("spacing") >= 2
