"""provenance.json: config hash, input hashes, versions and the git commit."""

from __future__ import annotations

import json

from deltarad import io, provenance
from deltarad.config import config_hash
from tests.conftest import REPO


def test_provenance_records_inputs_versions_and_commit(
    tiny_cohort, tiny_config, tmp_path, monkeypatch
):
    monkeypatch.chdir(tiny_cohort)
    out = tmp_path / "provenance.json"
    params = REPO / "config/radiomics/ct.yaml"
    provenance.write(
        tiny_config, "samples.tsv", ["clinical.tsv"], REPO, out, {"features.params": params}
    )
    data = json.loads(out.read_text())
    assert data["parameter_files"]["features.params"] == {
        "path": str(params),
        "sha256": io.sha256(params),
    }
    assert data["deltarad_config_sha256"] == config_hash(tiny_config)
    assert data["n_patients"] == 6 and data["n_scans"] == 12
    assert data["inputs_sha256"]["images/C1-001/baseline.nii.gz"] == io.sha256(
        tiny_cohort / "images/C1-001/baseline.nii.gz"
    )
    # Two sheets, 12 images, 9 masks (the follow-ups of C1-001, C2-001, C2-002 have none).
    assert len(data["inputs_sha256"]) == 2 + 12 + 9
    assert {"numpy", "SimpleITK", "snakemake", "deltarad"} <= set(data["packages"])
    assert set(data["git"]) == {"commit", "dirty"}


def test_git_commit_outside_a_repository(tmp_path):
    assert provenance.git_commit(tmp_path) == {"commit": None, "dirty": None}
