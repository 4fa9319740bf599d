"""provenance.json: what produced a run's results (versions, config, inputs, code)."""

from __future__ import annotations

import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

from deltarad import io
from deltarad.config import config_hash

# Distributions whose versions change results; reported when installed.
PACKAGES = (
    "deltarad",
    "numpy",
    "scipy",
    "pandas",
    "SimpleITK",
    "pyradiomics-bhklab",
    "pyradiomics",
    "torch",
    "torchvision",
    "monai",
    "nnunetv2",
    "scikit-learn",
    "scikit-survival",
    "lifelines",
    "snakemake",
    "pyarrow",
    "matplotlib",
    "pydicom",
)


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def git_commit(repo: str | Path) -> dict[str, Any]:
    """Commit of the workflow's repository and whether its tracked files were modified."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(repo), *args], capture_output=True, text=True, check=True
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": dirty}


def input_hashes(samples: pd.DataFrame, sheets: list[str | Path]) -> dict[str, str]:
    """SHA-256 of every sheet and of every image and mask the validated sheet names."""
    paths = [str(p) for p in sheets]
    for column in ("image", "mask"):
        paths += [p for p in samples[column].dropna().tolist() if p]
    return {p: io.sha256(p) for p in sorted(set(paths))}


def build(
    config: dict[str, Any],
    samples: pd.DataFrame,
    sheets: list[str | Path],
    repo: str | Path,
    parameter_files: dict[str, str | Path] | None = None,
) -> dict[str, Any]:
    """The run's provenance. `parameter_files`: config role -> file (e.g. the pyradiomics parameter
    file as `features.params`), recorded with its SHA-256 so a feature table names its settings."""
    return {
        "deltarad_config_sha256": config_hash(config),
        "config": config,
        "git": git_commit(repo),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": package_versions(),
        "inputs_sha256": input_hashes(samples, sheets),
        "parameter_files": {
            role: {"path": str(path), "sha256": io.sha256(path)}
            for role, path in sorted((parameter_files or {}).items())
        },
        "n_patients": int(samples["patient_id"].nunique()),
        "n_scans": len(samples),
    }


def write(
    config: dict[str, Any],
    samples_path: str | Path,
    sheets: list[str | Path],
    repo: str | Path,
    out: str | Path,
    parameter_files: dict[str, str | Path] | None = None,
) -> None:
    samples = io.read_tsv(samples_path)
    io.write_json(build(config, samples, [samples_path, *sheets], repo, parameter_files), out)
