"""Metrics of the pooled test predictions of one (endpoint, model, feature set, evaluation).

Nested-CV metrics are computed on the out-of-fold scores of all training-centre patients pooled
over the outer folds (each fold's threshold / cut-off fixed on that fold's training patients).
A statistic that cannot be computed (one class, no events, too few patients) is NA, and the log
says why.
"""

from __future__ import annotations

import itertools
import logging
import math

import numpy as np
import pandas as pd

from deltarad.model import stats

log = logging.getLogger(__name__)
METRIC_COLUMNS = [
    "endpoint",
    "model",
    "feature_set",
    "evaluation",
    "metric",
    "value",
    "ci_low",
    "ci_high",
    "n",
]
# ci_low / ci_high: percentile bootstrap over test patients (models.bootstrap resamples).
TD_AUC_COLUMNS = [
    "endpoint",
    "model",
    "feature_set",
    "evaluation",
    "time",
    "auc",
    "ci_low",
    "ci_high",
]
DELONG_COLUMNS = [
    "endpoint",
    "evaluation",
    "model_a",
    "feature_set_a",
    "model_b",
    "feature_set_b",
    "auc_a",
    "auc_b",
    "auc_diff",
    "z",
    "p",
    "n",
    "p_holm",
]
# Holm's family: every paired test of one endpoint x evaluation (all scorers on the same test
# patients); tests with an undefined p are not counted.
HOLM_FAMILY = ["endpoint", "evaluation"]


def _row(key: tuple, metric: str, est: stats.Estimate, n: int) -> dict:
    endpoint, model, fs, evaluation = key
    return {
        "endpoint": endpoint,
        "model": model,
        "feature_set": fs,
        "evaluation": evaluation,
        "metric": metric,
        "value": est.value,
        "ci_low": est.low,
        "ci_high": est.high,
        "n": n,
    }


def response_metrics(key: tuple, group: pd.DataFrame, n_boot: int, seed: int) -> list[dict]:
    y = group["response"].to_numpy(int)
    score = group["score"].to_numpy(float)
    thr = group["threshold"].to_numpy(float)
    n = len(y)
    counts = stats.bootstrap_counts(n, n_boot, seed)
    if not stats.two_classes(y):
        log.warning(
            "%s: test patients have a single response class (n=%d): AUC, "
            "sensitivity, specificity and calibration are NA",
            "/".join(key),
            n,
        )
    auc = stats.delong_auc(y, score)
    # Per-patient thresholds (nested CV: each fold's own): compare score to its own threshold.
    if np.all(np.isfinite(thr)):
        sens, spec = stats.sens_spec(y, score - thr, 0.0, counts)
    else:
        log.warning("%s: no training threshold; sensitivity/specificity NA", "/".join(key))
        sens = spec = stats.NA
    rows = [
        _row(key, "auc", auc, n),
        _row(key, "sensitivity", sens, n),
        _row(key, "specificity", spec, n),
    ]
    if np.all((score >= 0) & (score <= 1)):
        slope, intercept = stats.calibration(y, score, counts)
        rows += [
            _row(key, "brier", stats.brier(y, score, counts), n),
            _row(key, "calibration_slope", slope, n),
            _row(key, "calibration_intercept", intercept, n),
        ]
    return rows


def survival_metrics(
    key: tuple,
    group: pd.DataFrame,
    train: np.ndarray,
    surv: pd.DataFrame | None,
    n_boot: int,
    seed: int,
    quantiles: tuple[float, ...],
) -> tuple[list[dict], list[dict]]:
    t = group["time"].to_numpy(float)
    e = group["event"].to_numpy(int).astype(bool)
    score = group["score"].to_numpy(float)
    n = len(t)
    name = "/".join(key)
    counts = stats.bootstrap_counts(n, n_boot, seed)
    if not e.any():
        log.warning("%s: no events among the %d test patients: survival metrics NA", name, n)
        return [
            _row(key, m, stats.NA, n)
            for m in ("c_index", "c_index_uno", "td_auc", "ibs", "logrank_p", "hazard_ratio")
        ], []
    harrell = stats.concordance(t, e, score, counts)
    tau = min(float(train["time"].max()), float(t.max()))
    weights = stats.uno_weights(train, t, e)
    uno = stats.concordance(t, e, score, counts, weights=weights, tau=tau)
    td_rows: list[dict] = []
    times = stats.weighted_times(train, stats.auto_times(t, e, train["time"], list(quantiles)))
    td = stats.NA
    if len(times):
        aucs, td = stats.td_auc_ci(train, t, e, score, times, counts)
        td_rows = [
            dict(zip(("endpoint", "model", "feature_set", "evaluation"), key, strict=True))
            | {"time": float(tt), "auc": a.value, "ci_low": a.low, "ci_high": a.high}
            for tt, a in zip(times, aucs, strict=True)
        ]
    else:
        log.warning("%s: fewer than 2 test events inside the follow-up: td_auc NA", name)
    ibs = stats.NA
    missing = [] if surv is None else sorted(set(group["patient_id"]) - set(surv.index))
    if missing:
        log.warning("%s: no survival curves for %d test patient(s): ibs NA", name, len(missing))
    elif surv is not None and surv.shape[1] >= 2:
        S = surv.loc[group["patient_id"]].to_numpy(float)
        ibs = stats.ibs(train, t, e, S, surv.columns.to_numpy(float), counts)
    high = (group["risk_group"] == "high").to_numpy()
    p, hr = stats.logrank_hr(t, e, high)
    if not np.isfinite(p):
        log.warning("%s: one risk group empty or no events: log-rank p and HR NA", name)
    return [
        _row(key, "c_index", harrell, n),
        _row(key, "c_index_uno", uno, n),
        _row(key, "td_auc", td, n),
        _row(key, "ibs", ibs, n),
        _row(key, "logrank_p", stats.Estimate(p), n),
        _row(key, "hazard_ratio", hr, n),
    ], td_rows


def delong_table(predictions: pd.DataFrame) -> pd.DataFrame:
    """Paired DeLong tests between every two response scorers on the same test patients, with
    Holm-adjusted p-values within each :data:`HOLM_FAMILY` (many scorers are compared at once:
    an unadjusted p < 0.05 among hundreds of pairs is expected by chance)."""
    rows = []
    resp = predictions[predictions["endpoint"] == "response"]
    for evaluation, ev in resp.groupby("evaluation", sort=True):
        wide = ev.pivot_table(
            index="patient_id", columns=["model", "feature_set"], values="score", aggfunc="first"
        )
        y = ev.groupby("patient_id")["response"].first().loc[wide.index].to_numpy(int)
        for a, b in itertools.combinations(sorted(wide.columns), 2):
            ok = wide[a].notna() & wide[b].notna()
            if ok.sum() < 4:
                continue
            test = stats.delong_paired(y[ok], wide.loc[ok, a], wide.loc[ok, b])
            rows.append(
                {
                    "endpoint": "response",
                    "evaluation": evaluation,
                    "model_a": a[0],
                    "feature_set_a": a[1],
                    "model_b": b[0],
                    "feature_set_b": b[1],
                    "auc_a": test.auc_a,
                    "auc_b": test.auc_b,
                    "auc_diff": test.auc_a - test.auc_b if math.isfinite(test.auc_a) else math.nan,
                    "z": test.z,
                    "p": test.p,
                    "n": int(ok.sum()),
                }
            )
    table = pd.DataFrame(rows, columns=DELONG_COLUMNS)
    if len(table):
        table["p_holm"] = table.groupby(HOLM_FAMILY, sort=False)["p"].transform(
            lambda p: stats.holm(p.to_numpy(float))
        )
    return table
