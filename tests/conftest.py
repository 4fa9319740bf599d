"""Shared fixtures: the tiny synthetic cohort (config/test.yaml), generated once per session."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from deltarad.config import load_config
from deltarad.synth import SynthConfig, simulate_cohort

REPO = Path(__file__).resolve().parents[1]
CONFIGS = (REPO / "config/config.yaml", REPO / "config/test.yaml")


@pytest.fixture(scope="session")
def tiny_config() -> dict:
    return load_config(*CONFIGS)


@pytest.fixture(scope="session")
def tiny_synth(tiny_config) -> SynthConfig:
    return SynthConfig.from_config(tiny_config["synthetic"])


@pytest.fixture(scope="session")
def tiny_cohort_ro(tmp_path_factory, tiny_synth) -> Path:
    """The tiny cohort; read-only by convention (copy it with `tiny_cohort` to modify)."""
    root = tmp_path_factory.mktemp("tiny_cohort")
    simulate_cohort(tiny_synth, root)
    return root


@pytest.fixture()
def tiny_cohort(tiny_cohort_ro, tmp_path) -> Path:
    """A private, modifiable copy of the tiny cohort."""
    dst = tmp_path / "cohort"
    shutil.copytree(tiny_cohort_ro, dst)
    return dst
