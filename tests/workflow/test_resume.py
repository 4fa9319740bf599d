"""Kill and resume, concurrency and determinism of the tiny workflow.

The shared uninterrupted run of the tiny cohort is the reference. A second run, in a folder
whose path has a space and non-ASCII letters, is SIGKILLed (its whole process group: Snakemake
and the running jobs) as soon as the first output of a stage appears, for three stages, and
resumed each time with ``--unlock`` + ``--rerun-incomplete``. While the last resume runs, a
second Snakemake on the same folder must be refused by Snakemake's lock. The resumed run's
tables must equal the reference's byte for byte, which also shows that two runs of the tiny
cohort are deterministic on CPU.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import SimpleITK as sitk

from tests.conftest import REPO
from tests.workflow.conftest import RUN_CONFIGS

pytestmark = pytest.mark.workflow
SNAKEMAKE = Path(sys.executable).with_name("snakemake")
# (glob under results/ whose first match triggers the kill, what the run is doing then)
KILL_POINTS = [
    ("preprocessed/*/*.nii.gz", "preprocessing"),
    ("registered/*/*.nii.gz", "registration"),
    ("features/patients/*.parquet", "feature extraction"),
]
# Outputs compared byte for byte with the uninterrupted run (those that exist in it).
COMPARED = [
    "features/features.parquet",
    "tables/metrics.tsv",
    "tables/failures.tsv",
    "tables/samples.validated.tsv",
    "tables/clinical.validated.tsv",
    "preprocess/fingerprint.json",
]
LOCK_MESSAGE = "Directory cannot be locked"
# The runs stop at the tables compared (and what they need): later stages (segmentation
# training, figures, report) would add minutes without adding kill points.
TARGETS = [
    "results/features/features.parquet",
    "results/tables/failures.tsv",
    "results/preprocess/fingerprint.json",
]
if any("tables/metrics.tsv" in f.read_text() for f in (REPO / "workflow/rules").glob("*.smk")):
    TARGETS.append("results/tables/metrics.tsv")
TIMEOUT_S = 600


def _command(workdir: Path, *args: str) -> list[str]:
    return [
        str(SNAKEMAKE),
        *([] if "--unlock" in args else TARGETS),  # before --configfile, which takes a list
        "--snakefile",
        str(REPO / "Snakefile"),
        "--directory",
        str(workdir),
        "--cores",
        "2",
        "--configfile",
        *map(str, RUN_CONFIGS),
        *args,
    ]


ENV = {**os.environ, "PYTHONHASHSEED": "0"}


def _run(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        _command(workdir, *args), capture_output=True, text=True, env=ENV, timeout=TIMEOUT_S
    )


def _start(workdir: Path, log: Path, *args: str) -> subprocess.Popen:
    """Snakemake in its own session, so one killpg reaches it and every job it started."""
    with open(log, "w") as fh:
        return subprocess.Popen(
            _command(workdir, *args),
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=ENV,
            start_new_session=True,
        )


def _wait_for(proc: subprocess.Popen, results: Path, pattern: str) -> bool:
    """True once a file matching `pattern` exists; False if the run ended first."""
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        # Hidden names are the writers' temporary files (deltarad.io.atomic_path).
        if any(not p.name.startswith(".") for p in results.glob(pattern)):
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.1)
    raise TimeoutError(f"no {pattern} after {TIMEOUT_S} s")


def _kill(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)


def _assert_outputs_complete(results: Path) -> None:
    """Every output under its final name is whole: SIGKILL left only hidden temporary files."""
    for path in results.rglob("*"):
        if not path.is_file() or path.name.startswith("."):
            continue
        if path.name.endswith((".nii.gz", ".nii")):
            sitk.ReadImage(str(path))
        elif path.suffix == ".parquet":
            pd.read_parquet(path)
        elif path.suffix == ".json":
            json.loads(path.read_text())


@pytest.fixture(scope="module")
def reference(finished_run) -> Path:
    """The shared uninterrupted run (tests/workflow/conftest.py) is the reference."""
    return finished_run / "results"


def test_killed_runs_resume_to_the_same_tables_and_refuse_a_second_run(reference, tmp_path):
    workdir = tmp_path / "résumé run ü"  # a space and non-ASCII letters must work
    workdir.mkdir()
    results = workdir / "results"
    killed = []
    for i, (pattern, stage) in enumerate(KILL_POINTS):
        args = ("--unlock",) if i else ()
        if args:  # a SIGKILLed Snakemake leaves its lock: the documented way back
            assert _run(workdir, *args).returncode == 0
        proc = _start(workdir, tmp_path / f"run{i}.log", "--rerun-incomplete")
        if _wait_for(proc, results, pattern):
            _kill(proc)
            killed.append(stage)
        else:
            pytest.fail(f"run ended before {stage}: {(tmp_path / f'run{i}.log').read_text()}")
        _assert_outputs_complete(results)
    assert killed == [stage for _, stage in KILL_POINTS]

    # Without --unlock the stale lock refuses the run, naming the way out.
    stale = _run(workdir, "--rerun-incomplete")
    assert stale.returncode != 0 and LOCK_MESSAGE in stale.stdout + stale.stderr
    assert "--unlock" in stale.stdout + stale.stderr

    assert _run(workdir, "--unlock").returncode == 0
    last = _start(workdir, tmp_path / "last.log", "--rerun-incomplete")
    locks = workdir / ".snakemake/locks"
    deadline = time.monotonic() + TIMEOUT_S
    while not (locks.is_dir() and any(locks.iterdir())) and time.monotonic() < deadline:
        assert last.poll() is None, (tmp_path / "last.log").read_text()[-3000:]
        time.sleep(0.1)
    # A plain second run stops at the running jobs' incomplete markers or at the lock; one
    # told to rerun incomplete jobs (what the first message suggests) meets the lock.
    plain = _run(workdir)
    assert plain.returncode != 0
    assert any(m in plain.stdout + plain.stderr for m in (LOCK_MESSAGE, "incomplete"))
    second = _run(workdir, "--rerun-incomplete")
    assert second.returncode != 0
    assert LOCK_MESSAGE in second.stdout + second.stderr, second.stderr[-3000:]
    assert last.wait(timeout=TIMEOUT_S) == 0, (tmp_path / "last.log").read_text()[-3000:]
    # The second Snakemake changed nothing: the resumed run is complete and equals the reference.
    plan = _run(workdir, "-n")
    assert "Nothing to be done" in plan.stdout + plan.stderr

    compared = [rel for rel in COMPARED if (reference / rel).exists()]
    assert "features/features.parquet" in compared
    for rel in compared:
        assert (results / rel).read_bytes() == (reference / rel).read_bytes(), rel
    qc = [pd.read_csv(r / "tables/registration_qc.tsv", sep="\t") for r in (reference, results)]
    pd.testing.assert_frame_equal(*(t.drop(columns="seconds") for t in qc))
