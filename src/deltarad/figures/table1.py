"""Table 1: cohort characteristics per centre, as a TSV and as a rendered table figure."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from deltarad import io
from deltarad.figures.style import MM_PER_INCH, Style, save

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
    """Voxel spacing (x, y, z mm) of every baseline scan as acquired, from the image headers: of
    the registration reference channel (the first row of a timepoint in the validated sheet)."""
    base = samples[samples["timepoint"] == "baseline"].drop_duplicates("patient_id")
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


# Smallest font a table is shrunk to before it may grow past the style's width (journals ask
# for >= 5-6 pt in print).
MIN_TABLE_FONT = 5.0
PAD_EM = 0.45  # horizontal padding either side of a cell, in units of the font size


def _pad_mm(size: float) -> float:
    return PAD_EM * size * MM_PER_INCH / 72


def _wrap_cell(text: str) -> str:
    """`31.2 (23.0–48.4)` -> two lines: value over its interval (narrow columns)."""
    head, sep, tail = text.partition(" (")
    return f"{head}\n({tail}" if sep and head else text


def _wrap_label(text: str, max_chars: int = 22) -> str:
    """A row label broken after its commas into lines of at most `max_chars`."""
    lines: list[str] = []
    for part in text.split(", "):
        if lines and len(lines[-1]) + 2 + len(part) <= max_chars:
            lines[-1] += ", " + part
        else:
            if lines:
                lines[-1] += ","
            lines.append(part)
    return "\n".join(lines)


def _extents(fig: Figure, cells: list[list[str]], size: float) -> np.ndarray:
    """Width and height in mm of every cell's text at font `size` (header row bold)."""
    renderer = fig.canvas.get_renderer()
    out = np.zeros((len(cells), len(cells[0]), 2))
    for i, row in enumerate(cells):
        for j, text in enumerate(row):
            t = fig.text(0, 0, text, fontsize=size, fontweight="bold" if i == 0 else "normal")
            box = t.get_window_extent(renderer)
            out[i, j] = box.width, box.height
            t.remove()
    return out / fig.dpi * MM_PER_INCH


def _layout(
    fig: Figure, table: pd.DataFrame, style: Style
) -> tuple[list[list[str]], float, np.ndarray, np.ndarray]:
    """Cells, font size, column widths and row heights (mm) that fit `style.width_mm`:
    one-line cells at the style's font when they fit, else labels and intervals wrapped onto
    two lines, else a smaller font (not below MIN_TABLE_FONT)."""
    header = [str(c).capitalize() for c in table.columns]
    body = [[str(v) for v in row] for row in table.to_numpy()]
    plain = [header, *body]
    wrapped = [header, *[[_wrap_label(r[0]), *[_wrap_cell(v) for v in r[1:]]] for r in body]]
    best = None
    for cells in (plain, wrapped):
        ext = _extents(fig, cells, style.font_size)
        widths = ext[:, :, 0].max(axis=0) + 2 * _pad_mm(style.font_size)
        best = (cells, style.font_size, ext, widths)
        if widths.sum() <= style.width_mm:
            break
    cells, size, ext, widths = best
    # Text and padding scale with the font (text not exactly: hinting), hence a few rounds.
    for _ in range(4):
        if widths.sum() <= style.width_mm or size <= MIN_TABLE_FONT:
            break
        size = max(MIN_TABLE_FONT, size * style.width_mm / widths.sum() * 0.98)
        ext = _extents(fig, cells, size)
        widths = ext[:, :, 0].max(axis=0) + 2 * _pad_mm(size)
    heights = ext[:, :, 1].max(axis=1) + 0.9 * size * 25.4 / 72
    return cells, size, widths, heights


def table_figure(
    table: pd.DataFrame, style: Style, out_png: str | Path, out_pdf: str | Path
) -> None:
    """The table drawn as a figure (for slides and the report) in journal style: rules above
    and below the bold header and at the bottom, labels left, values centred.

    Why sized from its text: a table has no axes to shrink, so the columns are measured with
    the renderer and the figure takes the width and height its cells need, up to the style's
    width (see :func:`_layout`: wrap, then a smaller font). Never wider than `width_mm`
    unless even MIN_TABLE_FONT does not fit.
    """
    with style.context():
        fig = plt.figure(figsize=(style.width_in, 1.0))
        cells, size, widths, heights = _layout(fig, table, style)
        width_mm = max(style.width_mm, float(widths.sum()))
        height_mm = float(heights.sum()) + 2.0
        fig.set_size_inches(width_mm / MM_PER_INCH, height_mm / MM_PER_INCH)
        to_fig = np.array([1 / width_mm, 1 / height_mm])
        left = (width_mm - widths.sum()) / 2
        edges = left + np.concatenate([[0.0], np.cumsum(widths)])
        y = height_mm - 1.0
        rule = {"color": "black", "lw": 0.8, "transform": fig.transFigure}
        fig.add_artist(
            Line2D([edges[0] / width_mm, edges[-1] / width_mm], [y / height_mm] * 2, **rule)
        )
        for i, (row, h) in enumerate(zip(cells, heights, strict=True)):
            middle = y - h / 2
            for j, text in enumerate(row):
                x = edges[j] + _pad_mm(size) if j == 0 else (edges[j] + edges[j + 1]) / 2
                fig.text(
                    *(np.array([x, middle]) * to_fig),
                    text,
                    fontsize=size,
                    fontweight="bold" if i == 0 else "normal",
                    ha="left" if j == 0 else "center",
                    va="center",
                    multialignment="left" if j == 0 else "center",
                )
            y -= h
            if i == 0 or i == len(cells) - 1:
                fig.add_artist(
                    Line2D([edges[0] / width_mm, edges[-1] / width_mm], [y / height_mm] * 2, **rule)
                )
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
