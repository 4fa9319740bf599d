"""Shared fixtures: the tiny synthetic cohort (config/test.yaml), generated once per session."""

from __future__ import annotations

import dataclasses
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


@pytest.fixture(scope="session")
def labelled_cohort_ro(tmp_path_factory, tiny_synth) -> Path:
    """The tiny cohort with a drawn, non-empty mask on every scan (no unlabelled follow-up, no
    complete response): for tests of stages that take masks as given (e.g. DICOM round trips)."""
    root = tmp_path_factory.mktemp("labelled_cohort")
    labelled = dataclasses.replace(tiny_synth, unlabelled_followups=0.0, complete_degree=1.0)
    simulate_cohort(labelled, root)
    return root


@pytest.fixture()
def tiny_cohort(tiny_cohort_ro, tmp_path) -> Path:
    """A private, modifiable copy of the tiny cohort."""
    dst = tmp_path / "cohort"
    shutil.copytree(tiny_cohort_ro, dst)
    return dst
