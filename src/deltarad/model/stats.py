"""Statistics of a score on test patients: AUC with DeLong CI and paired DeLong test, threshold
metrics, calibration, Brier, Harrell's and Uno's C, time-dependent AUC, integrated Brier score,
Kaplan-Meier risk groups (log-rank, hazard ratio), Holm's correction of a family of tests.

Bootstrap CIs are percentile intervals over patient resamples drawn with an explicit seed. They are
vectorised: every statistic here is a (weighted) sum over patients or patient pairs, so a resample
is a vector of multinomial counts and B resamples are one matrix product. Censoring weights (Uno's
C, IBS) are estimated once from the training data and kept fixed across resamples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import norm

ALPHA = 0.05


@dataclass(frozen=True)
class Estimate:
    """A statistic with its 95 % CI (NaN where undefined)."""

    value: float
    low: float = math.nan
    high: float = math.nan


NA = Estimate(math.nan)


# --- resampling ------------------------------------------------------------------------------


def bootstrap_counts(n: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot x n) multinomial counts: how often each patient appears in each resample."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(float)


def percentile_ci(values: np.ndarray, max_undefined: float = 0.5) -> tuple[float, float]:
    """2.5th and 97.5th percentiles; NaN when over ``max_undefined`` of resamples are undefined."""
    values = np.asarray(values, float)
    if values.size == 0 or np.mean(~np.isfinite(values)) > max_undefined:
        return math.nan, math.nan
    lo, hi = np.nanpercentile(values[np.isfinite(values)], [100 * ALPHA / 2, 100 * (1 - ALPHA / 2)])
    return float(lo), float(hi)


def with_bootstrap(value: float, boot: np.ndarray) -> Estimate:
    if not np.isfinite(value):
        return NA
    return Estimate(float(value), *percentile_ci(boot))


# --- AUC and DeLong --------------------------------------------------------------------------


def _placements(y: np.ndarray, score: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """AUC and DeLong's placement values V10 (per positive) and V01 (per negative)."""
    pos, neg = score[y == 1], score[y == 0]
    psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    return float(psi.mean()), psi.mean(axis=1), psi.mean(axis=0)


def two_classes(y: np.ndarray) -> bool:
    y = np.asarray(y)
    return bool((y == 1).any() and (y == 0).any())


def delong_auc(y: np.ndarray, score: np.ndarray) -> Estimate:
    """AUC with the DeLong et al. (1988) 95 % CI (normal, clipped to [0, 1])."""
    y, score = np.asarray(y, int), np.asarray(score, float)
    if not two_classes(y):
        return NA
    auc, v10, v01 = _placements(y, score)
    n1, n0 = len(v10), len(v01)
    var = (np.var(v10, ddof=1) / n1 if n1 > 1 else 0.0) + (
        np.var(v01, ddof=1) / n0 if n0 > 1 else 0.0
    )
    half = norm.ppf(1 - ALPHA / 2) * math.sqrt(var)
    return Estimate(auc, max(0.0, auc - half), min(1.0, auc + half))


@dataclass(frozen=True)
class PairedTest:
    auc_a: float
    auc_b: float
    z: float
    p: float


def delong_paired(y: np.ndarray, score_a: np.ndarray, score_b: np.ndarray) -> PairedTest:
    """DeLong's paired test of two AUCs on the same patients (two-sided p)."""
    y = np.asarray(y, int)
    if not two_classes(y) or (y == 1).sum() < 2 or (y == 0).sum() < 2:
        return PairedTest(math.nan, math.nan, math.nan, math.nan)
    a, v10a, v01a = _placements(y, np.asarray(score_a, float))
    b, v10b, v01b = _placements(y, np.asarray(score_b, float))
    s10 = np.cov(np.vstack([v10a, v10b]))
    s01 = np.cov(np.vstack([v01a, v01b]))
    cov = s10 / len(v10a) + s01 / len(v01a)
    var = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    if var <= 1e-15:
        return PairedTest(a, b, math.nan, 1.0 if a == b else math.nan)
    z = (a - b) / math.sqrt(var)
    return PairedTest(a, b, float(z), float(2 * norm.sf(abs(z))))


# --- thresholds ------------------------------------------------------------------------------


def youden_threshold(y: np.ndarray, score: np.ndarray) -> float:
    """Threshold maximising sensitivity + specificity (positive: score >= threshold)."""
    y, score = np.asarray(y, int), np.asarray(score, float)
    if not two_classes(y):
        return math.nan
    cands = np.unique(score)
    pos = score[y == 1][None, :] >= cands[:, None]
    neg = score[y == 0][None, :] < cands[:, None]
    j = pos.mean(axis=1) + neg.mean(axis=1)
    return float(cands[int(np.argmax(j))])


def decision_threshold(rule: str | float, y: np.ndarray, score: np.ndarray) -> float:
    """The training-fixed threshold: ``youden``, ``prevalence`` (the score quantile that calls the
    training prevalence positive) or a number."""
    if isinstance(rule, int | float):
        return float(rule)
    y, score = np.asarray(y, int), np.asarray(score, float)
    if len(y) == 0:
        return math.nan
    if rule == "youden":
        return youden_threshold(y, score)
    if rule == "prevalence":
        return float(np.quantile(score, 1 - y.mean()))
    raise ValueError(f"unknown threshold rule '{rule}'")


def sens_spec(
    y: np.ndarray, score: np.ndarray, threshold: float, counts: np.ndarray
) -> tuple[Estimate, Estimate]:
    """Sensitivity and specificity at a fixed threshold, with bootstrap CIs."""
    y, score = np.asarray(y, int), np.asarray(score, float)
    if not np.isfinite(threshold) or not two_classes(y):
        return NA, NA
    hit = (score >= threshold).astype(float)
    pos, neg = (y == 1).astype(float), (y == 0).astype(float)
    out = []
    for mask, call in ((pos, hit), (neg, 1 - hit)):
        value = float((mask * call).sum() / mask.sum())
        with np.errstate(invalid="ignore", divide="ignore"):
            boot = (counts * mask * call).sum(axis=1) / (counts * mask).sum(axis=1)
        out.append(with_bootstrap(value, boot))
    return out[0], out[1]


# --- probabilities: Brier and calibration ----------------------------------------------------


def brier(y: np.ndarray, p: np.ndarray, counts: np.ndarray) -> Estimate:
    y, p = np.asarray(y, float), np.asarray(p, float)
    if len(y) == 0:
        return NA
    se = (p - y) ** 2
    return with_bootstrap(float(se.mean()), (counts @ se) / counts.sum(axis=1))


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, float), 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def _weighted_logistic(
    X: np.ndarray, y: np.ndarray, W: np.ndarray, offset: np.ndarray, iters: int = 50
) -> np.ndarray:
    """Newton-Raphson logistic fits, one per row of weights W (B x n); NaN where not converged."""
    B, k = W.shape[0], X.shape[1]
    beta = np.zeros((B, k))
    done = np.zeros(B, bool)
    for _ in range(iters):
        eta = beta @ X.T + offset
        p = 1 / (1 + np.exp(-np.clip(eta, -30, 30)))
        grad = (W * (y - p)) @ X
        hess = np.einsum("bi,ij,ik->bjk", W * p * (1 - p), X, X) + 1e-10 * np.eye(k)
        try:
            step = np.linalg.solve(hess, grad[..., None])[..., 0]
        except np.linalg.LinAlgError:
            return np.full((B, k), np.nan)
        beta = beta + np.where(done[:, None], 0.0, step)
        done |= np.abs(step).max(axis=1) < 1e-8
        if done.all():
            break
    beta[~done | (np.abs(beta) > 25).any(axis=1)] = np.nan  # separation: slope runs away
    return beta


def calibration(y: np.ndarray, p: np.ndarray, counts: np.ndarray) -> tuple[Estimate, Estimate]:
    """Calibration slope (logistic regression of y on logit p) and calibration-in-the-large
    intercept (logit p as offset, slope fixed at 1), with bootstrap CIs."""
    y = np.asarray(y, float)
    if not two_classes(y):
        return NA, NA
    lp = _logit(p)
    W = np.vstack([np.ones(len(y)), counts])
    slope_fit = _weighted_logistic(np.column_stack([np.ones_like(lp), lp]), y, W, np.zeros(len(y)))
    icpt_fit = _weighted_logistic(np.ones((len(y), 1)), y, W, lp)
    slope = with_bootstrap(slope_fit[0, 1], slope_fit[1:, 1])
    intercept = with_bootstrap(icpt_fit[0, 0], icpt_fit[1:, 0])
    return slope, intercept


# --- survival --------------------------------------------------------------------------------


def surv_array(time: np.ndarray, event: np.ndarray) -> np.ndarray:
    """scikit-survival's structured (event, time) array."""
    out = np.empty(len(time), dtype=[("event", bool), ("time", float)])
    out["event"] = np.asarray(event).astype(bool)
    out["time"] = np.asarray(time, float)
    return out


def censoring_survival(train: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Kaplan-Meier of the censoring distribution from training data, G(t), at ``times``.

    Times beyond the last training time are clipped to it: such patients only enter Uno's C and
    the IBS through pairs / time points inside the training range, where G is defined."""
    from sksurv.nonparametric import CensoringDistributionEstimator

    cens = CensoringDistributionEstimator().fit(train)
    return cens.predict_proba(np.minimum(np.asarray(times, float), train["time"].max()))


def concordance(
    time: np.ndarray,
    event: np.ndarray,
    score: np.ndarray,
    counts: np.ndarray,
    weights: np.ndarray | None = None,
    tau: float | None = None,
    tied_tol: float = 1e-8,
) -> Estimate:
    """Harrell's C (``weights`` None) or Uno's C (``weights`` = 1 / G(T_i)^2, pairs with
    T_i < tau), as scikit-survival computes them, with a bootstrap CI."""
    time, event, score = (np.asarray(a) for a in (time, event, score))
    e = event.astype(bool)
    t = time.astype(float)
    comp = e[:, None] & ((t[:, None] < t[None, :]) | ((t[:, None] == t[None, :]) & ~e[None, :]))
    if tau is not None:
        comp &= (t < tau)[:, None]
    if not comp.any():
        return NA
    d = score[:, None] - score[None, :]
    conc = np.where(np.abs(d) <= tied_tol, 0.5, (d > 0).astype(float))
    w = np.ones(len(t)) if weights is None else np.asarray(weights, float)
    num_m = comp * conc * w[:, None]
    den_m = comp * w[:, None]
    value = float(num_m.sum() / den_m.sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        boot = ((counts @ num_m) * counts).sum(axis=1) / ((counts @ den_m) * counts).sum(axis=1)
    return with_bootstrap(value, boot)


def uno_weights(train: np.ndarray, time: np.ndarray, event: np.ndarray) -> np.ndarray:
    """1 / G(T_i)^2 for events (0 for censored), G from the training data."""
    g = censoring_survival(train, time)
    with np.errstate(divide="ignore"):
        w = np.where(np.asarray(event).astype(bool), 1.0 / np.square(g), 0.0)
    return np.where(np.isfinite(w), w, 0.0)


def ibs(
    train: np.ndarray,
    time: np.ndarray,
    event: np.ndarray,
    surv: np.ndarray,
    times: np.ndarray,
    counts: np.ndarray,
) -> Estimate:
    """Integrated Brier score (IPCW, Graf et al. 1999) over ``times``, as scikit-survival's
    ``integrated_brier_score``; ``surv`` is (patients x times) survival probabilities."""
    if len(times) < 2:
        return NA
    t, e = np.asarray(time, float), np.asarray(event).astype(bool)
    g_t = censoring_survival(train, times)
    g_y = censoring_survival(train, t)
    g_t = np.where(g_t == 0, np.inf, g_t)
    g_y = np.where(g_y == 0, np.inf, g_y)
    case = (t[:, None] <= times[None, :]) & e[:, None]
    control = t[:, None] > times[None, :]
    contrib = surv**2 * case / g_y[:, None] + (1 - surv) ** 2 * control / g_t[None, :]
    per_patient = np.trapezoid(contrib, times, axis=1) / (times[-1] - times[0])
    boot = (counts @ per_patient) / counts.sum(axis=1)
    return with_bootstrap(float(per_patient.mean()), boot)


def logrank_hr(time: np.ndarray, event: np.ndarray, high: np.ndarray) -> tuple[float, Estimate]:
    """Log-rank p of high vs low risk group and the Cox hazard ratio (high vs low, Wald CI)."""
    high = np.asarray(high).astype(bool)
    t, e = np.asarray(time, float), np.asarray(event).astype(bool)
    if high.all() or (~high).all() or not e.any():
        return math.nan, NA
    from lifelines import CoxPHFitter
    from lifelines.statistics import logrank_test

    p = float(logrank_test(t[high], t[~high], e[high], e[~high]).p_value)
    import pandas as pd

    frame = pd.DataFrame({"time": t, "event": e.astype(int), "high": high.astype(float)})
    try:
        cph = CoxPHFitter().fit(frame, "time", "event")
    except Exception:  # lifelines raises its own convergence errors on separation
        return p, NA
    row = cph.summary.loc["high"]
    hr = Estimate(
        float(row["exp(coef)"]),
        float(row["exp(coef) lower 95%"]),
        float(row["exp(coef) upper 95%"]),
    )
    if not all(np.isfinite([hr.value, hr.low, hr.high])) or hr.high > 1e6:
        return p, NA
    return p, hr


def auto_times(
    time: np.ndarray, event: np.ndarray, train_time: np.ndarray, quantiles: list[float]
) -> np.ndarray:
    """Evaluation times: quantiles of the test event times, inside the test follow-up and the
    training range (where the censoring weights are defined)."""
    t, e = np.asarray(time, float), np.asarray(event).astype(bool)
    if e.sum() < 2:
        return np.array([])
    lo, hi = t.min(), min(t.max(), np.max(train_time))
    times = np.unique(np.quantile(t[e], quantiles))
    return times[(times >= lo) & (times < hi)]


def weighted_times(train: np.ndarray, times: np.ndarray) -> np.ndarray:
    """The times at which the training censoring survival G is still positive (IPCW weights
    are defined there; G drops to 0 after a last training time that was censored)."""
    times = np.asarray(times, float)
    if not len(times):
        return times
    return times[censoring_survival(train, times) > 0]


def _km_at(time: np.ndarray, event: np.ndarray, W: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Kaplan-Meier S(t) at ``times`` for each row of patient weights W (B x n): one product-limit
    estimate per bootstrap resample, vectorised (W = ones gives the ordinary estimate)."""
    u = np.unique(time[event])
    if not len(u):
        return np.ones((W.shape[0], len(times)))
    deaths = W @ (event[:, None] & (time[:, None] == u[None, :])).astype(float)
    at_risk = W @ (time[:, None] >= u[None, :]).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        factor = np.where(at_risk > 0, 1.0 - deaths / at_risk, 1.0)
    cum = np.cumprod(factor, axis=1)
    idx = np.searchsorted(u, np.asarray(times, float), side="right") - 1
    return np.where(idx >= 0, cum[:, np.maximum(idx, 0)], 1.0)


def _td_auc_weighted(
    train: np.ndarray,
    time: np.ndarray,
    event: np.ndarray,
    score: np.ndarray,
    times: np.ndarray,
    W: np.ndarray,
    tied_tol: float,
) -> tuple[np.ndarray, np.ndarray]:
    """(B x K) cumulative/dynamic AUCs and (B) their KM-weighted means for patient weights W."""
    t, e = np.asarray(time, float), np.asarray(event).astype(bool)
    s = np.asarray(score, float)
    with np.errstate(divide="ignore"):
        w = np.where(e, 1.0 / censoring_survival(train, t), 0.0)
    w = np.where(np.isfinite(w), w, 0.0)  # G = 0 only after every evaluation time
    d = s[:, None] - s[None, :]
    conc = np.where(np.abs(d) <= tied_tol, 0.5, (d > 0).astype(float))
    aucs = np.full((W.shape[0], len(times)), np.nan)
    for k, tk in enumerate(times):
        case = ((t <= tk) & e) * w
        control = (t > tk).astype(float)
        num = (((W * case) @ conc) * (W * control)).sum(axis=1)
        den = (W @ case) * (W @ control)
        with np.errstate(invalid="ignore", divide="ignore"):
            aucs[:, k] = np.where(den > 0, num / den, np.nan)
    if len(times) == 1:
        return aucs, aucs[:, 0].copy()
    surv = _km_at(t, e, W, np.asarray(times, float))
    dS = -np.diff(np.column_stack([np.ones(len(W)), surv]), axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = (aucs * dS).sum(axis=1) / (1.0 - surv[:, -1])
    mean[~np.all(np.isfinite(aucs), axis=1) | (surv[:, -1] >= 1.0)] = np.nan
    return aucs, mean


def td_auc(
    train: np.ndarray,
    time: np.ndarray,
    event: np.ndarray,
    score: np.ndarray,
    times: np.ndarray,
    tied_tol: float = 1e-8,
) -> tuple[np.ndarray, float]:
    """Cumulative/dynamic AUC at ``times`` (Uno et al. 2007; cases T <= t with an event,
    weighted 1 / G(T); controls T > t) and its mean weighted by the test Kaplan-Meier, as
    scikit-survival's ``cumulative_dynamic_auc``. Written as weighted pair sums so that a test
    patient followed beyond the training data (where the censoring curve is undefined) does
    not make every time point fail; such patients only ever act as controls here."""
    ones = np.ones((1, len(np.asarray(time))))
    aucs, mean = _td_auc_weighted(train, time, event, score, times, ones, tied_tol)
    return aucs[0], float(mean[0])


def td_auc_ci(
    train: np.ndarray,
    time: np.ndarray,
    event: np.ndarray,
    score: np.ndarray,
    times: np.ndarray,
    counts: np.ndarray,
    tied_tol: float = 1e-8,
) -> tuple[list[Estimate], Estimate]:
    """:func:`td_auc` with percentile bootstrap CIs over test-patient resamples (``counts``).

    Each resample recomputes the pair sums and the test Kaplan-Meier weights of the mean; the
    evaluation times and the training censoring weights G stay fixed (as for Uno's C and the
    IBS), so the CI reflects the test patients' sampling variability only."""
    n = len(np.asarray(time))
    W = np.vstack([np.ones(n), counts])
    aucs, mean = _td_auc_weighted(train, time, event, score, times, W, tied_tol)
    per_time = [with_bootstrap(aucs[0, k], aucs[1:, k]) for k in range(len(times))]
    return per_time, with_bootstrap(mean[0], mean[1:])


def holm(p: np.ndarray) -> np.ndarray:
    """Holm (1979) step-down adjusted p-values for one family of tests; NaN p-values (tests
    that could not be computed) are not members of the family and stay NaN."""
    p = np.asarray(p, float)
    out = np.full(p.shape, np.nan)
    ok = np.nonzero(np.isfinite(p))[0]
    m = len(ok)
    if not m:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    adjusted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out[order] = adjusted
    return out
