"""QC tables and the failures list that QC gates feed (QC pictures: deltarad.figures)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import SimpleITK as sitk

from deltarad import io

REGISTRATION_QC_COLUMNS = [
    "patient_id",
    "timepoint",
    "method",
    "tre_mm",
    "mask_dice",
    "seconds",
    # beyond the contract's columns:
    "tre_p95_mm",
    "mask_dice_true_transform",
    "metric_before",
    "metric_after",
    "jacobian_min",
    "jacobian_max",
    "max_displacement_mm",
    "passed",
]
FAILURE_COLUMNS = ["patient_id", "stage", "error"]


def dice(a: np.ndarray | sitk.Image, b: np.ndarray | sitk.Image) -> float:
    """Dice of two masks (arrays or images on one grid; any value > 0 is foreground). NaN when
    both are empty: there is nothing to agree on, and a mean or median should skip it."""
    x, y = (sitk.GetArrayViewFromImage(m) if isinstance(m, sitk.Image) else m for m in (a, b))
    x, y = np.asarray(x) > 0, np.asarray(y) > 0
    total = int(x.sum() + y.sum())
    return float(2 * np.logical_and(x, y).sum() / total) if total else float("nan")


def collect_registration_qc(
    records: list[str | Path],
    gate_settings: dict[str, Any],
    table_out: str | Path,
    failures_out: str | Path,
) -> pd.DataFrame:
    """Per-scan QC JSONs -> registration_qc.tsv with the gate applied; drops -> failures table
    (one row per patient, its failing scans' reasons joined by `` | ``)."""
    from deltarad.register import RegistrationSettings, gate

    settings = RegistrationSettings.from_config({"gate": gate_settings})
    rows, failures = [], []
    for path in records:
        record = json.loads(Path(path).read_text())
        reasons = gate(record, settings)
        rows.append({**record, "passed": not reasons})
        if reasons:
            failures.append(
                {
                    "patient_id": record["patient_id"],
                    "stage": "registration",
                    "error": f"{record['timepoint']}: " + "; ".join(reasons),
                }
            )
    df = pd.DataFrame(rows).reindex(columns=REGISTRATION_QC_COLUMNS)
    df = df.sort_values(["patient_id", "timepoint"]).reset_index(drop=True)
    io.write_table(df, table_out)
    # One row per patient (a patient with several failing later scans is dropped once).
    failed = pd.DataFrame(failures, columns=FAILURE_COLUMNS)
    if len(failed):
        by_patient = failed.groupby(["patient_id", "stage"], sort=True)["error"]
        failed = by_patient.agg(" | ".join).reset_index()
    io.write_table(failed[FAILURE_COLUMNS], failures_out)
    return df


def failed_patients(path: str | Path | None) -> set[str]:
    """The patients of a failures table (``patient_id, stage, error``; an empty file or None:
    none), e.g. those the registration QC gate dropped, whom every later stage leaves out."""
    if path is None or Path(path).stat().st_size == 0:
        return set()
    return set(io.read_tsv(path).get("patient_id", pd.Series(dtype=str)).dropna())


def merge_failures(paths: list[str | Path], out: str | Path) -> pd.DataFrame:
    """All stages' failure tables -> tables/failures.tsv (patient_id, stage, error)."""
    frames = [io.read_tsv(p) for p in paths]
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    df = df.reindex(columns=FAILURE_COLUMNS).sort_values(["patient_id", "stage"])
    io.write_table(df, out)
    return df
