"""Sample-sheet validation: each class of bad input is rejected, naming patient and column."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from deltarad import io
from deltarad.cohort import (
    CohortError,
    ValidationSettings,
    _read_validated_samples,
    planned_scans,
    read_validated_samples,
    timepoints_by_patient,
    validate_cohort,
    validated_masks,
    validated_scan_rows,
)

SETTINGS = ValidationSettings(centers=("C1", "C2"))


def _sheets(root: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    return io.read_tsv(root / "samples.tsv"), io.read_tsv(root / "clinical.tsv")


def _write(root: Path, samples: pd.DataFrame | None = None, clinical=None) -> None:
    if samples is not None:
        io.write_table(samples, root / "samples.tsv")
    if clinical is not None:
        io.write_table(clinical, root / "clinical.tsv")


def _problems(root: Path, settings: ValidationSettings = SETTINGS) -> list[str]:
    with pytest.raises(CohortError) as info:
        validate_cohort(root / "samples.tsv", root / "clinical.tsv", settings)
    return [str(p) for p in info.value.problems]


def _one(problems: list[str], *needles: str) -> str:
    hits = [p for p in problems if all(n in p for n in needles)]
    assert len(hits) == 1, (needles, problems)
    return hits[0]


def test_valid_cohort_passes_and_resolves_paths(tiny_cohort):
    samples, clinical = validate_cohort(
        tiny_cohort / "samples.tsv", tiny_cohort / "clinical.tsv", SETTINGS
    )
    assert len(samples) == 12 and len(clinical) == 6
    assert all(Path(p).is_file() for p in samples["image"])
    assert list(samples.groupby("patient_id")["timepoint"].first().unique()) == ["baseline"]


def test_missing_file_geometry_mismatch_and_duplicate_reported_together(tiny_cohort):
    samples, _ = _sheets(tiny_cohort)
    samples.loc[0, "image"] = "images/C1-001/nope.nii.gz"  # missing file
    mask = io.read_image(tiny_cohort / samples.loc[2, "mask"])
    mask.SetSpacing((9.0, 9.0, 9.0))  # geometry mismatch on C1-002 baseline
    io.write_image(mask, tiny_cohort / samples.loc[2, "mask"])
    dup = samples.iloc[[5]].copy()  # C1-003 followup listed twice
    _write(tiny_cohort, pd.concat([samples, dup], ignore_index=True))
    problems = _problems(tiny_cohort)
    assert len(problems) == 3, problems
    _one(problems, "line 2", "patient C1-001", "column 'image'", "file not found", "nope.nii.gz")
    geo = _one(problems, "line 4", "patient C1-002", "column 'mask'", "spacing")
    assert "image" in geo and "(9, 9, 9)" in geo
    _one(problems, "line 14", "patient C1-003", "column 'channel'", "duplicate scan", "line 7")


@pytest.mark.parametrize(
    ("column", "value", "needle"),
    [
        ("patient_id", "Jane Doe", "invalid value 'Jane Doe'"),
        ("modality", "XR", "expected one of CT, MR, PET"),
        ("days", "-3", "invalid value '-3'"),
        ("center", "C9", "unknown centre 'C9'"),
    ],
)
def test_bad_sample_values(tiny_cohort, column, value, needle):
    samples, _ = _sheets(tiny_cohort)
    samples.loc[1, column] = value
    _write(tiny_cohort, samples)
    problems = _problems(tiny_cohort)
    hit = _one(problems, "samples.tsv line 3", f"column '{column}'", needle)
    if column != "patient_id":
        assert "patient C1-001" in hit


def test_missing_baseline_and_nonzero_baseline_days(tiny_cohort):
    samples, _ = _sheets(tiny_cohort)
    samples = samples.drop(index=0)  # C1-001 baseline gone
    samples.loc[2, "days"] = "5"  # C1-002 baseline with days 5
    _write(tiny_cohort, samples)
    problems = _problems(tiny_cohort)
    _one(problems, "patient C1-001", "column 'timepoint'", "no baseline scan")
    _one(problems, "patient C1-002", "column 'days'", "days 0")


def test_patient_in_two_centres(tiny_cohort):
    samples, _ = _sheets(tiny_cohort)
    samples.loc[1, "center"] = "C2"
    _write(tiny_cohort, samples)
    _one(_problems(tiny_cohort), "patient C1-001", "centres 'C1' and 'C2'")


def test_missing_column(tiny_cohort):
    samples, _ = _sheets(tiny_cohort)
    _write(tiny_cohort, samples.drop(columns="modality"))
    _one(_problems(tiny_cohort), "samples.tsv", "column 'modality'", "missing column")


def _replace_image(root: Path, rel: str, array: np.ndarray, like: sitk.Image | None = None):
    image = sitk.GetImageFromArray(array)
    if like is not None:
        image.CopyInformation(like)
    io.write_image(image, root / rel)


def test_mask_contents(tiny_cohort):
    samples, _ = _sheets(tiny_cohort)
    rels = samples["mask"].tolist()
    ref = io.read_image(tiny_cohort / rels[0])
    arr = sitk.GetArrayFromImage(ref)
    _replace_image(tiny_cohort, rels[0], np.zeros_like(arr), ref)  # empty
    labelled = arr.copy()
    labelled[0, 0, 0] = 7
    _replace_image(tiny_cohort, rels[3], labelled, io.read_image(tiny_cohort / rels[3]))
    tiny = np.zeros_like(arr)
    tiny[5, 5, 5:8] = 1
    _replace_image(tiny_cohort, rels[2], tiny, io.read_image(tiny_cohort / rels[2]))
    problems = _problems(tiny_cohort)
    empty = _one(problems, "line 2", "patient C1-001", "timepoint baseline", "column 'mask'")
    assert "baseline mask has no voxel with the tumour label 1: the baseline must show" in empty
    _one(problems, "line 5", "patient C1-002", "column 'mask'", "unexpected label(s) [7]")
    _one(problems, "line 4", "patient C1-002", "column 'mask'", "only 3 tumour voxel(s)")
    ok = ValidationSettings(centers=("C1", "C2"), extra_mask_labels=(7,), min_mask_voxels=3)
    assert len(_problems(tiny_cohort, ok)) == 1  # only the empty mask remains


def test_empty_followup_mask_is_a_complete_response(tiny_cohort):
    """An empty mask at a later timepoint is valid: the tumour vanished. C2-003's follow-up in
    the tiny cohort is one; another is made here from C1-002's."""
    samples, _ = _sheets(tiny_cohort)
    assert not sitk.GetArrayFromImage(io.read_image(tiny_cohort / samples.loc[11, "mask"])).any()
    ref = io.read_image(tiny_cohort / samples.loc[3, "mask"])
    _replace_image(
        tiny_cohort, samples.loc[3, "mask"], np.zeros_like(sitk.GetArrayFromImage(ref)), ref
    )
    table, _ = validate_cohort(tiny_cohort / "samples.tsv", tiny_cohort / "clinical.tsv", SETTINGS)
    assert len(table) == 12


def test_missing_masks_need_a_way_to_predict_them(tiny_cohort):
    """`given` needs a drawn mask on every scan; otherwise some training scan needs one (or a
    pretrained model), else nothing could segment the scans without."""
    samples, _ = _sheets(tiny_cohort)
    strict = ValidationSettings(centers=("C1", "C2"), masks="given")
    problems = _problems(tiny_cohort, strict)
    assert [p.split(":")[0] for p in problems] == [
        f"samples.tsv line {n}, patient {pid}, timepoint followup, channel CT, column 'mask'"
        for n, pid in ((3, "C1-001"), (9, "C2-001"), (11, "C2-002"))
    ]
    assert all("no mask, and segmentation.masks is 'given'" in p for p in problems)
    samples["mask"] = pd.NA
    _write(tiny_cohort, samples)
    problems = _problems(tiny_cohort)
    assert problems == [
        "samples.tsv, column 'mask': no scan of the training centres has a mask and no "
        "pretrained model is configured (segmentation.nnunet.pretrained): there is nothing to "
        "train a segmentation network on and nothing to predict masks with; add masks to some "
        "training scans or give a pretrained model"
    ]
    pretrained = ValidationSettings(centers=("C1", "C2"), pretrained_masks=True)
    validate_cohort(tiny_cohort / "samples.tsv", tiny_cohort / "clinical.tsv", pretrained)


def test_image_problems(tiny_cohort):
    samples, _ = _sheets(tiny_cohort)
    rels = samples["image"].tolist()
    (tiny_cohort / rels[0]).write_bytes(b"this is not a NIfTI file")  # corrupt
    _replace_image(tiny_cohort, rels[1], np.zeros((20, 20), np.int16))  # 2-D
    ref = io.read_image(tiny_cohort / rels[2])
    arr = sitk.GetArrayFromImage(ref).astype(np.float32)
    arr[1, 1, 1] = np.nan
    _replace_image(tiny_cohort, rels[2], arr, ref)
    problems = _problems(tiny_cohort)
    _one(problems, "line 2", "patient C1-001", "column 'image'", "not a readable image")
    _one(problems, "line 3", "patient C1-001", "column 'image'", "must be 3-D")
    _one(problems, "line 4", "patient C1-002", "column 'image'", "1 NaN or infinite")


def test_nonfinite_voxels_found_in_nifti_and_mha(tmp_path):
    """ITK's NIfTI reader turns NaN into 0: the check reads what is in the file."""
    arr = np.zeros((4, 4, 4), np.float32)
    arr[1, 1, 1] = np.nan
    arr[2, 2, 2] = np.inf
    for name in ("a.nii.gz", "a.mha"):
        io.write_image(sitk.GetImageFromArray(arr), tmp_path / name)
        assert io.count_nonfinite(tmp_path / name) == 2, name


@pytest.mark.parametrize("field", ["origin", "direction", "size"])
def test_geometry_fields(tiny_cohort, field):
    samples, _ = _sheets(tiny_cohort)
    rel = samples.loc[0, "mask"]
    mask = io.read_image(tiny_cohort / rel)
    if field == "origin":
        mask.SetOrigin(tuple(o + 0.5 for o in mask.GetOrigin()))
    elif field == "direction":
        mask.SetDirection((0, 1, 0, 1, 0, 0, 0, 0, 1))
    else:
        mask = mask[:-1, :, :]
    io.write_image(mask, tiny_cohort / rel)
    hit = _one(_problems(tiny_cohort), "patient C1-001", "column 'mask'", "grid differs")
    assert f"differs from the image in {field}" in hit


def test_geometry_within_tolerance_passes(tiny_cohort):
    samples, _ = _sheets(tiny_cohort)
    rel = samples.loc[0, "mask"]
    mask = io.read_image(tiny_cohort / rel)
    mask.SetOrigin(tuple(o + 1e-5 for o in mask.GetOrigin()))
    io.write_image(mask, tiny_cohort / rel)
    validate_cohort(tiny_cohort / "samples.tsv", tiny_cohort / "clinical.tsv", SETTINGS)


@pytest.mark.parametrize(
    ("column", "value", "needle"),
    [
        ("time", "0", "time must be > 0"),
        ("time", "-2", "invalid value '-2'"),
        ("event", "2", "expected one of 0, 1"),
        ("response", "yes", "expected one of 0, 1, NA"),
    ],
)
def test_bad_clinical_values(tiny_cohort, column, value, needle):
    _, clinical = _sheets(tiny_cohort)
    clinical.loc[1, column] = value
    _write(tiny_cohort, clinical=clinical)
    _one(
        _problems(tiny_cohort),
        "clinical.tsv line 3",
        "patient C1-002",
        f"column '{column}'",
        needle,
    )


def test_response_may_be_missing(tiny_cohort):
    _, clinical = _sheets(tiny_cohort)
    clinical.loc[1, "response"] = None
    _write(tiny_cohort, clinical=clinical)
    _, out = validate_cohort(tiny_cohort / "samples.tsv", tiny_cohort / "clinical.tsv", SETTINGS)
    assert out["response"].isna().sum() == 1


def test_clinical_and_samples_must_cover_the_same_patients(tiny_cohort):
    samples, clinical = _sheets(tiny_cohort)
    extra = clinical.iloc[[0]].assign(patient_id="GHOST-1")
    clinical = pd.concat([clinical.iloc[1:], extra, clinical.iloc[[2]]], ignore_index=True)
    _write(tiny_cohort, clinical=clinical)
    problems = _problems(tiny_cohort)
    _one(problems, "patient C1-001", "has scans but no row in the clinical sheet")
    _one(problems, "patient GHOST-1", "clinical row without any scan")
    _one(problems, "patient C1-003", "duplicate patient")


def test_missing_sheet(tmp_path):
    problems = _problems(tmp_path)
    assert any("sheet not found" in p and "samples.tsv" in p for p in problems)
    assert any("sheet not found" in p and "clinical.tsv" in p for p in problems)


def test_absolute_and_relative_paths(tiny_cohort, tmp_path, monkeypatch):
    samples, _ = _sheets(tiny_cohort)
    samples["image"] = [str(tiny_cohort / p) for p in samples["image"]]
    _write(tiny_cohort, samples)
    monkeypatch.chdir(tmp_path)
    out, _ = validate_cohort(tiny_cohort / "samples.tsv", tiny_cohort / "clinical.tsv", SETTINGS)
    assert out.loc[0, "image"] == "cohort/images/C1-001/baseline.nii.gz"
    assert out.loc[0, "mask"] == "cohort/masks/C1-001/baseline.nii.gz"


# --- what the workflow reads while building the DAG ---


def test_planned_scans_of_the_synthetic_cohort(tiny_config):
    planned = planned_scans(tiny_config)
    assert list(planned.columns) == ["patient_id", "timepoint"]
    assert planned.iloc[:2].values.tolist() == [["C1-001", "baseline"], ["C1-001", "followup"]]
    assert len(planned) == 2 * 3 * len(tiny_config["synthetic"]["centers"])
    by_patient = timepoints_by_patient(planned)
    assert list(by_patient) == sorted(planned["patient_id"].unique())
    assert by_patient["C2-003"] == ["baseline", "followup"]


def test_validated_samples_read_once_per_file_version(tmp_path):
    path = tmp_path / "samples.validated.tsv"
    path.write_text("patient_id\ttimepoint\tmodality\tmask\tchannel\nP1\tbaseline\tCT\tNA\tCT\n")
    first = read_validated_samples(path)
    pd.testing.assert_frame_equal(first, pd.read_csv(path, sep="\t", dtype=str))
    assert first["mask"].isna().all()
    first.loc[0, "patient_id"] = "changed"  # each caller gets its own copy
    hits = _read_validated_samples.cache_info().hits
    assert read_validated_samples(path).loc[0, "patient_id"] == "P1"
    assert _read_validated_samples.cache_info().hits == hits + 1  # not parsed again
    row = validated_scan_rows(path)[("P1", "baseline")]
    assert row["modality"] == "CT" and not isinstance(row["mask"], str)
    with pytest.raises(TypeError):
        row["modality"] = "MR"  # type: ignore[index]
    # Two channels per timepoint: the mask may be drawn on either; the first row is the
    # reference channel's.
    path.write_text(
        "patient_id\ttimepoint\tmodality\tmask\tchannel\n"
        "P2\tbaseline\tMR\tm.nii.gz\tT2\nP2\tbaseline\tMR\tNA\tADC\n"
        "P2\tweek6\tMR\tNA\tT2\nP2\tweek6\tMR\tw.nii.gz\tADC\n"
    )
    assert read_validated_samples(path)["patient_id"].tolist() == ["P2"] * 4
    rows = validated_scan_rows(path)
    assert set(rows) == {
        ("P2", "baseline"),
        ("P2", "week6"),
        *(("P2", tp, ch) for tp in ("baseline", "week6") for ch in ("T2", "ADC")),
    }
    assert rows[("P2", "baseline")]["channel"] == "T2"
    assert rows[("P2", "week6", "ADC")]["mask"] == "w.nii.gz"
    assert dict(validated_masks(path)) == {
        ("P2", "baseline"): "m.nii.gz",
        ("P2", "week6"): "w.nii.gz",
    }


def test_timepoint_names_of_changes_are_reserved(tiny_cohort):
    samples, _ = _sheets(tiny_cohort)
    samples.loc[1, "timepoint"] = "delta-week6"
    _write(tiny_cohort, samples)
    problem = _one(_problems(tiny_cohort), "line 3", "patient C1-001", "column 'timepoint'")
    assert "timepoint name 'delta-week6' is reserved" in problem


def test_second_channel_needs_the_study_to_list_its_channels(tiny_cohort):
    """A second scan at a timepoint is never silently dropped: without cohort.channels it is an
    error that says how to describe the study."""
    samples, _ = _sheets(tiny_cohort)
    pet = samples.iloc[[0]].assign(modality="PET", channel="PET", mask=None)
    _write(tiny_cohort, pd.concat([samples, pet], ignore_index=True))
    problem = _one(_problems(tiny_cohort), "line 14", "patient C1-001", "column 'channel'")
    assert "line 2 has another channel" in problem and "cohort.channels" in problem


def _two_channels(root: Path) -> pd.DataFrame:
    """The tiny cohort with a PET scan beside every CT scan (the CT image stands in for it)."""
    samples, _ = _sheets(root)
    samples["channel"] = "CT"
    pet = samples.assign(modality="PET", channel="PET", mask=None)
    return pd.concat([samples, pet], ignore_index=True)


TWO_CHANNELS = ValidationSettings(centers=("C1", "C2"), channels=("CT", "PET"))


def test_two_channel_study_validates_reference_first(tiny_cohort):
    _write(tiny_cohort, _two_channels(tiny_cohort))
    samples, _ = validate_cohort(
        tiny_cohort / "samples.tsv", tiny_cohort / "clinical.tsv", TWO_CHANNELS
    )
    assert len(samples) == 24
    firsts = samples.groupby(["patient_id", "timepoint"], sort=False)["channel"].first()
    assert set(firsts) == {"CT"}
    assert samples.loc[samples["channel"] == "PET", "mask"].isna().all()


def test_channel_without_a_channel_column_is_the_modality(tiny_cohort):
    samples, _ = validate_cohort(
        tiny_cohort / "samples.tsv", tiny_cohort / "clinical.tsv", SETTINGS
    )
    assert (samples["channel"] == samples["modality"]).all()


@pytest.mark.parametrize(
    ("edit", "needles"),
    [
        # A channel the config does not list.
        (
            lambda s: s.assign(channel=s["channel"].where(s.index != 13, "ADC")),
            ("line 15", "channel ADC (PET)", "column 'channel'", "not one of the study's channels"),
        ),
        # The reference channel missing at baseline.
        (
            lambda s: s.drop(index=0),
            ("patient C1-001", "timepoint baseline", "channel CT", "registration reference"),
        ),
        # A later scan's channel without a baseline of that channel.
        (
            lambda s: s.drop(index=12),
            ("patient C1-001", "timepoint followup", "channel PET", "has no baseline scan"),
        ),
        # Two scans of the same patient, timepoint and channel.
        (
            lambda s: pd.concat([s, s.iloc[[12]]], ignore_index=True),
            ("line 26", "patient C1-001", "channel PET", "duplicate scan", "line 14"),
        ),
        # Two masks at one timepoint.
        (
            lambda s: s.assign(mask=s["mask"].where(s.index != 12, s.loc[0, "mask"])),
            ("line 14", "channel PET", "column 'mask'", "a second mask at this timepoint"),
        ),
    ],
    ids=[
        "unlisted-channel",
        "no-reference-at-baseline",
        "later-without-baseline",
        "duplicate",
        "two-masks",
    ],
)
def test_multichannel_bad_input(tiny_cohort, edit, needles):
    _write(tiny_cohort, edit(_two_channels(tiny_cohort)))
    _one(_problems(tiny_cohort, TWO_CHANNELS), *needles)
