"""ComBat: the published formulas, removal of a planted centre shift, no leakage from test rows,
policies for unseen and one-patient centres."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from deltarad.model.harmonize import BATCH_COLUMN, ComBat, eb_location_scale


def planted(n_per: int = 12, p: int = 30, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """Three centres; centre k adds shift_k and multiplies by scale_k on every feature."""
    rng = np.random.default_rng(seed)
    biology = rng.normal(size=(3 * n_per, p))
    centers = np.repeat(["A", "B", "C"], n_per)
    shift = {"A": 0.0, "B": 3.0, "C": -2.0}
    scale = {"A": 1.0, "B": 1.8, "C": 0.6}
    values = np.array([biology[i] * scale[c] + shift[c] for i, c in enumerate(centers)])
    X = pd.DataFrame(values, columns=[f"baseline__CT__tumor__pyrad__f{i}" for i in range(p)])
    X["age"] = rng.normal(60, 5, len(X))
    X[BATCH_COLUMN] = centers
    return X, biology


def reference_combat(Y: np.ndarray, batch: np.ndarray) -> np.ndarray:
    """ComBat written out feature by feature from Johnson et al. (2007), as neuroCombat does."""
    batches = sorted(set(batch))
    n, p = Y.shape
    out = np.empty_like(Y)
    means = {b: Y[batch == b].mean(axis=0) for b in batches}
    grand = sum((batch == b).sum() * means[b] for b in batches) / n
    resid = np.array([Y[i] - means[batch[i]] for i in range(n)])
    var = (resid**2).sum(axis=0) / n
    s = (Y - grand) / np.sqrt(var)
    for b in batches:
        sb = s[batch == b]
        nb = len(sb)
        g_hat = sb.mean(axis=0)
        d_hat = sb.var(axis=0, ddof=1)
        g_bar, t2 = g_hat.mean(), g_hat.var(ddof=1)
        m, v = d_hat.mean(), d_hat.var(ddof=1)
        a, bb = (2 * v + m**2) / v, (m * v + m**3) / v
        g_star, d_star = np.empty(p), np.empty(p)
        for j in range(p):
            g_old, d_old = g_hat[j], d_hat[j]
            for _ in range(1000):
                g_new = (t2 * nb * g_hat[j] + d_old * g_bar) / (t2 * nb + d_old)
                d_new = (0.5 * ((sb[:, j] - g_new) ** 2).sum() + bb) / (nb / 2 + a - 1)
                done = max(abs(g_new - g_old) / abs(g_old), abs(d_new - d_old) / abs(d_old))
                g_old, d_old = g_new, d_new
                if done < 1e-4:
                    break
            g_star[j], d_star[j] = g_old, d_old
        out[batch == b] = (sb - g_star) / np.sqrt(d_star) * np.sqrt(var) + grand
    return out


def test_matches_the_published_formulas():
    X, _ = planted()
    out = ComBat().fit(X).transform(X)
    cols = [c for c in X.columns if "__" in c and c != BATCH_COLUMN]
    ref = reference_combat(X[cols].to_numpy(), X[BATCH_COLUMN].to_numpy())
    # The vectorised iteration stops when all features converged, the reference per feature:
    # both are within the 1e-4 relative tolerance of the fixed point.
    np.testing.assert_allclose(out[cols].to_numpy(), ref, rtol=1e-3, atol=1e-3)
    assert "age" in out.columns and BATCH_COLUMN not in out.columns
    np.testing.assert_array_equal(out["age"], X["age"])  # clinical columns untouched


def test_removes_a_planted_centre_shift():
    X, _ = planted()
    cols = [c for c in X.columns if c.startswith("baseline")]
    before = X.groupby(BATCH_COLUMN)[cols].mean().std(axis=0).mean()
    out = ComBat().fit(X).transform(X)
    out[BATCH_COLUMN] = X[BATCH_COLUMN]
    after_mean = out.groupby(BATCH_COLUMN)[cols].mean()
    after_sd = out.groupby(BATCH_COLUMN)[cols].std()
    assert before > 2
    # What is left is the sampling noise of 12 patients' biology (sd of a mean ~ 0.3): empirical
    # Bayes removes the common centre effect, not each feature's chance difference.
    assert after_mean.std(axis=0).mean() < 0.3
    assert (after_sd.max(axis=0) / after_sd.min(axis=0)).median() < 1.5
    # Without shrinkage, location and scale per feature and centre are matched exactly.
    plain = ComBat(empirical_bayes=False).fit(X).transform(X)
    plain[BATCH_COLUMN] = X[BATCH_COLUMN]
    assert plain.groupby(BATCH_COLUMN)[cols].mean().std(axis=0).max() < 1e-10


def test_fitted_parameters_ignore_test_rows():
    X, _ = planted()
    train, test = X.iloc[::2], X.iloc[1::2].copy()
    a = ComBat().fit(train)
    params = {
        k: getattr(a, k).copy()
        for k in ("grand_mean_", "var_pooled_", "gamma_star_", "delta_star_")
    }
    out1 = a.transform(test)
    test_altered = test.copy()
    test_altered.iloc[:, :5] = 1e3  # wildly different test data
    a.transform(test_altered)
    b = ComBat().fit(train)
    for k, v in params.items():
        np.testing.assert_array_equal(getattr(a, k), v)  # transform does not refit
        np.testing.assert_array_equal(getattr(b, k), v)  # refit on train: same parameters
    # Seen centres: a test row's output depends only on that row and the training parameters.
    row = a.transform(test.iloc[[0]])
    np.testing.assert_allclose(row.to_numpy(), out1.iloc[[0]].to_numpy())


def test_unseen_centre_estimate_and_pooled_policies(caplog):
    X, _ = planted()
    train = X[X[BATCH_COLUMN] != "B"]
    test = X[X[BATCH_COLUMN] == "B"]
    cols = [c for c in X.columns if c.startswith("baseline")]
    est = ComBat(unseen="estimate").fit(train).transform(test)
    pooled = ComBat(unseen="pooled").fit(train).transform(test)
    ref = ComBat().fit(train).transform(train)
    # Estimate: the unseen centre's shift (+3) is removed; pooled leaves it.
    assert abs(est[cols].mean().mean() - ref[cols].mean().mean()) < 0.3
    np.testing.assert_array_equal(pooled[cols].to_numpy(), test[cols].to_numpy())
    with caplog.at_level(logging.INFO):
        ComBat(unseen="estimate").fit(train).transform(test.iloc[[0]])
    assert "unseen in training (1 patient(s)): left unadjusted" in caplog.text


def test_one_patient_centre_is_not_modelled_and_says_so(caplog):
    X, _ = planted()
    X = pd.concat([X, X.iloc[[0]].assign(**{BATCH_COLUMN: "D"})], ignore_index=True)
    with caplog.at_level(logging.DEBUG):
        combat = ComBat().fit(X)
    assert "centre D has 1 training patient(s) (< 2): not modelled" in caplog.text
    out = combat.transform(X)
    assert np.isfinite(out.drop(columns="age").to_numpy()).all()
    np.testing.assert_array_equal(out.iloc[-1].to_numpy(), X.drop(columns=BATCH_COLUMN).iloc[-1])


def test_constant_feature_and_disabled():
    X, _ = planted()
    X["baseline__CT__tumor__pyrad__const"] = 5.0
    out = ComBat().fit(X).transform(X)
    assert (out["baseline__CT__tumor__pyrad__const"] == 5.0).all()
    off = ComBat(enabled=False).fit(X).transform(X)
    pd.testing.assert_frame_equal(off, X.drop(columns=BATCH_COLUMN))


def test_eb_shrinks_towards_the_centre_mean():
    rng = np.random.default_rng(2)
    s = rng.normal(0.5, 1.0, size=(4, 200))
    g_hat = s.mean(axis=0)
    g_star, d_star = eb_location_scale(s)
    assert np.var(g_star) < np.var(g_hat)  # shrinkage
    assert (d_star > 0).all()
    assert eb_location_scale(s, empirical_bayes=False)[0] == pytest.approx(g_hat)


# neuroCombat 0.2.12 (Fortin et al.) on planted(), first two patients x three features, computed
# once in a separate environment: it is not a dependency (no train/test API, FACTS.md). Over all
# of planted() the two implementations differed by at most 4e-6.
NEUROCOMBAT = [
    [0.2428939785783837, 0.18984810257452223, 1.165679382160424],
    [-0.9875678592841022, 0.09688707528695323, 0.1288962987091805],
]


def test_matches_neurocombat_reference_values():
    X, _ = planted()
    out = ComBat().fit(X).transform(X)
    np.testing.assert_allclose(out.iloc[:2, :3].to_numpy(), NEUROCOMBAT, atol=1e-5)


# --- protected biological covariates (Fortin et al. 2018 design matrix) ------------------------


def planted_covariate(
    n_per: int = 20, p: int = 12, seed: int = 4
) -> tuple[pd.DataFrame, np.ndarray]:
    """Three centres whose patients differ in stage (centre C has the advanced ones: centre and
    biology are confounded), every feature = 1.0 x stage (features 0-5 only) + centre shift and
    scale + noise; a continuous age with no effect."""
    rng = np.random.default_rng(seed)
    centers = np.repeat(["A", "B", "C"], n_per)
    stage_mean = {"A": 1.5, "B": 2.5, "C": 3.5}
    stage = np.array([np.clip(np.rint(rng.normal(stage_mean[c], 0.8)), 1, 4) for c in centers])
    shift = {"A": 0.0, "B": 4.0, "C": -3.0}
    scale = {"A": 1.0, "B": 1.5, "C": 0.7}
    effect = np.r_[np.ones(6), np.zeros(p - 6)]
    noise = rng.normal(size=(len(centers), p))
    values = (
        np.array([noise[i] * scale[c] + shift[c] for i, c in enumerate(centers)])
        + stage[:, None] * effect[None, :]
    )
    X = pd.DataFrame(values, columns=[f"baseline__CT__tumor__pyrad__f{i}" for i in range(p)])
    X["__protect__stage"] = stage
    X["__protect__age"] = rng.normal(60, 8, len(X))
    X[BATCH_COLUMN] = centers
    return X, stage


def _stage_slope_and_centre_spread(out: pd.DataFrame, X: pd.DataFrame) -> tuple[float, float]:
    """Pooled OLS slope of the stage-driven features on stage, and the spread of the centre
    means of their stage-adjusted residuals (0 = no centre effect left)."""
    stage = X["__protect__stage"].to_numpy()
    cols = [f"baseline__CT__tumor__pyrad__f{i}" for i in range(6)]
    Y = out[cols].to_numpy()
    A = np.column_stack([np.ones_like(stage), stage])
    coef = np.linalg.lstsq(A, Y, rcond=None)[0]
    resid = pd.DataFrame(Y - A @ coef).groupby(X[BATCH_COLUMN].to_numpy()).mean()
    return float(coef[1].mean()), float(resid.std(axis=0).mean())


def test_protected_covariate_effect_survives_and_centre_shift_is_removed():
    X, _ = planted_covariate()
    before_slope, before_spread = _stage_slope_and_centre_spread(X, X)
    protected = ComBat().fit(X).transform(X)
    assert "__protect__stage" not in protected.columns  # protects, is not a feature
    assert BATCH_COLUMN not in protected.columns
    slope, spread = _stage_slope_and_centre_spread(protected, X)
    assert before_spread > 1.5  # the planted centre shifts
    assert spread < 0.3  # removed ...
    assert slope == pytest.approx(1.0, abs=0.15)  # ... while the stage effect (1.0) survives
    # Without protection ComBat takes the between-centre part of the stage effect for a centre
    # effect (centre C has the advanced stages) and shrinks it: the reason for the design matrix.
    plain = ComBat().fit(X.drop(columns=["__protect__stage", "__protect__age"]))
    naive, _ = _stage_slope_and_centre_spread(
        plain.transform(X.drop(columns=["__protect__stage", "__protect__age"])), X
    )
    assert naive < 0.75 * slope


def test_protected_covariates_fitted_on_training_rows_only():
    X, _ = planted_covariate()
    train, test = X.iloc[::2], X.iloc[1::2].copy()
    a = ComBat().fit(train)
    names = ("grand_mean_", "var_pooled_", "gamma_star_", "delta_star_", "beta_")
    params = {k: getattr(a, k).copy() for k in names}
    out1 = a.transform(test)
    altered = test.copy()
    altered.iloc[:, :4] = 1e3  # wildly different test features ...
    altered["__protect__stage"] = 9.0  # ... and covariates
    a.transform(altered)
    b = ComBat().fit(train)
    for k, v in params.items():
        np.testing.assert_array_equal(getattr(a, k), v)
        np.testing.assert_array_equal(getattr(b, k), v)
    row = a.transform(test.iloc[[0]])
    np.testing.assert_allclose(row.to_numpy(), out1.iloc[[0]].to_numpy())
    # An unseen centre is estimated against the frozen parameters, covariates included.
    unseen = ComBat().fit(X[X[BATCH_COLUMN] != "C"]).transform(X[X[BATCH_COLUMN] == "C"])
    assert np.isfinite(unseen.to_numpy()).all()


def test_constant_covariate_is_not_protected_and_says_so(caplog):
    X, _ = planted_covariate()
    X["__protect__sex_M"] = 1.0  # every training patient male: not separable from the centres
    with caplog.at_level(logging.INFO):
        combat = ComBat().fit(X)
    assert "covariate __protect__sex_M is constant or collinear with the centres" in caplog.text
    assert combat.protected_ == ["__protect__stage", "__protect__age"]
    np.testing.assert_array_equal(combat.beta_[2], 0.0)
    assert np.isfinite(combat.transform(X).to_numpy()).all()


def test_protect_refuses_outcomes_and_unknown_columns():
    from deltarad.model.featuresets import protected_covariates
    from deltarad.runlog import UserError

    clinical = pd.DataFrame({"patient_id": ["a", "b"], "age": [50, 60], "response": [0, 1]})
    with pytest.raises(UserError, match="'models.harmonize.protect'.*outcome"):
        protected_covariates(clinical, ["age", "response"])
    with pytest.raises(UserError, match="'models.harmonize.protect'.*'stage' is not a column"):
        protected_covariates(clinical, ["stage"])
    assert list(protected_covariates(clinical, ["age"]).columns) == ["__protect__age"]


# neuroCombat 0.2.12 on planted_covariate() with continuous_cols=["stage", "age"], first two
# patients x three features, computed once outside the project's environment (neuroCombat is
# not a dependency). Over all of planted_covariate() the two differed by at most 1.7e-6.
NEUROCOMBAT_COVARIATES = [
    [1.9678252579722293, 1.9402328000685034, 2.1656715287683537],
    [-0.025672971580931847, 3.2248744031310546, 0.7521047974851126],
]


def test_protected_covariates_match_neurocombat_reference_values():
    X, _ = planted_covariate()
    out = ComBat().fit(X).transform(X)
    np.testing.assert_allclose(out.iloc[:2, :3].to_numpy(), NEUROCOMBAT_COVARIATES, atol=1e-5)
