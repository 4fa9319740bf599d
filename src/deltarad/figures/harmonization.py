"""Harmonisation before/after: per-centre feature distributions and a 2-D embedding."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from deltarad.figures import common
from deltarad.figures.style import MM_PER_INCH, Style, empty_panel, save

CHECK_COLUMNS = ["feature", "center", "stage", "mean", "sd"]
EMBEDDING_COLUMNS = ["patient_id", "center", "stage", "pc1", "pc2"]
STAGES = ("before", "after")


def read_check(path: str | Path) -> pd.DataFrame:
    return common.read_table(path, CHECK_COLUMNS, numeric=("mean", "sd"))


def read_embedding(path: str | Path) -> pd.DataFrame:
    return common.read_table(path, EMBEDDING_COLUMNS, numeric=("pc1", "pc2"))


def centre_spread(check: pd.DataFrame) -> pd.Series:
    """Per feature, the range of centre means before harmonisation over the mean within-centre
    SD: the features where the centre effect was largest, worth showing."""
    before = check[check["stage"] == "before"]
    grouped = before.groupby("feature")
    spread = grouped["mean"].max() - grouped["mean"].min()
    return (spread / grouped["sd"].mean().replace(0, np.nan)).sort_values(ascending=False)


def harmonization_figure(
    check: pd.DataFrame,
    embedding: pd.DataFrame,
    style: Style,
    out_png: str | Path,
    out_pdf: str | Path,
    n_features: int = 3,
) -> None:
    """Top row: the patients' first two principal components before and after harmonisation,
    coloured by centre. Bottom row: mean ± SD per centre before and after for the features
    with the largest centre effect."""
    centers = sorted(set(check["center"]) | set(embedding["center"]))
    color = {c: style.color(i) for i, c in enumerate(centers)}
    features = list(centre_spread(check).index[:n_features])
    # Feature panels: as many per row as stay legible at this width (at least 2: they are
    # small), wrapping onto more rows in a single journal column.
    ncols = max(2, min(len(features), max(style.max_cols, 2)))
    nrows = max(1, -(-len(features) // ncols))
    width_mm = style.width_mm
    panel_mm = width_mm / ncols
    # Height from content: the embedding row (two panels + the centre legend above them)
    # and the feature rows, each at least 40 mm so labels of unchanged size still fit.
    top_mm = max(48.0, 0.36 * width_mm) + 6.0
    row_mm = max(40.0, 0.8 * panel_mm)
    with style.context():
        fig = plt.figure(
            figsize=(style.width_in, (top_mm + nrows * row_mm) / MM_PER_INCH),
            layout="constrained",
        )
        top, bottom = fig.subfigures(2, 1, height_ratios=[top_mm, nrows * row_mm])
        emb_axes = top.subplots(1, 2, sharex=False)
        for ax, stage in zip(emb_axes, STAGES, strict=True):
            sub = embedding[embedding["stage"] == stage]
            if sub.empty:
                empty_panel(ax, f"no embedding {stage} harmonisation")
                continue
            for c in centers:
                pts = sub[sub["center"] == c]
                ax.scatter(
                    pts["pc1"], pts["pc2"], s=10, color=color[c], label=c, alpha=0.85, linewidths=0
                )
            ax.set_title(f"{stage.capitalize()} harmonisation")
            ax.set_xlabel("PC 1")
            ax.set_ylabel("PC 2")
        # One row of centres above both embeddings (beside them it widened a narrow figure).
        handles, labels = emb_axes[0].get_legend_handles_labels()
        if not handles:
            handles, labels = emb_axes[1].get_legend_handles_labels()
        if handles:
            top.legend(
                handles,
                labels,
                title="Centre",
                loc="outside upper center",
                ncols=len(labels),
                markerscale=1.5,
                columnspacing=1.0,
                handletextpad=0.2,
            )
        feat_axes = bottom.subplots(nrows, ncols, squeeze=False).ravel()
        if not features:
            empty_panel(feat_axes[0], "no harmonisation check rows")
        x = np.arange(len(STAGES))
        width = 0.8 / max(len(centers), 1)
        # Characters per title line: ~0.65 em each at the title's font, over the ~80 % of
        # the panel's width that the axes get (the rest is the y label and ticks).
        title_size = style.font_size - 1
        chars = max(12, int(0.8 * panel_mm / (0.65 * title_size * 25.4 / 72)))
        for ax, feature in zip(feat_axes, features, strict=False):
            rows = check[check["feature"] == feature]
            for j, c in enumerate(centers):
                r = rows[rows["center"] == c].set_index("stage").reindex(list(STAGES))
                ax.errorbar(
                    x + (j - (len(centers) - 1) / 2) * width,
                    r["mean"],
                    yerr=r["sd"],
                    fmt="o",
                    ms=3,
                    color=color[c],
                    capsize=2,
                    lw=0.9,
                )
            ax.set_xticks(x, [s.capitalize() for s in STAGES])
            ax.set_xlim(-0.6, len(STAGES) - 0.4)
            ax.set_title(
                common.wrap_label(common.short_feature(feature, 200), chars), fontsize=title_size
            )
            ax.set_ylabel("Mean ± SD")
        for ax in feat_axes[max(len(features), 1) :]:
            ax.set_visible(False)
        save(fig, style, out_png, out_pdf)
