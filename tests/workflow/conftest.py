"""One finished run of the tiny cohort, shared by every workflow test module (each full run costs
minutes on 2 cores). Tests that change its configuration put it back before they end."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import CONFIGS, REPO

SNAKEMAKE = Path(sys.executable).with_name("snakemake")
# The shared run's configuration: the tiny cohort with a PET channel and a third (mid-treatment)
# timepoint.
RUN_CONFIGS = (*CONFIGS, Path(__file__).with_name("longitudinal.yaml"))


def snakemake(workdir: Path, *args: str, configs=RUN_CONFIGS) -> subprocess.CompletedProcess:
    """Run the workflow in `workdir` with the shared run's configuration (or `configs`).
    Targets and flags go first: --configfile takes every argument after it."""
    cmd = [
        str(SNAKEMAKE),
        *args,
        "--snakefile",
        str(REPO / "Snakefile"),
        "--directory",
        str(workdir),
        "--cores",
        "2",
        "--configfile",
        *map(str, configs),
    ]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1200)


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory) -> Path:
    """The working directory of a complete default-target run (every stage, figures included)."""
    workdir = tmp_path_factory.mktemp("wf")
    result = snakemake(workdir)
    assert result.returncode == 0, result.stderr[-4000:]
    return workdir
