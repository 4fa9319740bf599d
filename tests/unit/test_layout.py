"""Parse-time helpers (deltarad.layout): they agree with the modules that own the logic, and the
rule files import nothing heavy while Snakemake parses them."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from deltarad import layout
from deltarad.config import load_config
from deltarad.runlog import UserError
from tests.conftest import CONFIGS, REPO

# Modules that cost seconds to import and that no rule file needs while the DAG is built.
HEAVY = ("scipy", "SimpleITK", "matplotlib", "torch", "radiomics", "nnunetv2", "deltarad.synth")


@pytest.mark.parametrize("configs", [CONFIGS[:1], CONFIGS], ids=["default", "tiny"])
def test_synthetic_patients_match_the_generator(configs):
    from deltarad import synth

    block = load_config(*configs)["synthetic"]
    cfg = synth.SynthConfig.from_config(block)
    assert layout.synthetic_patient_ids(block) == [p.patient_id for p in cfg.patients()]
    assert synth.patient_outputs is layout.synthetic_patient_outputs  # one definition


def test_scan_paths_baseline_preprocessed_later_registered():
    results = Path("res")
    assert layout.scan_paths(results, "P1", "baseline") == (
        results / "preprocessed/P1/baseline.nii.gz",
        results / "preprocessed/P1/baseline_mask.nii.gz",
    )
    assert (
        layout.scan_paths(results, "P1", "week6")[1] == results / "registered/P1/week6_mask.nii.gz"
    )


def test_resolve_params_falls_back_to_the_deltarad_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert (
        layout.resolve_params("config/radiomics/ibsi.yaml") == REPO / "config/radiomics/ibsi.yaml"
    )
    local = tmp_path / "mine.yaml"
    local.write_text("{}")
    assert layout.resolve_params("mine.yaml") == Path("mine.yaml")
    with pytest.raises(UserError, match="not found"):
        layout.resolve_params("nowhere.yaml")


def test_nnunet_names():
    assert layout.nnunet_dataset_name(7, "Tumor") == "Dataset007_Tumor"
    with pytest.raises(UserError, match="1..999"):
        layout.nnunet_dataset_name(1000, "Tumor")
    with pytest.raises(UserError, match="letters and digits"):
        layout.nnunet_dataset_name(7, "a_b")
    folder = layout.nnunet_model_folder(Path("m"), 7, "Tumor", "3d_lowres", "T")
    assert folder == Path("m/results/Dataset007_Tumor/T__nnUNetPlans__3d_lowres")


def test_rule_files_import_only_light_modules():
    """What the Snakefile and rule files import from deltarad loads none of HEAVY (each costs
    seconds on every run, a no-op rerun included)."""
    sources = [REPO / "Snakefile", *sorted((REPO / "workflow/rules").glob("*.smk"))]
    modules = sorted(
        {
            m
            for f in sources
            for m in re.findall(r"^from (deltarad[.\w]*) import", f.read_text(), re.M)
        }
    )
    assert "deltarad.cohort" in modules
    code = (
        f"import sys\nfor m in {modules!r}: __import__(m)\n"
        f"print(sorted(h for h in {HEAVY!r} if h in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
