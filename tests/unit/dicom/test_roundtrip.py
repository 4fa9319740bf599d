"""Round trip: synthetic NIfTI -> DICOM (CT + RTSTRUCT + SEG) -> ingest -> compare with truth."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from deltarad import io
from deltarad.cli import main
from deltarad.cohort import ValidationSettings, validate_cohort
from deltarad.dicom.ingest import IngestOptions, ingest_dicom, mask_dice
from deltarad.dicom.pseudonym import pseudonym
from tests.unit.dicom.conftest import KEY, phi_strings


def _array(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(io.read_image(path))


@pytest.fixture(scope="module")
def ingested(dicom_export, tmp_path_factory):
    root, _ = dicom_export
    out = tmp_path_factory.mktemp("ingest")
    results = {}
    for source in ("seg", "rtstruct"):
        options = IngestOptions(roi_regex=r"^gtv", mask_source=source, center="C9")
        results[source] = ingest_dicom(root, out / source, KEY.encode(), options)
    return out, results


def test_images_equal_originals(ingested, dicom_export, labelled_cohort_ro):
    out, results = ingested
    _, manifest = dicom_export
    assert results["seg"].failures.empty
    assert len(results["seg"].samples) == len(manifest) == 12
    for row in manifest.itertuples():
        pid = pseudonym(row.dicom_patient_id, KEY.encode())
        original = io.read_image(
            labelled_cohort_ro / f"images/{row.patient_id}/{row.timepoint}.nii.gz"
        )
        converted = io.read_image(out / f"seg/images/{pid}/{row.timepoint}_CT.nii.gz")
        assert io.Geometry.of(converted) == io.Geometry.of(original)  # exactly
        # CT is written with slope 1, so values must match exactly (no rescale rounding).
        np.testing.assert_array_equal(
            sitk.GetArrayFromImage(converted), sitk.GetArrayFromImage(original)
        )


def test_masks_from_seg_identical_and_rtstruct_dice(ingested, dicom_export, labelled_cohort_ro):
    out, results = ingested
    _, manifest = dicom_export
    assert results["rtstruct"].failures.empty
    dices = []
    for row in manifest.itertuples():
        pid = pseudonym(row.dicom_patient_id, KEY.encode())
        truth = _array(labelled_cohort_ro / f"masks/{row.patient_id}/{row.timepoint}.nii.gz")
        seg_mask = out / f"seg/masks/{pid}/{row.timepoint}_CT.nii.gz"
        np.testing.assert_array_equal(_array(seg_mask), truth)
        rt_mask = _array(out / f"rtstruct/masks/{pid}/{row.timepoint}_CT.nii.gz")
        assert io.Geometry.of(io.read_image(seg_mask)) == io.Geometry.of(
            io.read_image(out / f"rtstruct/images/{pid}/{row.timepoint}_CT.nii.gz")
        )
        dices.append(mask_dice(rt_mask, truth))
    assert min(dices) >= 0.95, dices


def test_sheets_validate_and_days_match(dicom_export, clinical_by_mrn, tmp_path):
    root, manifest = dicom_export
    out = tmp_path / "out"
    options = IngestOptions(roi_regex="gtv", clinical=clinical_by_mrn)
    result = ingest_dicom(root, out, KEY.encode(), options)
    samples, clinical = validate_cohort(
        out / "samples.tsv", out / "clinical.tsv", ValidationSettings()
    )
    assert len(samples) == 12 and len(clinical) == 6
    # One series per timepoint and modality: the channel is the modality.
    assert (result.samples["channel"] == "CT").all()
    got = {(r.patient_id, r.timepoint): int(r.days) for r in result.samples.itertuples()}
    for row in manifest.itertuples():
        assert got[(pseudonym(row.dicom_patient_id, KEY.encode()), row.timepoint)] == row.days


def _texts(folder: Path) -> dict[Path, str]:
    texts = {}
    for path in folder.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            if path.name.endswith(".gz"):
                data = gzip.decompress(data)
            texts[path] = data.decode("latin-1").lower()
    return texts


def test_no_phi_in_any_output_or_log(dicom_copy, clinical_by_mrn, tmp_path, monkeypatch, capsys):
    root, manifest = dicom_copy
    # Also break one series, so that error messages naming files (whose folder names carry
    # the hospital number, family name and visit date) are part of what is searched.
    (Path(manifest["series_folder"].iloc[0]) / "IMG0007.dcm").unlink()
    monkeypatch.setenv("SITE_KEY", KEY)
    out = tmp_path / "out"
    args = ["ingest-dicom", str(root), "--out", str(out), "--key-env", "SITE_KEY"]
    assert main([*args, "--roi", "gtv", "--clinical", str(clinical_by_mrn)]) == 0
    captured = capsys.readouterr()
    texts = _texts(out)
    texts[Path("<stdout+stderr>")] = (captured.out + captured.err).lower()
    assert (out / "logs/ingest_dicom.log").is_file()
    assert "missing slice" in texts[out / "failures.tsv"]
    assert "img0006.dcm" in texts[out / "failures.tsv"]  # files are named, scrubbed
    strings = phi_strings(manifest) | {KEY}
    assert len(strings) > 50
    leaks = [(str(p), s) for p, text in texts.items() for s in strings if s.lower() in text]
    assert leaks == []
    # The pseudonyms themselves are there: the search can see the files it searches.
    assert pseudonym(manifest["dicom_patient_id"].iloc[1], KEY.encode()).lower() in "".join(
        texts.values()
    )
