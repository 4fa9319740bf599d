"""Channels at ingest: named after the modality, or from the series description where a
timepoint has several series of one modality (T2 + ADC); collisions refused; the export round
trip; identifying text never reaches a channel name."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset

from deltarad import io
from deltarad.dicom.channels import derive_channel, header_texts
from deltarad.dicom.export import FakePerson, export_cohort, fake_person, write_image_series
from deltarad.dicom.ingest import IngestOptions, ingest_dicom
from deltarad.dicom.pseudonym import REDACTED, Scrubber, pseudonym
from deltarad.runlog import UserError
from tests.unit.dicom.conftest import KEY


@pytest.mark.parametrize(
    ("texts", "modality", "channel"),
    [
        (["T2 TSE AX"], "MR", "T2"),
        (["t2_tse_tra_320"], "MR", "T2"),
        (["ep2d_diff_b50_800_tra_ADC"], "MR", "ADC"),
        (["Apparent Diffusion Coefficient (mm2/s)"], "MR", "ADC"),
        (["ep2d_diff_b800_TRACEW"], "MR", "DWI"),
        (["DWI b=1000"], "MR", "DWI"),
        (["T1 VIBE fs post Gd"], "MR", "T1C"),
        (["T1+C AX"], "MR", "T1C"),
        (["T1 pre contrast"], "MR", "T1"),
        (["t1_fl2d_tra"], "MR", "T1"),
        (["T2 FLAIR"], "MR", "FLAIR"),
        (["T2* GRE"], "MR", "T2STAR"),
        (["Venous phase 2 mm"], "CT", "VENOUSPHASEMM"),
        (["", "", "pelvis_t2_tse"], "MR", "T2"),  # the protocol name where nothing else
        (["Dixon fat", "*tse2d1_15"], "MR", "DIXONFAT"),
        (["Series 20210304 1234567"], "MR", "SERIES"),  # numbers and dates dropped
        (["A very long description of a series"], "MR", "AVERYLONGDESCRIP"),
        (["", "", ""], "MR", "MR"),
        (["T2 AC"], "PET", "PET"),
    ],
)
def test_derived_channel_names(texts, modality, channel):
    assert derive_channel(texts, modality) == channel


def test_identifying_text_is_cut_from_a_description():
    """A description with a name, a date and the hospital typed in: only the technical words
    are left; a message is still scrubbed of the whole description."""
    ds = Dataset()
    ds.PatientName = "MUSTERMANN^ERIKA"
    ds.PatientID = "MRN0400001"
    ds.StudyDate = "20210304"
    ds.InstitutionName = "Sint Fictus"
    ds.SeriesDescription = "Pelvis sag Erika Mustermann 2021-03-04 MRN0400001 SINT FICTUS"
    scrubber = Scrubber()
    scrubber.collect(ds)
    channel = derive_channel(map(scrubber.cutter(), header_texts(ds)), "MR")
    assert channel == "PELVISSAG"
    assert scrubber.scrub(f"series {ds.SeriesDescription}") == f"series {REDACTED}"
    assert Scrubber().cutter()("T2 ax") == "T2 ax"


IMAGE = sitk.GetImageFromArray(np.arange(4 * 6 * 7, dtype=np.int16).reshape(4, 6, 7))


def _series(root: Path, person: FakePerson, date: str, name: str, description: str) -> str:
    """Write one MR series of `person` (folder `name` of the visit); its series UID."""
    extra = Dataset()
    extra.SeriesDescription = description
    seed = f"{person.patient_id}/{date}/{name}"
    folder = root / f"{person.patient_id}_{person.name.split('^')[0]}" / date / name
    study_uid = f"1.2.826.0.1.3680043.8.498.{int(person.patient_id[-5:])}.{date}"
    slices = write_image_series(IMAGE, folder, person, date, study_uid, "MR", seed, extra)
    return str(slices[0].SeriesInstanceUID)


def _ingest(root: Path, out: Path, **kw):
    return ingest_dicom(root, out, KEY.encode(), IngestOptions(**kw))


def _channels(result, person: FakePerson) -> dict[str, list[str]]:
    mine = result.samples[
        result.samples["patient_id"] == pseudonym(person.patient_id, KEY.encode())
    ]
    return {tp: sorted(rows["channel"]) for tp, rows in mine.groupby("timepoint")}


def test_two_mr_series_at_a_timepoint_become_two_channels(tmp_path):
    root, a, b = tmp_path / "dicom", fake_person(0, "C1"), fake_person(1, "C1")
    _series(root, a, "20200101", "s1", "T2 TSE AX")
    _series(root, a, "20200101", "s2", "ep2d_diff_b50_800_ADC")
    _series(root, a, "20200101", "s3", f"Dixon fat {a.name.split('^')[0]} 20200101")
    _series(root, a, "20200301", "s1", "t2_tse_tra")
    _series(root, a, "20200301", "s2", "ADC map")
    for date in ("20200101", "20200401"):
        _series(root, b, date, "s1", "Ax T2 FRFSE")
    result = _ingest(root, tmp_path / "out")
    assert result.failures.empty, result.failures
    assert _channels(result, a) == {
        "baseline": ["ADC", "DIXONFAT", "T2"],
        "followup": ["ADC", "T2"],
    }
    # The same kind of series has the same name in every patient, also where it is alone.
    assert _channels(result, b) == {"baseline": ["T2"], "followup": ["T2"]}
    assert set(result.samples["modality"]) == {"MR"}
    pid = pseudonym(a.patient_id, KEY.encode())
    assert (tmp_path / f"out/images/{pid}/baseline_ADC.nii.gz").is_file()
    sidecar = json.loads((tmp_path / f"out/images/{pid}/followup_T2.json").read_text())
    assert sidecar["channel"] == "T2" and sidecar["modality"] == "MR"
    assert any("several MR series at one timepoint" in line for line in result.log)
    # A run with one series per timepoint and modality names its channels after the modality.
    single = _ingest(root / f"{b.patient_id}_{b.name.split('^')[0]}", tmp_path / "single")
    assert _channels(single, b) == {"baseline": ["MR"], "followup": ["MR"]}


def test_colliding_channels_are_refused_and_resolved_by_the_table(tmp_path):
    root, person = tmp_path / "dicom", fake_person(2, "C2")
    uids = {
        name: _series(root, person, "20200101", name, description)
        for name, description in (
            ("t2ax", "T2 TSE AX"),
            ("t2sag", "T2 TSE SAG"),
            ("adc", "ADC"),
        )
    }
    result = _ingest(root, tmp_path / "out")
    pid = pseudonym(person.patient_id, KEY.encode())
    (failure,) = result.failures.to_dict("records")
    assert failure["patient_id"] == pid and failure["stage"] == "channels"
    error = failure["error"]
    assert "2 series at baseline would all be channel T2" in error
    assert "t2ax" in error and "t2sag" in error and "series_uid" in error
    assert person.name.split("^")[0] not in error and "TSE" not in error  # no header text
    assert _channels(result, person) == {"baseline": ["ADC"]}
    # Resolved: a timepoint table names the series (a blank channel is derived as before).
    table = pd.DataFrame(
        {
            "patient_id": person.patient_id,
            "series_uid": list(uids.values()),
            "timepoint": "baseline",
            "channel": ["T2", "T2SAG", ""],
        }
    )
    io.write_table(table, tmp_path / "timepoints.tsv")
    result = _ingest(root, tmp_path / "out2", timepoints=tmp_path / "timepoints.tsv")
    assert result.failures.empty
    assert _channels(result, person) == {"baseline": ["ADC", "T2", "T2SAG"]}
    table["channel"] = ["T2", "T2 sag", ""]
    io.write_table(table, tmp_path / "timepoints.tsv")
    with pytest.raises(UserError, match=r"channel must be letters and digits only \(lines 3\)"):
        _ingest(root, tmp_path / "out3", timepoints=tmp_path / "timepoints.tsv")


def test_round_trip_keeps_channel_names(labelled_cohort_ro, tmp_path):
    """A T2 + ADC sheet exported as DICOM (one series per channel, the tumour drawn on T2) and
    ingested back: the same channels, images and masks."""
    samples = io.read_tsv(labelled_cohort_ro / "samples.tsv")
    samples = samples[samples["patient_id"].isin(sorted(set(samples["patient_id"]))[:2])]
    cohort = tmp_path / "cohort"
    rows = []
    for scan in samples.to_dict("records"):
        adc = f"adc/{scan['patient_id']}_{scan['timepoint']}.nii.gz"
        image = io.read_image(labelled_cohort_ro / scan["image"])
        inverted = sitk.GetImageFromArray(2000 - sitk.GetArrayFromImage(image))
        inverted.CopyInformation(image)
        io.write_image(inverted, cohort / adc)
        t2 = {**scan, "modality": "MR", "channel": "T2"}
        t2["image"], t2["mask"] = (str(labelled_cohort_ro / scan[k]) for k in ("image", "mask"))
        rows += [t2, {**t2, "image": adc, "mask": None, "channel": "ADC"}]
    io.write_table(pd.DataFrame(rows), cohort / "samples.tsv")
    manifest = export_cohort(cohort, tmp_path / "dicom")
    assert len(manifest) == 8 and manifest["series_folder"].str.endswith(("/T2", "/ADC")).all()
    result = _ingest(tmp_path / "dicom", tmp_path / "out", roi_regex="gtv")
    assert result.failures.empty, result.failures
    got = result.samples.set_index(["patient_id", "timepoint", "channel"])
    assert set(got["modality"]) == {"MR"} and len(got) == 8
    mrn = dict(zip(manifest["patient_id"], manifest["dicom_patient_id"], strict=False))
    for row in rows:
        pid = pseudonym(mrn[row["patient_id"]], KEY.encode())
        ingested = got.loc[(pid, row["timepoint"], row["channel"])]
        original = sitk.GetArrayFromImage(io.read_image(cohort / row["image"]))
        image = sitk.GetArrayFromImage(io.read_image(tmp_path / "out" / ingested["image"]))
        np.testing.assert_array_equal(image, original)
        assert pd.isna(ingested["mask"]) == (row["channel"] == "ADC")
