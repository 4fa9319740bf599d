"""The `deltarad` command line: simulate and validate, with their exit codes."""

from __future__ import annotations

import subprocess
import sys

from deltarad import io
from deltarad.cli import main
from tests.conftest import CONFIGS


def _config_args():
    return [arg for c in CONFIGS for arg in ("--config", str(c))]


def test_simulate_then_validate(tmp_path, capsys):
    out = tmp_path / "cohort"
    assert (
        main(
            [
                "simulate",
                *_config_args(),
                "--patients-per-center",
                "1",
                "--out",
                str(out),
                "--jobs",
                "2",
            ]
        )
        == 0
    )
    assert "simulated 2 patients" in capsys.readouterr().out
    assert len(io.read_tsv(out / "samples.tsv")) == 4
    code = main(
        [
            "validate",
            *_config_args(),
            "--samples",
            str(out / "samples.tsv"),
            "--clinical",
            str(out / "clinical.tsv"),
            "--out-dir",
            str(tmp_path / "v"),
        ]
    )
    assert code == 0
    assert (tmp_path / "v/samples.validated.tsv").is_file()


def test_validate_reports_problems_with_exit_1(tiny_cohort, capsys):
    samples = io.read_tsv(tiny_cohort / "samples.tsv")
    samples.loc[3, "image"] = "missing.nii.gz"
    io.write_table(samples, tiny_cohort / "samples.tsv")
    code = main(
        [
            "validate",
            *_config_args(),
            "--samples",
            str(tiny_cohort / "samples.tsv"),
            "--clinical",
            str(tiny_cohort / "clinical.tsv"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert "1 problem(s)" in err and "patient C1-002" in err and "column 'image'" in err


def test_bad_config_exit_2(tmp_path, capsys):
    bad = tmp_path / "c.yaml"
    bad.write_text("synthetic: {seed: -1}\n")
    assert main(["simulate", "--config", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "synthetic.seed" in capsys.readouterr().err


def test_console_script_is_installed():
    result = subprocess.run(
        [sys.executable, "-m", "deltarad.cli", "--version"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.startswith("deltarad ")
