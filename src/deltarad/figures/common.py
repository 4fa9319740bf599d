"""Helpers shared by the figure modules: reading the result tables, picking what to draw."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from deltarad.figures.style import Style, empty_panel, subplots
from deltarad.runlog import UserError

T = TypeVar("T")

# The models stage's reference: the synthetic cohort's true latent, scored like a model. Drawn
# as a grey reference line, never ranked among the models.
ORACLE = "oracle"
# The metric a figure ranks models by, per endpoint (metrics.tsv `metric` values).
RANK_METRIC = {"response": "auc", "survival": "c_index"}


def read_table(
    path: str | Path, columns: Sequence[str], numeric: Iterable[str] = ()
) -> pd.DataFrame:
    """A result TSV with its contract columns checked and `numeric` columns as floats.

    Why: a figure job should name the table and the missing column, not fail in matplotlib.
    """
    df = pd.read_csv(path, sep="\t", keep_default_na=False, na_values=["", "NA", "NaN", "nan"])
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise UserError(f"{path}: missing column(s) {missing}; expected {list(columns)}")
    for col in numeric:
        df[col] = pd.to_numeric(df[col], errors="coerce")
    for col in set(columns) - set(numeric):
        if df[col].dtype == object:
            df[col] = df[col].astype("string").fillna("").astype(str)
    return df


def evaluation_order(values: Iterable[str]) -> list[str]:
    """Evaluations in reading order: nested CV, external centres, then leave-one-centre-out."""
    rank = {"nested_cv": 0, "external": 1, "loco": 2}
    return sorted(set(values), key=lambda v: (rank.get(v.split(":")[0], 3), v))


def evaluation_label(evaluation: str) -> str:
    """`external:C4` -> `External C4`, `loco:C1` -> `Leave out C1`, `nested_cv` -> `Nested CV`."""
    kind, _, center = evaluation.partition(":")
    names = {"nested_cv": "Nested CV", "external": "External", "loco": "Leave out"}
    return f"{names.get(kind, kind)} {center}".strip()


def select_evaluations(values: Iterable[str], wanted: Sequence[str] | None) -> list[str]:
    """The evaluations to draw: all, or those whose kind or full name is in `wanted`."""
    ordered = evaluation_order(values)
    if not wanted:
        return ordered
    return [v for v in ordered if v in wanted or v.split(":")[0] in wanted]


def model_label(model: str, feature_set: str) -> str:
    return f"{model} · {feature_set}"


def ranked_models(
    metrics: pd.DataFrame | None,
    endpoint: str,
    evaluation: str,
    candidates: pd.DataFrame,
    rank_evaluation: str = "nested_cv",
) -> list[tuple[str, str]]:
    """(model, feature_set) pairs of `candidates`, best first by the endpoint's rank metric
    (AUC or C-index) in `rank_evaluation`, else in `evaluation` itself.

    Pairs without a metric row keep their table order after the ranked ones; the oracle is
    left out (see :func:`oracle_rows`).
    """
    pairs = list(dict.fromkeys(zip(candidates["model"], candidates["feature_set"], strict=True)))
    pairs = [p for p in pairs if p[0] != ORACLE]
    if metrics is None or metrics.empty:
        return pairs
    rows = metrics[(metrics["endpoint"] == endpoint) & (metrics["metric"] == RANK_METRIC[endpoint])]
    # Rank on the training centres' nested CV when it exists: choosing the curves to show by
    # their test result would flatter the external panels.
    ranking = rank_evaluation if (rows["evaluation"] == rank_evaluation).any() else evaluation
    rows = rows[rows["evaluation"] == ranking]
    score = {
        (m, f): v for m, f, v in zip(rows["model"], rows["feature_set"], rows["value"], strict=True)
    }
    return sorted(pairs, key=lambda p: -score[p] if pd.notna(score.get(p)) else math.inf)


def metric_row(
    metrics: pd.DataFrame | None,
    endpoint: str,
    model: str,
    feature_set: str,
    evaluation: str,
    metric: str,
) -> pd.Series | None:
    """The metrics.tsv row of one model, or None."""
    if metrics is None or metrics.empty:
        return None
    rows = metrics[
        (metrics["endpoint"] == endpoint)
        & (metrics["model"] == model)
        & (metrics["feature_set"] == feature_set)
        & (metrics["evaluation"] == evaluation)
        & (metrics["metric"] == metric)
    ]
    return None if rows.empty else rows.iloc[0]


def with_ci(row: pd.Series | None, name: str) -> str:
    """`AUC 0.81 (0.72–0.90)` from a metrics row; empty when there is none."""
    if row is None or pd.isna(row["value"]):
        return ""
    text = f"{name} {row['value']:.2f}"
    if pd.notna(row.get("ci_low")) and pd.notna(row.get("ci_high")):
        text += f" ({row['ci_low']:.2f}–{row['ci_high']:.2f})"
    return text


def grid_shape(n: int, max_cols: int = 3) -> tuple[int, int]:
    """(rows, cols) for n panels."""
    cols = max(1, min(n, max_cols))
    return math.ceil(max(n, 1) / cols), cols


def ranked_endpoints(metrics: pd.DataFrame) -> list[tuple[str, str]]:
    """(endpoint, ranking metric) pairs of `RANK_METRIC` that `metrics` has rows for: one panel
    each in the per-endpoint summary figures."""
    return [
        (e, m)
        for e, m in RANK_METRIC.items()
        if ((metrics["endpoint"] == e) & (metrics["metric"] == m)).any()
    ]


def panel_grid(
    style: Style,
    panels: Sequence[T],
    panel_aspect: float,
    empty: str,
    max_cols: int | None = None,
    fill_width: bool = False,
    **kwargs: Any,
) -> tuple[Figure, list[tuple[Axes, T]]]:
    """A figure with one panel per item of `panels`, in rows of at most `max_cols`
    (default: what stays legible at the style's width), each panel `panel_aspect` (height /
    width, decorations included) high. Returns the figure and (axes, panel) pairs; spare
    cells of the last row are hidden, and with no panels at all the one panel says `empty`.

    Why one helper: every multi-panel figure needs the same grid arithmetic, and a grid of
    fewer columns than fit is not stretched to page width unless `fill_width` (a panel keeps
    the size it has in a full row). Call inside :meth:`Style.context`; `kwargs` go to
    :func:`~deltarad.figures.style.subplots`.
    """
    max_cols = style.max_cols if max_cols is None else max_cols
    nrows, ncols = grid_shape(len(panels), max_cols)
    # A lone panel still gets half the width (one journal column at page width): a third of a
    # page is too small for a curve with its axis labels.
    width_fraction = 1.0 if fill_width else max(ncols / max_cols, 0.5)
    fig, axes = subplots(
        style,
        aspect=panel_aspect * nrows / ncols,
        nrows=nrows,
        ncols=ncols,
        width_fraction=width_fraction,
        **kwargs,
    )
    flat = list(axes.ravel())
    if not panels:
        empty_panel(flat[0], empty)
    for ax in flat[max(len(panels), 1) :]:
        ax.set_visible(False)
    return fig, list(zip(flat, panels, strict=False))


def short_feature(name: str, max_len: int = 56) -> str:
    """A readable feature label: `delta__CT__ring3to6mm__pyrad__original_glcm_Contrast` ->
    `delta · CT · ring3to6mm · glcm_Contrast`."""
    parts = [p for p in name.split("__") if p not in ("pyrad",)]
    parts = [p.removeprefix("original_") for p in parts]
    # pyradiomics' filter prefixes: log-sigma-1-0-mm-3D_ -> LoG1.0_
    parts = [re.sub(r"log-sigma-(\d+)-(\d+)-mm-3D_", r"LoG\1.\2_", p) for p in parts]
    text = " · ".join(parts)
    if len(text) <= max_len:
        return text
    # Keep `timepoint · channel · region`, cut the front of the feature name: both ends are
    # needed to tell features apart (`baseline · CT · tumor · …_glszm_ZoneEntropy`).
    head = " · ".join(parts[:3]) + " · " if len(parts) > 3 else ""
    room = max_len - len(head) - 1
    if head and room >= 12:
        return head + "…" + parts[-1][-room:]
    return "…" + text[-(max_len - 1) :]


def wrap_label(text: str, max_chars: int, max_lines: int = 3) -> str:
    """`text` on lines of at most `max_chars`, broken after ` · `, `_` or `-` (feature names
    have no spaces); what does not fit in `max_lines` is cut with `…` at the front of the
    last line (the end of a feature name is its most specific part)."""
    tokens = re.findall(r".+?(?: · |[_-]|$)", text)
    lines: list[str] = []
    for token in tokens:
        if lines and len(lines[-1]) + len(token.rstrip()) <= max_chars:
            lines[-1] += token
        else:
            lines.append(token)
    lines = [line.rstrip(" ·") if line.endswith(" · ") else line for line in lines]
    if len(lines) > max_lines:
        rest = "".join(lines[max_lines - 1 :])
        lines = [*lines[: max_lines - 1], "…" + rest[-(max_chars - 1) :]]
    return "\n".join(
        line if len(line) <= max_chars else "…" + line[-(max_chars - 1) :] for line in lines
    )


def oracle_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The pre-treatment oracle's rows of a predictions or td_auc table (empty outside the
    synthetic cohort); the follow-up oracle (feature set ``oracle:followup``) is left out."""
    rows = df[df["model"] == ORACLE]
    return rows[rows["feature_set"] == ORACLE]
