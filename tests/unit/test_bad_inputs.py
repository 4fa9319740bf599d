"""The bad-input catalogue (docs/bad-input.md): kinds not already covered elsewhere.

Each test breaks one thing in a copy of the tiny cohort (or the config) and asserts the exact
message a user sees, naming the sheet line, patient, column and file (or the config key). Kinds
already tested in test_cohort.py, test_config.py, test_register.py, features/ and the workflow
tests are listed in docs/bad-input.md with their test, not repeated here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import yaml

from deltarad import io
from deltarad.cohort import CohortError, ValidationSettings, validate_cohort
from deltarad.config import ConfigError, check_results_dir, load_config, with_defaults
from tests.conftest import CONFIGS, REPO

SETTINGS = ValidationSettings(centers=("C1", "C2"))
SUFFIXES = ".nii.gz, .nii, .nrrd, .nhdr, .mha, .mhd"


@pytest.fixture()
def cohort(tiny_cohort, monkeypatch) -> Path:
    """The modifiable tiny cohort as the working directory, so messages show relative paths."""
    monkeypatch.chdir(tiny_cohort)
    return tiny_cohort


def _samples(root: Path) -> pd.DataFrame:
    return io.read_tsv(root / "samples.tsv")


def _problems(root: Path) -> list[str]:
    with pytest.raises(CohortError) as info:
        validate_cohort(root / "samples.tsv", root / "clinical.tsv", SETTINGS)
    problems = [str(p) for p in info.value.problems]
    # What the user sees: the count, then each problem on its own line.
    assert str(info.value).startswith(f"{len(problems)} problem(s) in the input cohort:\n  ")
    assert all(f"\n  {p}" in str(info.value) for p in problems)
    return problems


def _replace(root: Path, rel: str, array: np.ndarray, vector: bool = False) -> None:
    like = io.read_image(root / rel)
    image = sitk.GetImageFromArray(array, isVector=vector)
    image.SetSpacing(like.GetSpacing())
    image.SetOrigin(like.GetOrigin())
    image.SetDirection(like.GetDirection())
    io.write_image(image, root / rel)


def _array(root: Path, rel: str) -> np.ndarray:
    return sitk.GetArrayFromImage(io.read_image(root / rel))


# --- image and mask files -------------------------------------------------------------------


def test_wrong_file_type(cohort):
    samples = _samples(cohort)
    (cohort / "images/C1-001/baseline.txt").write_text("window 40/400, see report\n")
    samples.loc[0, "image"] = "images/C1-001/baseline.txt"
    io.write_table(samples, cohort / "samples.tsv")
    assert _problems(cohort) == [
        "samples.tsv line 2, patient C1-001, timepoint baseline, channel CT, "
        "column 'image': image has an unsupported file "
        f"type; expected one of {SUFFIXES} (images/C1-001/baseline.txt)"
    ]


def test_dicom_folder_instead_of_image(cohort):
    samples = _samples(cohort)
    (cohort / "dicom/C1-002/baseline").mkdir(parents=True)
    samples.loc[2, "image"] = "dicom/C1-002/baseline"
    io.write_table(samples, cohort / "samples.tsv")
    assert _problems(cohort) == [
        "samples.tsv line 4, patient C1-002, timepoint baseline, channel CT, "
        "column 'image': image is a folder, not an image "
        "file; convert a DICOM series with `deltarad ingest-dicom` first (dicom/C1-002/baseline)"
    ]


def test_missing_mask_file(cohort):
    samples = _samples(cohort)
    samples.loc[1, "mask"] = "masks/C1-001/followup_GTV.nii.gz"
    io.write_table(samples, cohort / "samples.tsv")
    assert _problems(cohort) == [
        "samples.tsv line 3, patient C1-001, timepoint followup, channel CT, "
        "column 'mask': file not found: "
        f"{cohort / 'masks/C1-001/followup_GTV.nii.gz'}"
    ]


def test_constant_image(cohort):
    rel = "images/C1-002/followup.nii.gz"
    _replace(cohort, rel, np.full_like(_array(cohort, rel), 100))
    assert _problems(cohort) == [
        "samples.tsv line 5, patient C1-002, timepoint followup, channel CT, "
        "column 'image': image is constant (every voxel is "
        f"100): nothing to measure or register ({rel})"
    ]


def test_infinite_voxels_in_mha(cohort):
    rel = "images/C2-001/baseline.nii.gz"
    arr = _array(cohort, rel).astype(np.float32)
    arr[3, 4, 5] = np.inf
    arr[3, 4, 6] = -np.inf
    mha = "images/C2-001/baseline.mha"
    like = io.read_image(cohort / rel)
    image = sitk.GetImageFromArray(arr)
    image.CopyInformation(like)
    io.write_image(image, cohort / mha)
    samples = _samples(cohort)
    samples.loc[6, "image"] = mha
    io.write_table(samples, cohort / "samples.tsv")
    assert _problems(cohort) == [
        "samples.tsv line 8, patient C2-001, timepoint baseline, channel CT, "
        "column 'image': image has 2 NaN or infinite "
        f"voxel(s) ({mha})"
    ]


def test_colour_image(cohort):
    rel = "images/C1-003/baseline.nii.gz"
    grey = _array(cohort, rel)
    _replace(cohort, rel, np.stack([grey, grey, grey], axis=-1).astype(np.uint8), vector=True)
    assert _problems(cohort) == [
        "samples.tsv line 6, patient C1-003, timepoint baseline, channel CT, "
        "column 'image': image has 3 components per voxel, "
        f"expected a scalar image ({rel})"
    ]


def test_mask_touching_the_border(cohort):
    rel = "masks/C1-002/followup.nii.gz"
    arr = _array(cohort, rel)
    arr[0, 10:13, 10:13] = 1  # the first slice (z = 0)
    arr[5:8, 5:8, -1] = 1  # the last column (x = 31: centre C1 has 32 columns of 3 mm)
    _replace(cohort, rel, arr)
    assert _problems(cohort) == [
        "samples.tsv line 5, patient C1-002, timepoint followup, channel CT, "
        "column 'mask': tumour (label 1) touches the image border at x = 31, z = 0: it is cut "
        "off by the field of view, so its shape, texture and ring features would be wrong; use a "
        f"scan covering the whole tumour or remove this row ({rel})"
    ]


def test_vector_mask(cohort):
    rel = "masks/C1-001/baseline.nii.gz"
    labels = _array(cohort, rel)
    _replace(cohort, rel, np.stack([labels, labels], axis=-1), vector=True)
    assert _problems(cohort) == [
        "samples.tsv line 2, patient C1-001, timepoint baseline, channel CT, "
        "column 'mask': mask has 2 components per voxel, "
        f"expected a label image ({rel})"
    ]


# --- sample and clinical sheets -------------------------------------------------------------


def test_missing_followup(cohort):
    samples = _samples(cohort)
    io.write_table(samples.drop(index=1), cohort / "samples.tsv")
    assert _problems(cohort) == [
        "samples.tsv, patient C1-001, column 'timepoint': patient has only a baseline scan: "
        "delta features need a follow-up (a later timepoint); add it or remove the patient "
        "from both sheets"
    ]


def test_followup_on_the_baseline_day(cohort):
    samples = _samples(cohort)
    samples.loc[3, "days"] = "0"
    io.write_table(samples, cohort / "samples.tsv")
    assert _problems(cohort) == [
        "samples.tsv line 5, patient C1-002, timepoint followup, channel CT, "
        "column 'days': follow-up scan must have days > 0 "
        "(after the baseline), found 0"
    ]


def test_sheet_without_rows(cohort):
    io.write_table(_samples(cohort).iloc[:0], cohort / "samples.tsv")
    # The clinical rows are not each reported as "without scans": one message says why.
    assert _problems(cohort) == ["samples.tsv: sheet has a header but no scan rows"]


def test_comma_separated_sheet(cohort):
    _samples(cohort).to_csv(cohort / "samples.tsv", index=False)
    assert _problems(cohort) == [
        "samples.tsv: not tab-separated (the header is split by commas); save it as TSV"
    ]


def test_spreadsheet_file_instead_of_tsv(cohort):
    (cohort / "clinical.tsv").write_bytes(b"PK\x03\x04\x14\x00\x06\x00\x08\x00\xff\xfe\x00")
    assert _problems(cohort) == [
        f"{cohort / 'clinical.tsv'}: not a readable TSV: 'utf-8' codec can't decode byte "
        "0xff in position 10: invalid start byte"
    ]


def test_non_numeric_survival_time(cohort):
    clinical = io.read_tsv(cohort / "clinical.tsv")
    clinical.loc[3, "time"] = "12 months"
    io.write_table(clinical, cohort / "clinical.tsv")
    assert _problems(cohort) == [
        "clinical.tsv line 5, patient C2-001, column 'time': invalid value '12 months' "
        "(Follow-up time (months in the synthetic cohort) until event or censoring; must be > 0)"
    ]


# --- inputs that must work ------------------------------------------------------------------


def test_paths_with_spaces_and_unicode_work(tiny_cohort_ro, tmp_path, monkeypatch):
    root = tmp_path / "études cohorte" / "centre ü 1"
    shutil.copytree(tiny_cohort_ro, root)
    samples = _samples(root)
    old = root / samples.loc[0, "image"]
    new = old.with_name("base line é.nii.gz")
    old.rename(new)
    samples.loc[0, "image"] = str(new.relative_to(root))
    io.write_table(samples, root / "samples.tsv")
    monkeypatch.chdir(tmp_path)
    out, clinical = validate_cohort(root / "samples.tsv", root / "clinical.tsv", SETTINGS)
    assert out.loc[0, "image"] == "études cohorte/centre ü 1/images/C1-001/base line é.nii.gz"
    assert io.read_image(out.loc[0, "image"]).GetSize() == (32, 32, 24)
    assert len(out) == 12 and len(clinical) == 6


def test_excel_style_sheet_with_bom_and_crlf_works(cohort):
    for name in ("samples.tsv", "clinical.tsv"):
        text = (cohort / name).read_text()
        (cohort / name).write_bytes(("\ufeff" + text).replace("\n", "\r\n").encode())
    samples, clinical = validate_cohort(cohort / "samples.tsv", cohort / "clinical.tsv", SETTINGS)
    assert len(samples) == 12 and len(clinical) == 6
    assert samples["mask"].str.endswith(".nii.gz").all()
    assert list(clinical.columns[:4]) == ["patient_id", "response", "time", "event"]


# --- configuration --------------------------------------------------------------------------


def _config_error(tmp_path: Path, data: dict) -> str:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as info:
        load_config(CONFIGS[0], path)
    return str(info.value)


def test_unknown_feature_preset(tmp_path):
    message = _config_error(tmp_path, {"features": {"params": "config/radiomics/lung.yaml"}})
    assert message == (
        "invalid configuration:\n  config key 'features.params': parameter file "
        "'config/radiomics/lung.yaml' not found (in the working directory or the DeltaRad "
        "folder); presets: config/radiomics/ct.yaml, config/radiomics/ibsi.yaml, "
        "config/radiomics/mr.yaml"
    )


def test_unknown_registration_stage(tmp_path):
    message = _config_error(tmp_path, {"registration": {"stages": ["rigid", "demons"]}})
    assert message == (
        "invalid configuration:\n  config key 'registration.stages.1': 'demons' is not one of "
        "['rigid', 'affine', 'bspline']"
    )


def test_wrong_config_type(tmp_path):
    message = _config_error(
        tmp_path,
        {
            "registration": {
                "rigid": {"shrink": [2, 1], "smoothing_mm": [1, 0], "iterations": "many"}
            }
        },
    )
    assert message == (
        "invalid configuration:\n  config key 'registration.rigid.iterations': 'many' is not "
        "of type 'integer'"
    )


def test_results_below_a_file(tmp_path):
    blocker = tmp_path / "results.tar"
    blocker.write_bytes(b"")
    config = with_defaults({"results": str(blocker / "run1")})
    assert check_results_dir(config) == [
        f"config key 'results': {blocker} is a file, not a folder, so results cannot go to "
        f"{blocker / 'run1'}"
    ]


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write to read-only folders")
def test_results_in_a_read_only_folder(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    config = with_defaults({"results": str(locked / "results")})
    assert check_results_dir(config) == [
        f"config key 'results': folder {locked} is not writable, so results cannot go to "
        f"{locked / 'results'}; choose a folder you can write to"
    ]


def test_results_folder_that_can_be_created_passes(tmp_path):
    assert check_results_dir(with_defaults({"results": str(tmp_path / "a" / "b")})) == []


@pytest.mark.workflow
def test_results_below_a_file_stops_snakemake_at_parse_time(tmp_path):
    blocker = tmp_path / "results.tar"
    blocker.write_bytes(b"")
    cmd = [
        str(Path(sys.executable).with_name("snakemake")),
        "--snakefile",
        str(REPO / "Snakefile"),
        "--directory",
        str(tmp_path),
        "-n",
        "--configfile",
        *map(str, CONFIGS),
        "--config",
        f"results={blocker / 'run1'}",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert (
        f"invalid configuration:\n  config key 'results': {blocker} is a file, not a folder, so "
        f"results cannot go to {blocker / 'run1'}"
    ) in result.stdout + result.stderr
