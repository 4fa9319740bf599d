"""Timepoints from a user's table, and the nnU-Net raw dataset route."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from deltarad import io
from deltarad.cli import main
from deltarad.cohort import ValidationSettings, validate_cohort
from deltarad.dicom.ingest import IngestOptions, ingest_dicom
from deltarad.dicom.nnunet import ingest_nnunet
from deltarad.dicom.pseudonym import pseudonym
from deltarad.runlog import UserError
from tests.unit.dicom.conftest import KEY


def test_timepoint_table_by_study_date(dicom_export, tmp_path):
    root, manifest = dicom_export
    first = manifest[manifest["dicom_patient_id"] == manifest["dicom_patient_id"].iloc[0]]
    table = pd.DataFrame(
        {
            "patient_id": first["dicom_patient_id"],
            "study_date": first["study_date"],
            "timepoint": ["baseline", "week8"],
        }
    )
    io.write_table(table, tmp_path / "timepoints.tsv")
    options = IngestOptions(timepoints=tmp_path / "timepoints.tsv")
    result = ingest_dicom(root, tmp_path / "out", KEY.encode(), options)
    pid = pseudonym(first["dicom_patient_id"].iloc[0], KEY.encode())
    mine = result.samples[result.samples["patient_id"] == pid]
    assert mine["timepoint"].tolist() == ["baseline", "week8"]
    assert mine["days"].tolist() == [0, int(first["days"].iloc[1])]
    assert mine["mask"].isna().all()  # no --roi: images only
    # Patients missing from the table fall back to date order.
    assert set(result.samples["timepoint"]) == {"baseline", "followup", "week8"}
    assert result.failures.empty


@pytest.fixture()
def nnunet_dataset(labelled_cohort_ro, tmp_path):
    """An nnU-Net raw dataset of the tiny cohort with two labels (organ 1, tumour 2)."""
    dataset = tmp_path / "Dataset501_Tiny"
    (dataset / "imagesTr").mkdir(parents=True)
    (dataset / "labelsTr").mkdir()
    samples = io.read_tsv(labelled_cohort_ro / "samples.tsv")
    cases = []
    for i, row in enumerate(samples.to_dict("records")):
        case = f"tiny_{i:03d}"
        shutil.copy(labelled_cohort_ro / row["image"], dataset / "imagesTr" / f"{case}_0000.nii.gz")
        mask = io.read_image(labelled_cohort_ro / row["mask"])
        array = sitk.GetArrayFromImage(mask) * 2
        array[0, :3, :3] = 1  # an organ label that must not end up in the tumour mask
        labels = sitk.GetImageFromArray(array.astype(np.uint8))
        labels.CopyInformation(mask)
        io.write_image(labels, dataset / "labelsTr" / f"{case}.nii.gz")
        cases.append({"case": case, **{k: row[k] for k in ("patient_id", "timepoint", "days")}})
    meta = {
        "channel_names": {"0": "CT"},
        "labels": {"background": 0, "organ": 1, "tumour": 2},
        "numTraining": len(cases),
        "file_ending": ".nii.gz",
    }
    (dataset / "dataset.json").write_text(json.dumps(meta))
    io.write_table(pd.DataFrame(cases), tmp_path / "cases.tsv")
    return dataset, tmp_path / "cases.tsv"


def test_nnunet_import_gives_valid_sheets(nnunet_dataset, labelled_cohort_ro, tmp_path):
    dataset, cases = nnunet_dataset
    out = tmp_path / "out"
    samples, failures = ingest_nnunet(dataset, out, roi_regex="tumou?r", cases_table=cases)
    assert failures.empty and len(samples) == 12
    assert set(samples["modality"]) == set(samples["channel"]) == {"CT"}
    validated, _ = validate_cohort(
        out / "samples.tsv", labelled_cohort_ro / "clinical.tsv", ValidationSettings()
    )
    assert len(validated) == 12
    row = samples.iloc[0]
    truth = labelled_cohort_ro / f"masks/{row['patient_id']}/{row['timepoint']}.nii.gz"
    np.testing.assert_array_equal(
        sitk.GetArrayFromImage(io.read_image(out / row["mask"])),
        sitk.GetArrayFromImage(io.read_image(truth)),
    )


def test_nnunet_channels_of_one_modality_are_named(nnunet_dataset, tmp_path):
    """T2 and ADC channels of one dataset: each import is named after its nnU-Net channel, so
    that the two sheets can be joined; a case table may name the channel itself."""
    dataset, cases = nnunet_dataset
    meta = json.loads((dataset / "dataset.json").read_text())
    meta["channel_names"] = {"0": "T2", "1": "ADC"}
    (dataset / "dataset.json").write_text(json.dumps(meta))
    for image in (dataset / "imagesTr").glob("*_0000.nii.gz"):
        shutil.copy(image, image.with_name(image.name.replace("_0000", "_0001")))
    for index, channel in ((0, "T2"), (1, "ADC")):
        out = tmp_path / channel
        samples, failures = ingest_nnunet(dataset, out, "tumour", index, cases)
        assert failures.empty
        assert set(samples["modality"]) == {"MR"} and set(samples["channel"]) == {channel}
        assert samples["mask"].str.endswith(f"_{channel}.nii.gz").all()
    table = io.read_tsv(cases)
    table["channel"] = "DWI"
    io.write_table(table, tmp_path / "cases_dwi.tsv")
    samples, _ = ingest_nnunet(dataset, tmp_path / "dwi", "tumour", 1, tmp_path / "cases_dwi.tsv")
    assert set(samples["channel"]) == {"DWI"}


def test_nnunet_label_choice_and_missing_case(nnunet_dataset, tmp_path, capsys):
    dataset, _ = nnunet_dataset
    with pytest.raises(UserError, match="2 labels"):
        ingest_nnunet(dataset, tmp_path / "a")
    (dataset / "imagesTr" / "tiny_004_0000.nii.gz").unlink()
    code = main(["ingest-nnunet", str(dataset), "--out", str(tmp_path / "b"), "--roi", "tumour"])
    assert code == 0
    captured = capsys.readouterr()
    assert "tiny_004: image of channel 0 missing" in captured.err
    # Without a case table every case is its own patient.
    assert "11 patient(s), 11 scan(s)" in captured.out
    # The tumour label may also come from the config's ingest.roi_regex.
    config = tmp_path / "study.yaml"
    config.write_text("ingest: {roi_regex: tumour}\n")
    code = main(
        ["ingest-nnunet", str(dataset), "--out", str(tmp_path / "c"), "--config", str(config)]
    )
    assert code == 0
    assert "11 patient(s), 11 scan(s)" in capsys.readouterr().out
