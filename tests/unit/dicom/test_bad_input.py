"""Bad input: each problem is an error naming the file, and the other patients still ingest."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

from deltarad.cli import main
from deltarad.dicom.ingest import IngestOptions, ingest_dicom
from deltarad.dicom.pseudonym import pseudonym
from tests.unit.dicom.conftest import KEY


def _ingest(root: Path, out: Path, **kw):
    return ingest_dicom(root, out, KEY.encode(), IngestOptions(roi_regex="gtv", **kw))


def _pid(manifest, index: int) -> str:
    return pseudonym(manifest["dicom_patient_id"].iloc[index], KEY.encode())


def _check(result, manifest, broken: int, needle: str) -> str:
    """The patient of scan row `broken` has a failure containing `needle`; all others ingested."""
    pid = _pid(manifest, broken)
    errors = result.failures[result.failures["patient_id"] == pid]["error"].tolist()
    assert any(needle in e for e in errors), errors
    others = {pseudonym(m, KEY.encode()) for m in manifest["dicom_patient_id"]} - {pid}
    assert others <= set(result.samples["patient_id"])
    return "\n".join(errors)


def test_missing_slice_named(dicom_copy, tmp_path):
    root, manifest = dicom_copy
    folder = Path(manifest["series_folder"].iloc[0])  # a baseline
    (folder / "IMG0010.dcm").unlink()
    result = _ingest(root, tmp_path / "out")
    text = _check(result, manifest, 0, "missing slice")
    assert "IMG0009.dcm" in text and "IMG0011.dcm" in text
    assert "patient skipped" in text  # no baseline left: the patient is dropped, not half-kept
    assert _pid(manifest, 0) not in set(result.samples["patient_id"])
    assert result.n_patients == 5


def test_mixed_series_in_one_folder_named(dicom_copy, tmp_path):
    root, manifest = dicom_copy
    folder = Path(manifest["series_folder"].iloc[3])  # a follow-up
    ds = pydicom.dcmread(folder / "IMG0005.dcm")
    ds.Rows = ds.Columns = 16  # another acquisition filed under the same series UID
    ds.PixelData = np.zeros((16, 16), np.uint16).tobytes()
    ds.ImagePositionPatient = [0.0, 0.0, 500.0]
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4.5.6.7"
    ds.save_as(folder / "SCOUT01.dcm")
    result = _ingest(root, tmp_path / "out")
    text = _check(result, manifest, 3, "mixed series")
    assert "SCOUT01.dcm" in text and "Rows x Columns" in text
    # The patient keeps its baseline: only the broken series is skipped.
    assert _pid(manifest, 3) in set(result.samples["patient_id"])


@pytest.mark.parametrize("keep", [300, None], ids=["truncated-header", "truncated-pixels"])
def test_corrupt_file_named(dicom_copy, tmp_path, keep):
    root, manifest = dicom_copy
    folder = Path(manifest["series_folder"].iloc[5])
    path = folder / "IMG0001.dcm"  # an end slice: losing it leaves no gap to detect
    data = path.read_bytes()
    path.write_bytes(data[: keep or len(data) - 500])
    result = _ingest(root, tmp_path / "out")
    text = _check(result, manifest, 5, "corrupt file")
    assert "IMG0001.dcm" in text
    assert result.n_patients == 6  # the patient keeps its baseline
    assert len(result.samples) == 11


def test_two_series_in_one_folder_are_separated(dicom_copy, tmp_path):
    """Grouping is by UID, not by folder: a follow-up filed into the baseline folder is fine."""
    root, manifest = dicom_copy
    base, follow = (Path(f) for f in manifest["series_folder"].iloc[0:2])
    for path in follow.glob("*.dcm"):
        shutil.move(path, base / f"F{path.name}")
    result = _ingest(root, tmp_path / "out")
    assert result.failures.empty
    assert len(result.samples) == 12


def test_non_dicom_files_are_ignored(dicom_copy, tmp_path):
    root, _ = dicom_copy
    (root / "README.txt").write_text("exported by a PACS\n")
    (root / "notes.bin").write_bytes(b"\x00" * 500)
    result = _ingest(root, tmp_path / "out")
    assert result.failures.empty and len(result.samples) == 12


def test_cli_exit_codes(dicom_copy, tmp_path, monkeypatch, capsys):
    root, manifest = dicom_copy
    (Path(manifest["series_folder"].iloc[0]) / "IMG0010.dcm").unlink()
    out = tmp_path / "out"
    monkeypatch.delenv("DELTARAD_PSEUDONYM_KEY", raising=False)
    assert main(["ingest-dicom", str(root), "--out", str(out)]) == 2
    assert "no pseudonymisation key" in capsys.readouterr().err
    monkeypatch.setenv("DELTARAD_PSEUDONYM_KEY", KEY)
    assert main(["ingest-dicom", str(root), "--out", str(out), "--roi", "gtv"]) == 0
    captured = capsys.readouterr()
    assert "5 patient(s), 10 scan(s)" in captured.out
    assert "skipped: patient " + _pid(manifest, 0) in captured.err
    failures = (out / "failures.tsv").read_text().splitlines()
    assert failures[0] == "patient_id\tstage\terror" and len(failures) == 3
    assert main(["ingest-dicom", str(root), "--out", str(out), "--roi", "gtv", "--strict"]) == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["ingest-dicom", str(empty), "--out", str(tmp_path / "o2")]) == 1
    assert "nothing could be ingested" in capsys.readouterr().err


def _rtstruct(manifest, index: int) -> Path:
    return Path(manifest["series_folder"].iloc[index]).parent / "RS.dcm"


def test_mask_problems_keep_the_scan(dicom_copy, tmp_path):
    root, manifest = dicom_copy
    # Scan 0: every contour moved half a slice: drawn on another reconstruction.
    ds = pydicom.dcmread(_rtstruct(manifest, 0))
    for roi in ds.ROIContourSequence:
        for contour in roi.ContourSequence:
            points = np.asarray(contour.ContourData, float).reshape(-1, 3)
            points[:, 2] += 2.0  # slices are 4 mm apart in centre C1
            contour.ContourData = [f"{v:.4f}" for v in points.ravel()]
    ds.save_as(_rtstruct(manifest, 0))
    # Scan 2: the structure set is corrupt.
    path = _rtstruct(manifest, 2)
    path.write_bytes(path.read_bytes()[:-300])
    result = _ingest(root, tmp_path / "out", mask_source="rtstruct")
    errors = result.failures.groupby("patient_id")["error"].agg(" | ".join)
    assert "between slices" in errors[_pid(manifest, 0)]
    assert "RS.dcm" in errors[_pid(manifest, 0)]
    assert "kept without a mask" in errors[_pid(manifest, 2)]
    assert len(result.samples) == 12 and result.samples["mask"].isna().sum() == 2


def test_roi_regex_must_match_one(dicom_export, tmp_path):
    root, _ = dicom_export
    result = ingest_dicom(
        root, tmp_path / "out", KEY.encode(), IngestOptions(roi_regex=".", mask_source="rtstruct")
    )
    assert len(result.failures) == 12
    assert all("2 ROIs match" in e and "GTV_primary" in e for e in result.failures["error"])


def test_corrupt_file_in_unknown_folder_withholds_the_folder(dicom_copy, tmp_path):
    root, _ = dicom_copy
    folder = root / "MRN0999999_DOEMANN"  # no readable header here: nothing to scrub it with
    folder.mkdir()
    (folder / "IMG0001.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10")
    result = _ingest(root, tmp_path / "out")
    (row,) = result.failures.to_dict("records")
    assert row["patient_id"] == "unknown" and row["stage"] == "discover"
    assert "corrupt file IMG0001.dcm (folder withheld)" in row["error"]
    assert "DOEMANN" not in (tmp_path / "out/logs/ingest_dicom.log").read_text()
    assert len(result.samples) == 12
