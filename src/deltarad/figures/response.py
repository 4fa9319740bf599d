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
from sklearn.metrics import roc_curve

from deltarad.figures import common
from deltarad.figures.style import Style, empty_panel, legend_below, save, subplots
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


def roc_figure(
    predictions: pd.DataFrame,
    metrics: pd.DataFrame | None,
    style: Style,
    out_png: str | Path,
    out_pdf: str | Path,
    max_curves: int = 4,
    evaluations: Sequence[str] | None = None,
) -> None:
    """ROC curve per model, one panel per evaluation; the legend gives AUC with its 95 % CI
    from metrics.tsv (the CI method is the models stage's, not recomputed here)."""
    panels = _panels(predictions, evaluations)
    nrows, ncols = common.grid_shape(len(panels), style.max_cols)
    with style.context():
        fig, axes = subplots(
            style,
            aspect=0.36 * nrows * 3 / ncols,
            nrows=nrows,
            ncols=ncols,
            width_fraction=ncols / style.max_cols,
        )
        flat = axes.ravel()
        if not panels:
            empty_panel(flat[0], "no response predictions")
        for ax, (evaluation, df) in zip(flat, panels, strict=False):
            for i, (model, fset) in enumerate(
                common.ranked_models(metrics, "response", evaluation, df)[:max_curves]
            ):
                sub = df[(df["model"] == model) & (df["feature_set"] == fset)]
                label = common.model_label(model, fset)
                auc = common.with_ci(
                    common.metric_row(metrics, "response", model, fset, evaluation, "auc"), "AUC"
                )
                if sub["response"].nunique() < 2:
                    empty_panel(ax, "one response class only:\nno ROC curve")
                    break
                fpr, tpr, _ = roc_curve(sub["response"].astype(int), sub["score"])
                ax.plot(fpr, tpr, color=style.color(i), label=f"{label}: {auc}" if auc else label)
            oracle = common.oracle_rows(df)
            if oracle["response"].nunique() == 2:
                fpr, tpr, _ = roc_curve(oracle["response"].astype(int), oracle["score"])
                auc = common.with_ci(
                    common.metric_row(
                        metrics, "response", common.ORACLE, common.ORACLE, evaluation, "auc"
                    ),
                    "AUC",
                )
                ax.plot(
                    fpr, tpr, color="0.45", lw=0.9, ls=":", label=f"oracle (true latent): {auc}"
                )
            ax.plot([0, 1], [0, 1], color="0.6", lw=0.8, ls="--")
            n = df["patient_id"].nunique()
            ax.set_title(f"{common.evaluation_label(evaluation)} (n = {n})")
            ax.set_xlabel("1 − specificity")
            ax.set_ylabel("Sensitivity")
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1.01)
            ax.set_aspect("equal")
            legend_below(ax, style)
        for ax in flat[len(panels) :]:
            ax.set_visible(False)
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
    [0, 1] (not probabilities) are left out with a note in the panel."""
    panels = _panels(predictions, evaluations)
    nrows, ncols = common.grid_shape(len(panels), style.max_cols)
    with style.context():
        fig, axes = subplots(
            style,
            aspect=0.36 * nrows * 3 / ncols,
            nrows=nrows,
            ncols=ncols,
            width_fraction=ncols / style.max_cols,
        )
        flat = axes.ravel()
        if not panels:
            empty_panel(flat[0], "no response predictions")
        for ax, (evaluation, df) in zip(flat, panels, strict=False):
            drawn = 0
            for model, fset in common.ranked_models(metrics, "response", evaluation, df):
                if drawn == max_curves:
                    break
                sub = df[(df["model"] == model) & (df["feature_set"] == fset)]
                p = sub["score"].to_numpy(float)
                if p.min() < 0 or p.max() > 1:
                    continue
                bins = calibration_bins(sub["response"].to_numpy(float), p, n_bins)
                brier = common.with_ci(
                    common.metric_row(metrics, "response", model, fset, evaluation, "brier"),
                    "Brier",
                )
                label = common.model_label(model, fset) + (f": {brier}" if brier else "")
                ax.plot(
                    bins["predicted"],
                    bins["observed"],
                    marker="o",
                    ms=3,
                    color=style.color(drawn),
                    label=label,
                )
                drawn += 1
            ax.plot([0, 1], [0, 1], color="0.6", lw=0.8, ls="--", label="perfect")
            ax.set_title(common.evaluation_label(evaluation))
            ax.set_xlabel("Predicted probability")
            ax.set_ylabel("Observed response rate")
            ax.set_xlim(0, 1)
            ax.set_ylim(-0.02, 1.02)
            ax.set_aspect("equal")
            legend_below(ax, style)
        for ax in flat[len(panels) :]:
            ax.set_visible(False)
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
    """Net benefit over threshold probabilities for the best models, treat-all and treat-none."""
    panels = _panels(predictions, evaluations)
    nrows, ncols = common.grid_shape(len(panels), style.max_cols)
    thresholds = np.linspace(0.01, 0.99, 99)
    with style.context():
        fig, axes = subplots(
            style,
            aspect=0.30 * nrows * 3 / ncols,
            nrows=nrows,
            ncols=ncols,
            width_fraction=ncols / style.max_cols,
        )
        flat = axes.ravel()
        if not panels:
            empty_panel(flat[0], "no response predictions")
        for ax, (evaluation, df) in zip(flat, panels, strict=False):
            drawn, prevalence = 0, None
            for model, fset in common.ranked_models(metrics, "response", evaluation, df):
                if drawn == max_curves:
                    break
                sub = df[(df["model"] == model) & (df["feature_set"] == fset)]
                y, p = sub["response"].to_numpy(float), sub["score"].to_numpy(float)
                if p.min() < 0 or p.max() > 1:
                    continue
                prevalence = y.mean()
                ax.plot(
                    thresholds,
                    net_benefit(y, p, thresholds),
                    color=style.color(drawn),
                    label=common.model_label(model, fset),
                )
                drawn += 1
            if prevalence is not None:
                treat_all = prevalence - (1 - prevalence) * thresholds / (1 - thresholds)
                ax.plot(thresholds, treat_all, color="0.45", lw=0.9, ls=":", label="treat all")
                ax.set_ylim(min(-0.05, -0.1 * prevalence), max(prevalence, 0.05) * 1.1)
            ax.axhline(0, color="0.2", lw=0.8, label="treat none")
            ax.set_title(common.evaluation_label(evaluation))
            ax.set_xlabel("Threshold probability")
            ax.set_ylabel("Net benefit")
            ax.set_xlim(0, 1)
            legend_below(ax, style)
        for ax in flat[len(panels) :]:
            ax.set_visible(False)
        save(fig, style, out_png, out_pdf)
