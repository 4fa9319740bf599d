"""Table 1: cohort characteristics per centre, as a TSV and as a rendered table figure."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from deltarad import io
from deltarad.figures.style import Style, save, subplots

ALL = "All"


def _median_iqr(values: pd.Series, digits: int = 0) -> str:
    v = pd.to_numeric(values, errors="coerce").dropna()
    if v.empty:
        return "NA"
    q1, med, q3 = np.percentile(v, [25, 50, 75])
    return f"{med:.{digits}f} ({q1:.{digits}f}–{q3:.{digits}f})"


def _count_pct(mask: pd.Series, denominator: int) -> str:
    n = int(mask.sum())
    return f"{n} ({100 * n / denominator:.0f} %)" if denominator else "0"


def scan_spacing(samples: pd.DataFrame) -> pd.DataFrame:
    """Voxel spacing (x, y, z mm) of every baseline scan as acquired, from the image headers."""
    base = samples[samples["timepoint"] == "baseline"]
    rows = []
    for pid, image in zip(base["patient_id"], base["image"], strict=True):
        spacing = io.read_header(image)[0].spacing
        rows.append({"patient_id": pid, "inplane_mm": spacing[0], "slice_mm": spacing[-1]})
    return pd.DataFrame(rows, columns=["patient_id", "inplane_mm", "slice_mm"])


def cohort_table(
    clinical: pd.DataFrame,
    samples: pd.DataFrame,
    spacing: pd.DataFrame | None = None,
    time_unit: str = "months",
) -> pd.DataFrame:
    """One row per characteristic, one column per centre plus `All`.

    Patients are those of the validated samples sheet; `response` NA counts as not
    assessed; the follow-up is the median observed time (all patients, censored included).
    Covariates `age`, `sex` and `stage` are summarised when the clinical sheet has them.
    """
    centers = samples.drop_duplicates("patient_id").set_index("patient_id")["center"]
    df = clinical[clinical["patient_id"].isin(centers.index)].copy()
    df["center"] = df["patient_id"].map(centers)
    df["_response"] = pd.to_numeric(df["response"], errors="coerce")
    if spacing is not None and not spacing.empty:
        df = df.merge(spacing, on="patient_id", how="left")
    groups = [(c, df[df["center"] == c]) for c in sorted(df["center"].unique())]
    groups.append((ALL, df))
    table: dict[str, dict[str, str]] = {}

    def add(label: str, fn: object) -> None:
        table[label] = {name: fn(g) for name, g in groups}  # type: ignore[operator]

    add("Patients, n", lambda g: str(len(g)))
    if "age" in df:
        add("Age, years, median (IQR)", lambda g: _median_iqr(g["age"]))
    if "sex" in df:
        for sex in sorted(df["sex"].dropna().astype(str).unique()):
            add(f"Sex {sex}, n (%)", lambda g, s=sex: _count_pct(g["sex"].astype(str) == s, len(g)))
    if "stage" in df:
        for stage in sorted(df["stage"].dropna().astype(str).unique()):
            add(
                f"Stage {stage}, n (%)",
                lambda g, s=stage: _count_pct(g["stage"].astype(str) == s, len(g)),
            )
    add(
        "Responders, n (% of assessed)",
        lambda g: _count_pct(g["_response"] == 1, int(g["_response"].notna().sum())),
    )
    add("Events, n (%)", lambda g: _count_pct(pd.to_numeric(g["event"]) == 1, len(g)))
    add(f"Follow-up, {time_unit}, median (IQR)", lambda g: _median_iqr(g["time"], 1))
    if "inplane_mm" in df:
        add("In-plane spacing, mm, median", lambda g: _median_iqr(g["inplane_mm"], 2).split()[0])
        add("Slice spacing, mm, median", lambda g: _median_iqr(g["slice_mm"], 2).split()[0])
    out = pd.DataFrame(table).T.reset_index(names="characteristic")
    return out[["characteristic"] + [name for name, _ in groups]]


def table_figure(
    table: pd.DataFrame, style: Style, out_png: str | Path, out_pdf: str | Path
) -> None:
    """The table drawn as a figure (for slides and the report), header row in bold."""
    with style.context():
        fig, axes = subplots(style, aspect=0.06 + 0.035 * (len(table) + 1))
        ax = axes[0, 0]
        ax.axis("off")
        cells = ax.table(
            cellText=table.to_numpy(),
            colLabels=list(table.columns),
            loc="upper center",
            cellLoc="center",
            colLoc="center",
            colWidths=[0.34] + [0.66 / (table.shape[1] - 1)] * (table.shape[1] - 1),
        )
        cells.auto_set_font_size(False)
        cells.set_fontsize(style.font_size)
        cells.scale(1.0, 1.35)
        for (row, col), cell in cells.get_celld().items():
            cell.set_linewidth(0)
            if row == 0:
                cell.set_text_props(fontweight="bold")
                cell.visible_edges = "B"
                cell.set_linewidth(0.8)
            if col == 0:
                cell.set_text_props(ha="left")
                cell._loc = "left"
        save(fig, style, out_png, out_pdf)


def write_table1(
    clinical_path: str | Path,
    samples_path: str | Path,
    style: Style,
    out_tsv: str | Path,
    out_png: str | Path,
    out_pdf: str | Path,
    time_unit: str = "months",
) -> pd.DataFrame:
    """Table 1 from the validated sheets -> TSV + rendered figure."""
    clinical = io.read_tsv(clinical_path)
    samples = io.read_tsv(samples_path)
    table = cohort_table(clinical, samples, scan_spacing(samples), time_unit)
    io.write_table(table, out_tsv)
    table_figure(table, style, out_png, out_pdf)
    return table
