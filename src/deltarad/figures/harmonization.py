"""Harmonisation before/after: per-centre feature distributions and a 2-D embedding."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from deltarad.figures import common
from deltarad.figures.style import Style, empty_panel, save

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
    ncols = max(2, len(features))
    with style.context():
        fig = plt.figure(figsize=style.size(0.62), layout="constrained")
        top, bottom = fig.subfigures(2, 1, height_ratios=[1.15, 1])
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
        emb_axes[1].legend(
            title="Centre", loc="center left", bbox_to_anchor=(1.0, 0.5), markerscale=1.5
        )
        feat_axes = np.atleast_1d(bottom.subplots(1, ncols))
        if not features:
            empty_panel(feat_axes[0], "no harmonisation check rows")
        x = np.arange(len(STAGES))
        width = 0.8 / max(len(centers), 1)
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
            ax.set_title(common.short_feature(feature, 34), fontsize=style.font_size - 1)
            ax.set_ylabel("Mean ± SD")
        for ax in feat_axes[max(len(features), 1) :]:
            ax.set_visible(False)
        save(fig, style, out_png, out_pdf)
