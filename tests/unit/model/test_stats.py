"""Statistics equal their reference implementations (sklearn, scikit-survival, lifelines) and an
independent DeLong computation (Sun & Xu 2014 mid-rank algorithm)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import brier_score_loss, roc_auc_score
from sksurv.compare import compare_survival
from sksurv.linear_model import CoxPHSurvivalAnalysis
from sksurv.metrics import (
    concordance_index_censored,
    concordance_index_ipcw,
    cumulative_dynamic_auc,
    integrated_brier_score,
)

from deltarad.model import stats


def _midrank(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    n = len(x)
    ranks = np.zeros(n)
    i = 0
    while i < n:
        j = i
        while j < n and xs[j] == xs[i]:
            j += 1
        ranks[i:j] = 0.5 * (i + j - 1) + 1
        i = j
    out = np.empty(n)
    out[order] = ranks
    return out


def fast_delong(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reference: Sun & Xu (2014) fast DeLong; scores is (k x n). Returns (aucs, covariance)."""
    pos, neg = scores[:, y == 1], scores[:, y == 0]
    m, n = pos.shape[1], neg.shape[1]
    tx = np.array([_midrank(r) for r in pos])
    ty = np.array([_midrank(r) for r in neg])
    tz = np.array([_midrank(r) for r in np.hstack([pos, neg])])
    aucs = tz[:, :m].sum(axis=1) / m / n - (m + 1.0) / 2.0 / n
    v01 = (tz[:, :m] - tx) / n
    v10 = 1.0 - (tz[:, m:] - ty) / m
    return aucs, np.atleast_2d(np.cov(v01)) / m + np.atleast_2d(np.cov(v10)) / n


@pytest.fixture()
def binary():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 80)
    a = np.round(y + rng.normal(0, 1.2, 80), 1)  # rounded: ties
    b = np.round(0.5 * y + rng.normal(0, 1.0, 80), 1)
    return y, a, b


@pytest.fixture()
def surv():
    rng = np.random.default_rng(5)
    n = 70
    risk = rng.normal(size=n)
    t = np.round(rng.exponential(np.exp(-risk)) * 10, 1) + 0.1  # ties in time
    c = rng.uniform(2, 20, n)
    event = t <= c
    time = np.minimum(t, np.round(c, 1))
    score = np.round(risk + rng.normal(0, 1, n), 1)
    return time, event, score


def test_auc_and_delong_ci_match_sklearn_and_fast_delong(binary):
    y, a, _ = binary
    est = stats.delong_auc(y, a)
    assert est.value == pytest.approx(roc_auc_score(y, a))
    aucs, cov = fast_delong(y, a[None, :])
    half = norm.ppf(0.975) * math.sqrt(cov[0, 0])
    assert est.low == pytest.approx(aucs[0] - half)
    assert est.high == pytest.approx(min(1.0, aucs[0] + half))


def test_paired_delong_matches_fast_delong(binary):
    y, a, b = binary
    test = stats.delong_paired(y, a, b)
    aucs, cov = fast_delong(y, np.vstack([a, b]))
    z = (aucs[0] - aucs[1]) / math.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    assert test.auc_a == pytest.approx(aucs[0]) and test.auc_b == pytest.approx(aucs[1])
    assert test.z == pytest.approx(z)
    assert test.p == pytest.approx(2 * norm.sf(abs(z)))


def test_harrell_and_uno_match_scikit_survival(surv):
    time, event, score = surv
    counts = stats.bootstrap_counts(len(time), 200, 0)
    harrell = stats.concordance(time, event, score, counts)
    assert harrell.value == pytest.approx(concordance_index_censored(event, time, score)[0])
    assert harrell.low < harrell.value < harrell.high
    train = stats.surv_array(time, event)
    tau = 12.0
    uno = stats.concordance(
        time, event, score, counts, weights=stats.uno_weights(train, time, event), tau=tau
    )
    ref = concordance_index_ipcw(train, train, score, tau=tau)[0]
    assert uno.value == pytest.approx(ref)


def test_ibs_matches_scikit_survival(surv):
    time, event, score = surv
    y = stats.surv_array(time, event)
    model = CoxPHSurvivalAnalysis().fit(score[:, None], y)
    times = np.quantile(time, np.linspace(0.1, 0.8, 10))
    S = np.vstack([f(times) for f in model.predict_survival_function(score[:, None])])
    ours = stats.ibs(y, time, event, S, times, stats.bootstrap_counts(len(time), 100, 0))
    assert ours.value == pytest.approx(integrated_brier_score(y, y, S, times))
    assert ours.low <= ours.value <= ours.high


def test_brier_and_calibration_match_sklearn(binary):
    y, a, _ = binary
    p = 1 / (1 + np.exp(-(a - 0.5)))
    counts = stats.bootstrap_counts(len(y), 200, 0)
    assert stats.brier(y, p, counts).value == pytest.approx(brier_score_loss(y, p))
    slope, intercept = stats.calibration(y, p, counts)
    lp = np.log(p / (1 - p))
    ref = LogisticRegression(C=np.inf, tol=1e-10, max_iter=1000).fit(lp[:, None], y)
    assert slope.value == pytest.approx(ref.coef_[0, 0], rel=1e-5)
    assert slope.low < slope.value < slope.high
    # Calibration-in-the-large: the intercept a with logit(p) as offset solves mean(y) = mean(p').
    p_adj = 1 / (1 + np.exp(-(lp + intercept.value)))
    assert p_adj.mean() == pytest.approx(y.mean(), abs=1e-8)


def test_logrank_matches_scikit_survival(surv):
    time, event, score = surv
    high = score > np.median(score)
    p, hr = stats.logrank_hr(time, event, high)
    ref = compare_survival(stats.surv_array(time, event), high.astype(int))[1]
    assert p == pytest.approx(ref, rel=1e-6)
    assert hr.low < hr.value < hr.high and hr.value > 1


def test_sens_spec_at_fixed_threshold(binary):
    y, a, _ = binary
    sens, spec = stats.sens_spec(y, a, 0.5, stats.bootstrap_counts(len(y), 100, 0))
    assert sens.value == pytest.approx(np.mean(a[y == 1] >= 0.5))
    assert spec.value == pytest.approx(np.mean(a[y == 0] < 0.5))


def test_permuted_labels_give_cis_covering_half():
    rng = np.random.default_rng(11)
    n = 60
    score = rng.normal(size=n)
    y = rng.permutation(np.r_[np.ones(n // 2, int), np.zeros(n // 2, int)])
    auc = stats.delong_auc(y, score)
    assert auc.low < 0.5 < auc.high
    time = rng.permutation(rng.exponential(10, n))
    event = rng.random(n) < 0.7
    c = stats.concordance(time, event, score, stats.bootstrap_counts(n, 500, 1))
    assert c.low < 0.5 < c.high


def test_undefined_statistics_are_na():
    y = np.ones(5, int)
    assert math.isnan(stats.delong_auc(y, np.arange(5.0)).value)
    counts = stats.bootstrap_counts(5, 50, 0)
    assert math.isnan(stats.concordance(np.arange(5.0), np.zeros(5), np.arange(5.0), counts).value)
    p, hr = stats.logrank_hr(np.arange(5.0), np.ones(5), np.ones(5, bool))
    assert math.isnan(p) and math.isnan(hr.value)


def test_td_auc_matches_scikit_survival(surv):
    time, event, score = surv
    y = stats.surv_array(time, event)
    times = np.quantile(time[event], [0.25, 0.5, 0.75])
    aucs, mean_auc = stats.td_auc(y, time, event, score, times)
    ref_aucs, ref_mean = cumulative_dynamic_auc(y, y, score, times)
    np.testing.assert_allclose(aucs, ref_aucs)
    assert mean_auc == pytest.approx(ref_mean)


def test_td_auc_bootstrap_equals_scikit_survival_on_each_resample(surv):
    """The vectorised bootstrap: each resample's per-time AUCs and mean equal scikit-survival's
    cumulative_dynamic_auc on the resampled test patients (training censoring fixed)."""
    time, event, score = surv
    y = stats.surv_array(time, event)
    times = np.quantile(time[event], [0.25, 0.5, 0.75])
    counts = stats.bootstrap_counts(len(time), 200, 4)
    per_time, mean = stats.td_auc_ci(y, time, event, score, times, counts)
    ref_aucs, ref_mean = cumulative_dynamic_auc(y, y, score, times)
    np.testing.assert_allclose([a.value for a in per_time], ref_aucs)
    assert mean.value == pytest.approx(ref_mean)
    assert all(a.low < a.value < a.high for a in per_time)
    assert mean.low < mean.value < mean.high
    W = np.vstack([np.ones(len(time)), counts])
    aucs, means = stats._td_auc_weighted(y, time, event, score, times, W, 1e-8)
    for b in (1, 2, 3):
        idx = np.repeat(np.arange(len(time)), counts[b - 1].astype(int))
        ref_b, ref_mean_b = cumulative_dynamic_auc(y, y[idx], score[idx], times)
        np.testing.assert_allclose(aucs[b], ref_b, rtol=1e-10)
        assert means[b] == pytest.approx(ref_mean_b, rel=1e-10)


def test_td_auc_ci_covers_half_for_a_random_score():
    rng = np.random.default_rng(8)
    n = 60
    time = rng.exponential(10, n)
    event = rng.random(n) < 0.7
    y = stats.surv_array(time, event)
    times = np.quantile(time[event], [0.25, 0.5, 0.75])
    _, mean = stats.td_auc_ci(
        y, time, event, rng.normal(size=n), times, stats.bootstrap_counts(n, 300, 1)
    )
    assert mean.low < 0.5 < mean.high


def test_holm_matches_hand_computed_values():
    # R: p.adjust(c(0.01, 0.04, 0.03, 0.005), "holm") = 0.03 0.06 0.06 0.02
    np.testing.assert_allclose(
        stats.holm(np.array([0.01, 0.04, 0.03, 0.005])), [0.03, 0.06, 0.06, 0.02]
    )
    # Undefined tests are not members of the family: m = 2 here.
    out = stats.holm(np.array([0.02, np.nan, 0.6]))
    np.testing.assert_allclose(out, [0.04, np.nan, 0.6])
    assert np.isnan(stats.holm(np.array([np.nan]))).all()
    np.testing.assert_allclose(stats.holm(np.array([0.5, 0.9])), [1.0, 1.0])
