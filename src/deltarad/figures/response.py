"""Response (binary endpoint) figures: ROC curves, calibration and decision curves.

All three read `tables/predictions.tsv` (rows with endpoint `response`) and draw one panel per
evaluation (nested CV, each external centre, each left-out centre), with the best models of
that evaluation (ranked by AUC in `tables/metrics.tsv`) as lines.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.lines import Line2D
from sklearn.metrics import roc_curve

from deltarad.figures import common
from deltarad.figures.style import Style, empty_panel, legend_below, save, shared_legend
from deltarad.model.evaluate import METRIC_COLUMNS
from deltarad.model.run import PREDICTION_COLUMNS


def read_predictions(path: str | Path) -> pd.DataFrame:
    return common.read_table(
        path, PREDICTION_COLUMNS, numeric=("score", "response", "time", "event", "threshold")
    )


def read_metrics(path: str | Path) -> pd.DataFrame:
    return common.read_table(path, METRIC_COLUMNS, numeric=("value", "ci_low", "ci_high", "n"))


def _response_rows(predictions: pd.DataFrame) -> pd.DataFrame:
    df = predictions[predictions["endpoint"] == "response"]
    return df.dropna(subset=["score", "response"])


def _panels(
    predictions: pd.DataFrame, evaluations: Sequence[str] | None
) -> list[tuple[str, pd.DataFrame]]:
    rows = _response_rows(predictions)
    chosen = common.select_evaluations(rows["evaluation"], evaluations)
    return [(ev, rows[rows["evaluation"] == ev]) for ev in chosen]


def model_colors(
    chosen: Sequence[Sequence[tuple[str, str]]], style: Style
) -> dict[tuple[str, str], str]:
    """One colour per (model, feature set) over all panels, in order of first appearance:
    a model keeps its colour in every panel, so one shared legend names them all."""
    pairs = dict.fromkeys(pair for panel in chosen for pair in panel)
    return {pair: style.color(i) for i, pair in enumerate(pairs)}


def model_handles(colors: dict[tuple[str, str], str], *extra: Line2D) -> list[Line2D]:
    """Legend lines: each model in its colour, then the reference lines."""
    lines = [Line2D([], [], color=c, label=common.model_label(*p)) for p, c in colors.items()]
    return [*lines, *extra]


ORACLE_STYLE = {"color": "0.45", "lw": 0.9, "ls": ":"}
DIAGONAL_STYLE = {"color": "0.6", "lw": 0.8, "ls": "--"}


def roc_figure(
    predictions: pd.DataFrame,
    metrics: pd.DataFrame | None,
    style: Style,
    out_png: str | Path,
    out_pdf: str | Path,
    max_curves: int = 4,
    evaluations: Sequence[str] | None = None,
) -> None:
    """ROC curve per model, one panel per evaluation. The models are named once, above the
    panels; each panel's legend gives their AUC with its 95 % CI from metrics.tsv (the CI
    method is the models stage's, not recomputed here)."""
    panels = _panels(predictions, evaluations)
    chosen = [common.ranked_models(metrics, "response", ev, df)[:max_curves] for ev, df in panels]
    colors = model_colors(chosen, style)
    with style.context():
        fig, grid = common.panel_grid(style, panels, 1.08, "no response predictions")
        for (ax, (evaluation, df)), pairs in zip(grid, chosen, strict=True):
            for model, fset in pairs:
                sub = df[(df["model"] == model) & (df["feature_set"] == fset)]
                auc = common.with_ci(
                    common.metric_row(metrics, "response", model, fset, evaluation, "auc"), "AUC"
                )
                if sub["response"].nunique() < 2:
                    empty_panel(ax, "one response class only:\nno ROC curve")
                    break
                fpr, tpr, _ = roc_curve(sub["response"].astype(int), sub["score"])
                ax.plot(fpr, tpr, color=colors[(model, fset)], label=auc or "_nolegend_")
            oracle = common.oracle_rows(df)
            if oracle["response"].nunique() == 2:
                fpr, tpr, _ = roc_curve(oracle["response"].astype(int), oracle["score"])
                auc = common.with_ci(
                    common.metric_row(
                        metrics, "response", common.ORACLE, common.ORACLE, evaluation, "auc"
                    ),
                    "AUC",
                )
                ax.plot(fpr, tpr, **ORACLE_STYLE, label=auc or "_nolegend_")
            ax.plot([0, 1], [0, 1], **DIAGONAL_STYLE)
            n = df["patient_id"].nunique()
            ax.set_title(f"{common.evaluation_label(evaluation)} (n = {n})")
            ax.set_xlabel("1 − specificity")
            ax.set_ylabel("Sensitivity")
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1.01)
            ax.set_aspect("equal")
            if ax.get_legend_handles_labels()[0]:
                legend_below(ax, style)
        shared_legend(
            fig,
            model_handles(
                colors,
                Line2D([], [], **ORACLE_STYLE, label="oracle (true latent)"),
                Line2D([], [], **DIAGONAL_STYLE, label="chance"),
            )
            if panels
            else [],
            style,
        )
        save(fig, style, out_png, out_pdf)


def calibration_bins(y: np.ndarray, p: np.ndarray, n_bins: int) -> pd.DataFrame:
    """Mean predicted vs observed rate in quantile bins of the prediction (equal counts, so
    every point rests on about the same number of patients)."""
    order = np.argsort(p, kind="stable")
    groups = np.array_split(order, min(n_bins, len(p)))
    return pd.DataFrame(
        {
            "predicted": [p[g].mean() for g in groups],
            "observed": [y[g].mean() for g in groups],
            "n": [len(g) for g in groups],
        }
    )


def _probability_models(
    metrics: pd.DataFrame | None, evaluation: str, df: pd.DataFrame, max_curves: int
) -> list[tuple[str, str]]:
    """The best `max_curves` models whose scores are probabilities (within [0, 1]): the
    calibration and decision curves need them; other scores are left out."""
    pairs = []
    for model, fset in common.ranked_models(metrics, "response", evaluation, df):
        p = df.loc[(df["model"] == model) & (df["feature_set"] == fset), "score"]
        if p.min() >= 0 and p.max() <= 1:
            pairs.append((model, fset))
        if len(pairs) == max_curves:
            break
    return pairs


def calibration_figure(
    predictions: pd.DataFrame,
    metrics: pd.DataFrame | None,
    style: Style,
    out_png: str | Path,
    out_pdf: str | Path,
    max_curves: int = 3,
    n_bins: int = 5,
    evaluations: Sequence[str] | None = None,
) -> None:
    """Observed response rate against predicted probability per quantile bin; scores outside
    [0, 1] (not probabilities) are left out. Models named above the panels, each panel's
    legend gives their Brier score with its CI."""
    panels = _panels(predictions, evaluations)
    chosen = [_probability_models(metrics, ev, df, max_curves) for ev, df in panels]
    colors = model_colors(chosen, style)
    with style.context():
        fig, grid = common.panel_grid(style, panels, 1.08, "no response predictions")
        for (ax, (evaluation, df)), pairs in zip(grid, chosen, strict=True):
            for model, fset in pairs:
                sub = df[(df["model"] == model) & (df["feature_set"] == fset)]
                p = sub["score"].to_numpy(float)
                bins = calibration_bins(sub["response"].to_numpy(float), p, n_bins)
                brier = common.with_ci(
                    common.metric_row(metrics, "response", model, fset, evaluation, "brier"),
                    "Brier",
                )
                ax.plot(
                    bins["predicted"],
                    bins["observed"],
                    marker="o",
                    ms=3,
                    color=colors[(model, fset)],
                    label=brier or "_nolegend_",
                )
            if not pairs:
                empty_panel(ax, "no probability scores\n(all outside [0, 1])")
                continue
            ax.plot([0, 1], [0, 1], **DIAGONAL_STYLE)
            ax.set_title(common.evaluation_label(evaluation))
            ax.set_xlabel("Predicted probability")
            ax.set_ylabel("Observed response rate")
            ax.set_xlim(0, 1)
            ax.set_ylim(-0.02, 1.02)
            ax.set_aspect("equal")
            if ax.get_legend_handles_labels()[0]:
                legend_below(ax, style)
        handles = model_handles(colors, Line2D([], [], **DIAGONAL_STYLE, label="perfect"))
        shared_legend(fig, handles if panels else [], style)
        save(fig, style, out_png, out_pdf)


def net_benefit(y: np.ndarray, p: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Net benefit of treating patients with p >= t (Vickers & Elkin 2006):
    TP/n − FP/n · t / (1 − t)."""
    n = len(y)
    out = np.empty(len(thresholds))
    for i, t in enumerate(thresholds):
        treat = p >= t
        tp = np.sum(treat & (y == 1))
        fp = np.sum(treat & (y == 0))
        out[i] = tp / n - fp / n * t / (1 - t)
    return out


def decision_curve_figure(
    predictions: pd.DataFrame,
    metrics: pd.DataFrame | None,
    style: Style,
    out_png: str | Path,
    out_pdf: str | Path,
    max_curves: int = 3,
    evaluations: Sequence[str] | None = None,
) -> None:
    """Net benefit over threshold probabilities for the best models, treat-all and
    treat-none, one legend above the panels."""
    panels = _panels(predictions, evaluations)
    chosen = [_probability_models(metrics, ev, df, max_curves) for ev, df in panels]
    colors = model_colors(chosen, style)
    thresholds = np.linspace(0.01, 0.99, 99)
    with style.context():
        fig, grid = common.panel_grid(style, panels, 0.9, "no response predictions")
        for (ax, (evaluation, df)), pairs in zip(grid, chosen, strict=True):
            prevalence = None
            for model, fset in pairs:
                sub = df[(df["model"] == model) & (df["feature_set"] == fset)]
                y, p = sub["response"].to_numpy(float), sub["score"].to_numpy(float)
                prevalence = y.mean()
                ax.plot(thresholds, net_benefit(y, p, thresholds), color=colors[(model, fset)])
            if prevalence is None:
                empty_panel(ax, "no probability scores\n(all outside [0, 1])")
                continue
            treat_all = prevalence - (1 - prevalence) * thresholds / (1 - thresholds)
            ax.plot(thresholds, treat_all, **ORACLE_STYLE)
            ax.set_ylim(min(-0.05, -0.1 * prevalence), max(prevalence, 0.05) * 1.1)
            ax.axhline(0, color="0.2", lw=0.8)
            ax.set_title(common.evaluation_label(evaluation))
            ax.set_xlabel("Threshold probability")
            ax.set_ylabel("Net benefit")
            ax.set_xlim(0, 1)
        handles = model_handles(
            colors,
            Line2D([], [], **ORACLE_STYLE, label="treat all"),
            Line2D([], [], color="0.2", lw=0.8, label="treat none"),
        )
        shared_legend(fig, handles if panels else [], style)
        save(fig, style, out_png, out_pdf)
