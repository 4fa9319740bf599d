"""Model summaries: top coefficients, AUC / C-index per feature set, multi-task vs single-task."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from deltarad.figures import common
from deltarad.figures.style import Style, empty_panel, legend_on_top, save

COEFFICIENT_COLUMNS = ["endpoint", "model", "feature_set", "feature", "coefficient"]
METRIC_NAMES = {"auc": "AUC", "c_index": "C-index"}
# The segmentation presets of the multi-task comparison, multi-task first.
NETWORK_METHODS = ("rpnet", "mtms", "multidl", "seg_only", "outcome_only")
SINGLE_TASK = ("seg_only", "outcome_only")


def read_coefficients(path: str | Path) -> pd.DataFrame:
    return common.read_table(path, COEFFICIENT_COLUMNS, numeric=("coefficient",))


def coefficients_figure(
    coefficients: pd.DataFrame,
    metrics: pd.DataFrame | None,
    style: Style,
    out_png: str | Path,
    out_pdf: str | Path,
    max_features: int = 15,
) -> None:
    """The largest |coefficients| of the best model per endpoint (ranked in nested CV), bars
    coloured by sign: which features drive the prediction and in which direction. Models
    without coefficients (forests, boosting) show their `importance` column instead."""
    df = coefficients.copy()
    df["value"] = df["coefficient"]
    if "importance" in df:
        df["value"] = df["value"].fillna(pd.to_numeric(df["importance"], errors="coerce"))
    df = df.dropna(subset=["value"])
    # One value per feature (a table may repeat a feature, e.g. per fold): the mean.
    if "importance_kind" not in df:
        df["importance_kind"] = np.where(df["coefficient"].isna(), "impurity", "")
    df["importance_kind"] = df["importance_kind"].fillna("")
    df = df.groupby(["endpoint", "model", "feature_set", "feature"], as_index=False, sort=False)
    df = df.agg(
        value=("value", "mean"),
        coefficient=("coefficient", "mean"),
        importance_kind=("importance_kind", "first"),
    )
    endpoints = [e for e in ("response", "survival") if (df["endpoint"] == e).any()]
    with style.context():
        fig, grid = common.panel_grid(
            style,
            endpoints,
            (0.10 + 0.030 * max_features) * 2,
            "no model coefficients",
            max_cols=min(style.max_cols, 2),
            fill_width=True,
        )
        for ax, endpoint in grid:
            sub = df[df["endpoint"] == endpoint]
            model, fset = common.ranked_models(metrics, endpoint, "nested_cv", sub)[0]
            sub = sub[(sub["model"] == model) & (sub["feature_set"] == fset)]
            # A zero coefficient is a feature the penalised model left out: not a top feature.
            sub = sub[sub["value"] != 0]
            sub = sub.loc[sub["value"].abs().nlargest(max_features).index]
            if sub.empty:
                empty_panel(ax, f"{common.model_label(model, fset)}:\nall coefficients zero")
                continue
            sub = sub.iloc[::-1]
            colors = [style.color(0) if c > 0 else style.color(1) for c in sub["value"]]
            y = np.arange(len(sub))
            ax.barh(y, sub["value"], color=colors, height=0.7)
            # Two lines (timepoint · region, then the feature): whole names, narrow margin.
            labels = [
                common.wrap_label(common.short_feature(f, 200), 34, 2) for f in sub["feature"]
            ]
            ax.set_yticks(y, labels)
            ax.axvline(0, color="0.3", lw=0.8)
            effect = "log-odds" if endpoint == "response" else "log-hazard"
            if sub["coefficient"].notna().all():
                ax.set_xlabel(f"Coefficient ({effect} per SD)")
            elif (sub["importance_kind"] == "permutation").any():
                metric = "AUC" if endpoint == "response" else "Harrell's C"
                ax.set_xlabel(f"Permutation importance (drop in {metric})")
            else:
                ax.set_xlabel("Importance (impurity decrease)")
            ax.set_title(f"{endpoint.capitalize()}: {common.model_label(model, fset)}")
            ax.tick_params(axis="y", length=0)
        save(fig, style, out_png, out_pdf)


def _bars(
    ax: object,
    table: pd.DataFrame,
    categories: Sequence[str],
    evaluations: Sequence[str],
    style: Style,
) -> None:
    """Grouped bars with CI whiskers: one group per category, one bar per evaluation."""
    width = 0.8 / max(len(evaluations), 1)
    x = np.arange(len(categories))
    for j, evaluation in enumerate(evaluations):
        rows = table[table["evaluation"] == evaluation].set_index("category")
        rows = rows.reindex(categories)
        value = rows["value"].to_numpy(float)
        err = np.vstack(
            [
                np.nan_to_num(value - rows["ci_low"].to_numpy(float)),
                np.nan_to_num(rows["ci_high"].to_numpy(float) - value),
            ]
        )
        ax.bar(
            x + (j - (len(evaluations) - 1) / 2) * width,
            value,
            width * 0.92,
            yerr=err,
            capsize=2,
            color=style.color(j),
            label=common.evaluation_label(evaluation),
            error_kw={"lw": 0.8},
        )
    ax.set_xticks(x, categories, rotation=30, ha="right")
    ax.axhline(0.5, color="0.5", lw=0.8, ls="--")
    ax.set_ylim(0.3, 1.0)


def _best_model_per_set(metrics: pd.DataFrame, endpoint: str, metric: str) -> pd.DataFrame:
    """Per feature set, the rows of the model with the best nested-CV value (chosen on
    training data, then shown in every evaluation)."""
    rows = metrics[(metrics["endpoint"] == endpoint) & (metrics["metric"] == metric)]
    cv = rows[rows["evaluation"] == "nested_cv"]
    if cv.empty:
        cv = rows
    # Sets without nested-CV rows (deep features of an outcome-trained encoder: external only)
    # take their best model from the evaluations they have.
    rest = rows[~rows["feature_set"].isin(cv["feature_set"])]
    best = (
        pd.concat([cv, rest]).sort_values("value", ascending=False).drop_duplicates("feature_set")
    )
    keep = set(zip(best["feature_set"], best["model"], strict=True))
    mask = [(f, m) in keep for f, m in zip(rows["feature_set"], rows["model"], strict=True)]
    return rows[mask].assign(category=rows["feature_set"][mask])


def performance_figure(
    metrics: pd.DataFrame,
    style: Style,
    out_png: str | Path,
    out_pdf: str | Path,
    evaluations: Sequence[str] | None = None,
) -> None:
    """AUC (response) and C-index (survival) with 95 % CI per feature set, the best model of
    each set, bars per evaluation."""
    panels = common.ranked_endpoints(metrics)
    with style.context():
        fig, grid = common.panel_grid(
            style,
            panels,
            0.84,
            "no AUC or C-index in metrics.tsv",
            max_cols=min(style.max_cols, 2),
            fill_width=True,
        )
        for ax, (endpoint, metric) in grid:
            table = _best_model_per_set(metrics, endpoint, metric)
            evs = common.select_evaluations(table["evaluation"], evaluations)
            # The oracles (synthetic truth) last, as the reference.
            sets = sorted(
                table["category"].unique(), key=lambda s: (s.startswith(common.ORACLE), s)
            )
            _bars(ax, table, sets, evs, style)
            ax.set_ylabel(METRIC_NAMES[metric])
            ax.set_title(endpoint.capitalize())
        legend_on_top(fig, grid[0][0] if grid else fig.axes[0])
        save(fig, style, out_png, out_pdf)


def multitask_figure(
    metrics: pd.DataFrame,
    style: Style,
    out_png: str | Path,
    out_pdf: str | Path,
    evaluations: Sequence[str] | None = None,
) -> None:
    """The network presets side by side (feature sets `network:<method>`): multi-task methods
    (rpnet, mtms, multidl) against the single-task ablations, AUC and C-index with CI."""
    net = metrics[metrics["feature_set"].str.startswith("network:")]
    net = net.assign(category=net["feature_set"].str.removeprefix("network:"))
    panels = common.ranked_endpoints(net)
    with style.context():
        fig, grid = common.panel_grid(
            style,
            panels,
            0.8,
            "no network:<method> rows in metrics.tsv",
            max_cols=min(style.max_cols, 2),
            fill_width=True,
        )
        for ax, (endpoint, metric) in grid:
            table = net[(net["endpoint"] == endpoint) & (net["metric"] == metric)]
            # One model per method: the network's own head if several models share a set.
            table = table.sort_values("value", ascending=False).drop_duplicates(
                ["category", "evaluation"]
            )
            known = [m for m in NETWORK_METHODS if m in set(table["category"])]
            methods = known + sorted(set(table["category"]) - set(known))
            evs = common.select_evaluations(table["evaluation"], evaluations)
            _bars(ax, table, methods, evs, style)
            n_multi = sum(m not in SINGLE_TASK for m in methods)
            if 0 < n_multi < len(methods):
                ax.axvline(n_multi - 0.5, color="0.3", lw=0.8)
                ax.text(
                    n_multi - 0.55,
                    0.98,
                    "multi-task",
                    ha="right",
                    va="top",
                    transform=ax.get_xaxis_transform(),
                )
                ax.text(
                    n_multi - 0.45,
                    0.98,
                    "single-task",
                    ha="left",
                    va="top",
                    transform=ax.get_xaxis_transform(),
                )
            ax.set_ylabel(METRIC_NAMES[metric])
            ax.set_title(endpoint.capitalize())
        legend_on_top(fig, grid[0][0] if grid else fig.axes[0])
        save(fig, style, out_png, out_pdf)
