"""The Snakefile end to end on the tiny cohort, in a temporary working directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from deltarad import io
from deltarad.cohort import SAMPLE_COLUMNS
from deltarad.qc import REGISTRATION_QC_COLUMNS
from tests.conftest import CONFIGS, REPO

pytestmark = pytest.mark.workflow
SNAKEMAKE = Path(sys.executable).with_name("snakemake")


def snakemake(workdir: Path, *args: str, configs=CONFIGS) -> subprocess.CompletedProcess:
    cmd = [
        str(SNAKEMAKE),
        "--snakefile",
        str(REPO / "Snakefile"),
        "--directory",
        str(workdir),
        "--cores",
        "2",
        "--configfile",
        *map(str, configs),
        *args,
    ]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("wf")
    result = snakemake(workdir)
    assert result.returncode == 0, result.stderr[-4000:]
    return workdir


def test_tiny_workflow_writes_the_contract_outputs(finished_run, tiny_cohort_ro):
    results = finished_run / "results"
    samples = io.read_tsv(results / "tables/samples.validated.tsv")
    assert list(samples.columns) == SAMPLE_COLUMNS
    assert len(samples) == 12 and samples["patient_id"].nunique() == 6
    assert samples["image"].str.startswith("results/cohort/images/").all()
    # The workflow's per-patient generation equals the serial CLI generation, byte for byte.
    for rel in ("images/C2-003/followup.nii.gz", "truth/latent.tsv", "clinical.tsv"):
        assert io.sha256(results / "cohort" / rel) == io.sha256(tiny_cohort_ro / rel), rel
    prov = json.loads((results / "provenance.json").read_text())
    assert prov["n_patients"] == 6
    assert "results/cohort/images/C1-001/baseline.nii.gz" in prov["inputs_sha256"]
    assert (results / "logs/validate_cohort.log").read_text().startswith("valid: 6 patients")


def test_registration_outputs_and_qc(finished_run):
    results = finished_run / "results"
    qc = io.read_tsv(results / "tables/registration_qc.tsv")
    assert list(qc.columns) == REGISTRATION_QC_COLUMNS
    assert REGISTRATION_QC_COLUMNS[:6] == [  # the output contract's columns come first
        "patient_id",
        "timepoint",
        "method",
        "tre_mm",
        "mask_dice",
        "seconds",
    ]
    assert len(qc) == 6 and set(qc["timepoint"]) == {"followup"}
    tre = qc["tre_mm"].astype(float)
    assert tre.median() < 3.0  # 1 voxel of the tiny cohort's 3 mm grid
    assert (qc["mask_dice"].astype(float) > 0).all()
    for pid in qc["patient_id"]:
        base = io.read_image(results / f"preprocessed/{pid}/baseline.nii.gz")
        for name in ("followup.nii.gz", "followup_mask.nii.gz"):
            reg = io.read_image(results / f"registered/{pid}/{name}")
            assert io.Geometry.of(reg).mismatches(io.Geometry.of(base)) == []
        assert (results / f"figures/qc/registration/{pid}_followup.png").is_file()


def test_features_table(finished_run):
    table = pd.read_parquet(finished_run / "results/features/features.parquet")
    assert len(table) == 6 and table.columns[0] == "patient_id"
    timepoints = {c.split("__")[0] for c in table.columns[1:]}
    assert timepoints == {"baseline", "followup", "delta", "reldelta"}
    assert "baseline__tumor__pyrad__original_firstorder_Mean" in table.columns


def test_gate_drops_patients_and_the_rest_finish(finished_run, tmp_path):
    """Tightening the gate re-runs only the QC aggregation, drops the patients beyond it."""
    qc = io.read_tsv(finished_run / "results/tables/registration_qc.tsv")
    disp = qc["max_displacement_mm"].astype(float).sort_values()
    threshold = float((disp.iloc[2] + disp.iloc[3]) / 2)  # half the patients beyond it
    strict = tmp_path / "strict.yaml"
    strict.write_text(
        yaml.safe_dump({"registration": {"gate": {"max_displacement_mm": threshold}}})
    )
    configs = (*CONFIGS, strict)
    plan = snakemake(finished_run, "-n", configs=configs)
    assert plan.returncode == 0
    assert "register " not in plan.stdout and "registration_qc" in plan.stdout
    result = snakemake(finished_run, configs=configs)
    assert result.returncode == 0, result.stderr[-3000:]
    failures = io.read_tsv(finished_run / "results/tables/failures.tsv")
    expected = sorted(qc.loc[qc["max_displacement_mm"].astype(float) > threshold, "patient_id"])
    assert sorted(failures["patient_id"]) == expected and len(expected) == 3
    assert failures["error"].str.contains("exceeds registration.gate.max_displacement_mm").all()
    table = io.read_tsv(finished_run / "results/tables/registration_qc.tsv")
    assert sorted(table.loc[table["passed"] == "False", "patient_id"]) == expected
    # Back to the default gate for the tests that follow.
    assert snakemake(finished_run).returncode == 0


def test_rerun_has_nothing_to_do(finished_run):
    result = snakemake(finished_run, "-n")
    assert result.returncode == 0
    assert "Nothing to be done" in result.stdout + result.stderr


def test_bad_user_sheets_stop_before_compute_listing_every_problem(tiny_cohort, tmp_path):
    samples = io.read_tsv(tiny_cohort / "samples.tsv")
    samples.loc[0, "image"] = "images/C1-001/missing.nii.gz"
    mask = io.read_image(tiny_cohort / samples.loc[2, "mask"])
    mask.SetOrigin((0.0, 0.0, 0.0))
    io.write_image(mask, tiny_cohort / samples.loc[2, "mask"])
    samples = pd.concat([samples, samples.iloc[[4]]], ignore_index=True)
    io.write_table(samples, tiny_cohort / "samples.tsv")
    user = tmp_path / "study.yaml"
    user.write_text(
        yaml.safe_dump(
            {
                "cohort": {
                    "source": "sheets",
                    "samples": str(tiny_cohort / "samples.tsv"),
                    "clinical": str(tiny_cohort / "clinical.tsv"),
                },
                "study": {"centers": ["C1", "C2"], "external_centers": ["C2"]},
            }
        )
    )
    workdir = tmp_path / "run"
    workdir.mkdir()
    result = snakemake(workdir, configs=(CONFIGS[0], user))
    assert result.returncode != 0
    out = result.stdout + result.stderr
    assert "3 problem(s)" in out
    assert "patient C1-001, column 'image': file not found" in out
    assert "patient C1-002, column 'mask': mask grid differs from the image in origin" in out
    assert "patient C1-003, column 'timepoint': duplicate scan" in out
    assert not (workdir / "results/provenance.json").exists()
    assert not (workdir / "results/tables/samples.validated.tsv").exists()


def test_invalid_config_fails_at_parse_time(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("synthetic: {contrast: US}\n")
    result = snakemake(tmp_path, "-n", configs=(CONFIGS[0], bad))
    assert result.returncode != 0
    assert "contrast" in result.stdout + result.stderr
