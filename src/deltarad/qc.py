"""QC tables, pictures and the failures list that QC gates feed."""

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


def collect_registration_qc(
    records: list[str | Path],
    gate_settings: dict[str, Any],
    table_out: str | Path,
    failures_out: str | Path,
) -> pd.DataFrame:
    """Per-scan QC JSONs -> registration_qc.tsv with the gate applied; drops -> failures table."""
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
    io.write_table(
        pd.DataFrame(failures, columns=FAILURE_COLUMNS).sort_values("patient_id"), failures_out
    )
    return df


def merge_failures(paths: list[str | Path], out: str | Path) -> pd.DataFrame:
    """All stages' failure tables -> tables/failures.tsv (patient_id, stage, error)."""
    frames = [io.read_tsv(p) for p in paths]
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    df = df.reindex(columns=FAILURE_COLUMNS).sort_values(["patient_id", "stage"])
    io.write_table(df, out)
    return df


def _window(arr: np.ndarray) -> tuple[float, float]:
    lo, hi = np.percentile(arr, [1, 99])
    return float(lo), float(hi) if hi > lo else float(lo) + 1.0


def _checkerboard(a: np.ndarray, b: np.ndarray, tiles: int = 8) -> np.ndarray:
    yy, xx = np.indices(a.shape)
    board = ((yy * tiles // a.shape[0]) + (xx * tiles // a.shape[1])) % 2 == 0
    return np.where(board, a, b)


def registration_figure(
    fixed: sitk.Image,
    moving_before: sitk.Image,
    moving_after: sitk.Image,
    mask: sitk.Image | None,
    title: str,
    out_png: str | Path,
) -> None:
    """Checkerboards of baseline vs follow-up before and after registration, three slices."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    f = sitk.GetArrayFromImage(fixed)
    before = sitk.GetArrayFromImage(moving_before)
    after = sitk.GetArrayFromImage(moving_after)
    if mask is not None and sitk.GetArrayViewFromImage(mask).any():
        z_mid = int(np.median(np.argwhere(sitk.GetArrayViewFromImage(mask) > 0)[:, 0]))
    else:
        z_mid = f.shape[0] // 2
    slices = sorted(
        {max(0, z_mid - f.shape[0] // 5), z_mid, min(f.shape[0] - 1, z_mid + f.shape[0] // 5)}
    )
    lo, hi = _window(f)
    fig, axes = plt.subplots(2, len(slices), figsize=(3.2 * len(slices), 6.6), squeeze=False)
    for j, z in enumerate(slices):
        for i, (moving, label) in enumerate(((before, "before"), (after, "after"))):
            ax = axes[i, j]
            ax.imshow(_checkerboard(f[z], moving[z]), cmap="gray", vmin=lo, vmax=hi, origin="lower")
            ax.set_title(f"{label}, slice {z}", fontsize=9)
            ax.axis("off")
    fig.suptitle(f"{title}: baseline / follow-up checkerboard", fontsize=10)
    fig.tight_layout()
    with io.atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)
