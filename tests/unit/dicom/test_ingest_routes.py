"""Ingest choices not covered elsewhere: objects that are not images are skipped, the ROI regex
from a config file, the key from a key file, and `--mask-source auto` preferring DICOM-SEG."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from deltarad import io
from deltarad.cli import main
from deltarad.dicom.ingest import IngestOptions, ingest_dicom
from deltarad.dicom.pseudonym import pseudonym
from tests.unit.dicom.conftest import KEY

# Objects a PACS export carries besides images and masks (SOP class, modality).
OTHER_OBJECTS = {
    "SR.dcm": ("1.2.840.10008.5.1.4.1.1.88.11", "SR"),  # basic text structured report
    "PR.dcm": ("1.2.840.10008.5.1.4.1.1.11.1", "PR"),  # grayscale presentation state
    "RP.dcm": ("1.2.840.10008.5.1.4.1.1.481.5", "RTPLAN"),  # radiotherapy plan
}


def _other_object(template: Dataset, sop_class: str, modality: str, path: Path, n: int) -> None:
    ds = Dataset()
    for keyword in ("PatientName", "PatientID", "StudyInstanceUID", "StudyDate"):
        setattr(ds, keyword, template.get(keyword))
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = f"1.2.826.0.1.3680043.8.498.777{n}"
    ds.SeriesInstanceUID = f"1.2.826.0.1.3680043.8.498.778{n}"
    ds.Modality = modality
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)


def test_objects_other_than_images_and_masks_are_ignored(dicom_copy, tmp_path):
    root, manifest = dicom_copy
    folder = Path(manifest["series_folder"].iloc[0])
    template = pydicom.dcmread(folder / "IMG0001.dcm", stop_before_pixels=True)
    for n, (name, (sop_class, modality)) in enumerate(OTHER_OBJECTS.items()):
        _other_object(template, sop_class, modality, folder.parent / name, n)
    result = ingest_dicom(root, tmp_path / "out", KEY.encode(), IngestOptions(roi_regex="gtv"))
    assert result.failures.empty
    assert len(result.samples) == 12 and result.samples["mask"].notna().all()
    assert any("3 files ignored" in line for line in result.log), result.log


def test_roi_from_config_and_key_from_file(dicom_export, tmp_path, monkeypatch, capsys):
    root, manifest = dicom_export
    monkeypatch.delenv("DELTARAD_PSEUDONYM_KEY", raising=False)
    key_file = tmp_path / "site.key"
    key_file.write_text(KEY + "\n")
    config = tmp_path / "study.yaml"
    config.write_text("ingest: {roi_regex: '^gtv'}\n")
    out = tmp_path / "out"
    args = ["ingest-dicom", str(root), "--out", str(out), "--key-file", str(key_file)]
    assert main([*args, "--config", str(config)]) == 0
    samples = io.read_tsv(out / "samples.tsv")
    assert samples["mask"].notna().all()
    expected = {pseudonym(m, KEY.encode()) for m in manifest["dicom_patient_id"]}
    assert set(samples["patient_id"]) == expected
    # Without --roi or a config: images only.
    assert main([*args[:3], str(tmp_path / "images_only"), *args[4:]]) == 0
    assert io.read_tsv(tmp_path / "images_only/samples.tsv")["mask"].isna().all()
    capsys.readouterr()


def test_auto_mask_source_prefers_seg(dicom_copy, tmp_path):
    """A damaged structure set does not matter while a DICOM-SEG of the same scan exists."""
    root, manifest = dicom_copy
    rtstruct = Path(manifest["series_folder"].iloc[0]).parent / "RS.dcm"
    rtstruct.write_bytes(rtstruct.read_bytes()[:-300])
    result = ingest_dicom(root, tmp_path / "out", KEY.encode(), IngestOptions(roi_regex="gtv"))
    # The structure set is not read at all (its damage lies past the header discovery reads).
    assert result.failures.empty
    assert result.samples["mask"].notna().all() and len(result.samples) == 12
    sidecars = sorted((tmp_path / "out/images").rglob("*.json"))
    assert len(sidecars) == 12
    assert {json.loads(p.read_text())["mask_source"] for p in sidecars} == {"seg"}


def test_identifying_values_in_the_clinical_table_are_redacted(dicom_export, tmp_path):
    """A site's clinical table may carry names or dates next to the covariates: they are
    redacted (and said so in the log); numbers are left alone unless a whole value is one."""
    root, manifest = dicom_export
    person = manifest["phi"].iloc[0].split("|")  # MRN, name, family, given, born, born-iso, ...
    rows = []
    for i, mrn in enumerate(manifest["dicom_patient_id"].unique()):
        note = f"seen by {person[7].replace('^', ' ')} at {person[6]}" if i == 0 else "none"
        rows.append(
            {"patient_id": mrn, "response": "1", "time": "12.0304", "event": "0",
             "born": person[5] if i == 0 else "NA", "dob": person[4] if i == 0 else "1",
             "note": note}
        )  # fmt: skip
    clinical = tmp_path / "clinical.tsv"
    io.write_table(pd.DataFrame(rows), clinical)
    options = IngestOptions(roi_regex="gtv", clinical=clinical)
    result = ingest_dicom(root, tmp_path / "out", KEY.encode(), options)
    text = (tmp_path / "out/clinical.tsv").read_text()
    for value in (person[4], person[5], person[6], "DRVANDENBERG00", "HENK"):
        assert value.lower() not in text.lower(), value
    out = io.read_tsv(tmp_path / "out/clinical.tsv")
    assert (out["time"] == "12.0304").all()  # digits inside a number are not touched
    assert (out["note"] == "none").sum() == 5 and out["note"].str.contains("redacted").sum() == 1
    assert sum("were redacted" in line for line in result.log) == 3  # born, dob, note
