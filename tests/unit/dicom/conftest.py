"""The tiny synthetic cohort (every scan with a drawn mask) exported as DICOM with fake identifying
data (once per session)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from deltarad import io
from deltarad.dicom.export import export_cohort

KEY = "test-key-0123456789-abcdef"


@pytest.fixture(scope="session")
def dicom_export(labelled_cohort_ro, tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    """(DICOM root, answer key) of the tiny cohort; read-only by convention."""
    root = tmp_path_factory.mktemp("dicom") / "export"
    manifest = export_cohort(labelled_cohort_ro, root)
    return root, manifest


@pytest.fixture()
def dicom_copy(dicom_export, tmp_path) -> tuple[Path, pd.DataFrame]:
    """A private, modifiable copy of the exported DICOM tree."""
    root, manifest = dicom_export
    dst = tmp_path / "dicom"
    shutil.copytree(root, dst)
    manifest = manifest.copy()
    manifest["series_folder"] = [
        str(dst / Path(f).relative_to(root)) for f in manifest["series_folder"]
    ]
    return dst, manifest


@pytest.fixture()
def clinical_by_mrn(labelled_cohort_ro, dicom_export, tmp_path) -> Path:
    """The cohort's clinical table keyed by the fake hospital numbers, as a site would give it."""
    _, manifest = dicom_export
    clinical = io.read_tsv(labelled_cohort_ro / "clinical.tsv")
    mrn = dict(zip(manifest["patient_id"], manifest["dicom_patient_id"], strict=False))
    clinical["patient_id"] = clinical["patient_id"].map(mrn)
    path = tmp_path / "clinical_site.tsv"
    io.write_table(clinical, path)
    return path


def phi_strings(manifest: pd.DataFrame) -> set[str]:
    """Every identifying value written into the export: names, dates, IDs, UIDs, institution."""
    values: set[str] = set()
    for row in manifest.itertuples():
        values |= set(row.phi.split("|"))
        values |= {row.study_uid, row.series_uid, row.study_date}
        values.add(f"{row.study_date[:4]}-{row.study_date[4:6]}-{row.study_date[6:]}")
    return {v for v in values if v}
