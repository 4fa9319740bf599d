"""Survival figures: Kaplan-Meier curves of predicted risk groups, time-dependent AUC and a
forest plot of hazard ratios."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter

from deltarad.figures import common
from deltarad.figures.style import Style, empty_panel, save, shared_legend, subplots

TD_AUC_COLUMNS = ["endpoint", "model", "feature_set", "evaluation", "time", "auc"]
HR_COLUMNS = ["feature_set", "model", "feature", "hr", "ci_low", "ci_high", "p"]
RISK_GROUPS = ("low", "high")


def read_td_auc(path: str | Path) -> pd.DataFrame:
    return common.read_table(path, TD_AUC_COLUMNS, numeric=("time", "auc"))


def read_hazard_ratios(path: str | Path) -> pd.DataFrame:
    return common.read_table(path, HR_COLUMNS, numeric=("hr", "ci_low", "ci_high", "p"))


def _plain(value: float, _pos: int | None = None) -> str:
    """Log-axis tick label as a plain number (0.5, 1, 2), not 5 x 10^-1."""
    return f"{value:g}"


def _plain_minor(value: float, pos: int | None = None) -> str:
    """Label the minor ticks 0.2, 0.5, 2, 5, ... only (enough to read a hazard ratio)."""
    mantissa = round(value / 10 ** np.floor(np.log10(value)), 6)
    return _plain(value) if mantissa in (2.0, 5.0) else ""


def format_p(p: float) -> str:
    """`p = 0.006`, `p < 0.001`."""
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def km_figure(
    predictions: pd.DataFrame,
    metrics: pd.DataFrame | None,
    style: Style,
    out_png: str | Path,
    out_pdf: str | Path,
    evaluations: Sequence[str] | None = None,
    time_unit: str = "days",
) -> None:
    """Kaplan-Meier curves of the predicted high- and low-risk groups (the cut-off was fixed on
    training data by the models stage), log-rank p and numbers at risk, one panel per
    evaluation for the survival model ranked best in nested CV."""
    from lifelines import KaplanMeierFitter
    from lifelines.plotting import add_at_risk_counts
    from lifelines.statistics import logrank_test

    rows = predictions[predictions["endpoint"] == "survival"].dropna(subset=["time", "event"])
    rows = rows[rows["risk_group"].isin(RISK_GROUPS)]
    chosen = common.select_evaluations(rows["evaluation"], evaluations)
    with style.context():
        fig, grid = common.panel_grid(
            style, chosen, 1.26, "no survival predictions with risk groups", layout=None
        )
        for ax, evaluation in grid:
            df = rows[rows["evaluation"] == evaluation]
            model, fset = common.ranked_models(metrics, "survival", evaluation, df)[0]
            df = df[(df["model"] == model) & (df["feature_set"] == fset)]
            fitters = []
            for i, group in enumerate(RISK_GROUPS):
                g = df[df["risk_group"] == group]
                if g.empty:
                    continue
                kmf = KaplanMeierFitter(label=f"{group} risk")
                kmf.fit(g["time"], g["event"].astype(int))
                kmf.plot_survival_function(
                    ax=ax,
                    ci_show=False,
                    show_censors=True,
                    color=style.color(i),
                    censor_styles={"ms": 4, "marker": "|"},
                )
                fitters.append((kmf, g))

            def metric(name: str, ev: str = evaluation, m: str = model, f: str = fset) -> Any:
                return common.metric_row(metrics, "survival", m, f, ev, name)

            text = ""
            # The models stage's log-rank p when it wrote one (the figure then quotes the
            # table), else computed here from the same predictions.
            reported = metric("logrank_p")
            if reported is not None and pd.notna(reported["value"]):
                text = f"log-rank {format_p(float(reported['value']))}"
            elif len(fitters) == 2:
                (_, lo), (_, hi) = fitters
                test = logrank_test(lo["time"], hi["time"], lo["event"], hi["event"])
                text = f"log-rank {format_p(float(test.p_value))}"
            hr = common.with_ci(metric("hazard_ratio"), "HR")
            cidx = common.with_ci(metric("c_index"), "C")
            # Above the panel, not in it: the curves may pass anywhere in the axes.
            # Two lines: one long line overlapped the neighbouring panels' titles.
            head = f"{common.evaluation_label(evaluation)}\n{common.model_label(model, fset)}"
            stats = [", ".join(t for t in (text, hr) if t), cidx]
            ax.set_title("\n".join([head, *[t for t in stats if t]]), fontsize=style.font_size - 1)
            ax.set_xlabel(f"Time ({time_unit})")
            ax.set_ylabel("Survival probability")
            ax.set_ylim(0, 1.02)
            ax.legend(loc="best")  # the curves may run through any corner
            if fitters:
                add_at_risk_counts(
                    *[f for f, _ in fitters], ax=ax, rows_to_show=["At risk"], ypos=-0.5
                )
        fig.tight_layout(h_pad=2.0)
        save(fig, style, out_png, out_pdf)


def td_auc_figure(
    td_auc: pd.DataFrame,
    metrics: pd.DataFrame | None,
    style: Style,
    out_png: str | Path,
    out_pdf: str | Path,
    max_curves: int = 4,
    evaluations: Sequence[str] | None = None,
    time_unit: str = "days",
) -> None:
    """Cumulative/dynamic AUC over follow-up time per model, one panel per evaluation, the
    models named once above the panels (in the same colour in every panel)."""
    from deltarad.figures.response import ORACLE_STYLE, model_colors, model_handles

    rows = td_auc[td_auc["endpoint"] == "survival"].dropna(subset=["time", "auc"])
    chosen = common.select_evaluations(rows["evaluation"], evaluations)
    panels = [(ev, rows[rows["evaluation"] == ev]) for ev in chosen]
    pairs = [common.ranked_models(metrics, "survival", ev, df)[:max_curves] for ev, df in panels]
    colors = model_colors(pairs, style)
    with style.context():
        fig, grid = common.panel_grid(style, chosen, 0.9, "no time-dependent AUC")
        has_oracle = False
        for (ax, evaluation), (_, df), panel_pairs in zip(grid, panels, pairs, strict=True):
            for model, fset in panel_pairs:
                sub = df[(df["model"] == model) & (df["feature_set"] == fset)].sort_values("time")
                ax.plot(sub["time"], sub["auc"], marker="o", ms=2.5, color=colors[(model, fset)])
            oracle = common.oracle_rows(df).sort_values("time")
            if not oracle.empty:
                has_oracle = True
                ax.plot(oracle["time"], oracle["auc"], **ORACLE_STYLE)
            ax.axhline(0.5, color="0.6", lw=0.8, ls="--")
            ax.set_title(common.evaluation_label(evaluation))
            ax.set_xlabel(f"Time ({time_unit})")
            ax.set_ylabel("Time-dependent AUC")
            ax.set_ylim(0.3, 1.0)
        extra = [Line2D([], [], **ORACLE_STYLE, label="oracle (true latent)")] * has_oracle
        shared_legend(fig, model_handles(colors, *extra) if chosen else [], style)
        save(fig, style, out_png, out_pdf)


def forest_figure(
    hazard_ratios: pd.DataFrame,
    style: Style,
    out_png: str | Path,
    out_pdf: str | Path,
    max_features: int = 10,
) -> None:
    """Hazard ratio with 95 % CI per feature (log scale), the `max_features` smallest p of
    each model and feature set, grouped under a heading per model."""
    df = hazard_ratios.dropna(subset=["hr"])
    groups = [
        (key, g.nsmallest(max_features, "p").sort_values("hr"))
        for key, g in df.groupby(["feature_set", "model"], sort=True)
    ]
    n_rows = sum(len(g) + 1 for _, g in groups)
    with style.context():
        fig, axes = subplots(style, aspect=min(0.12 + 0.028 * max(n_rows, 3), 1.4))
        ax = axes[0, 0]
        if not groups:
            empty_panel(ax, "no hazard ratios")
        y, ticks, labels, headings = 0.0, [], [], set()
        for i, ((fset, model), g) in enumerate(groups):
            headings.add(len(ticks))
            ticks.append(y)
            labels.append(f"{model} · {fset}")
            y -= 1
            for row in g.itertuples():
                lo = row.ci_low if pd.notna(row.ci_low) else row.hr
                hi = row.ci_high if pd.notna(row.ci_high) else row.hr
                ax.errorbar(
                    row.hr,
                    y,
                    xerr=[[row.hr - lo], [hi - row.hr]],
                    fmt="s",
                    ms=3.5,
                    color=style.line_color(i),
                    capsize=2,
                    lw=1,
                )
                p = "" if pd.isna(row.p) else f"  {format_p(row.p)}"
                ticks.append(y)
                labels.append(f"{common.short_feature(row.feature)}{p}")
                y -= 1
        ax.axvline(1.0, color="0.5", lw=0.8, ls="--")
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(_plain))
        ax.xaxis.set_minor_formatter(FuncFormatter(_plain_minor))
        ax.set_yticks(ticks, labels)
        for i, tick in enumerate(ax.get_yticklabels()):
            if i in headings:
                tick.set_fontweight("bold")
        ax.set_xlabel("Hazard ratio (95 % CI, log scale)")
        ax.tick_params(axis="y", length=0)
        ax.spines["left"].set_visible(False)
        ax.set_ylim(y + 0.5, 0.5)
        save(fig, style, out_png, out_pdf)
