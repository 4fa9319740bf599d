"""Survival models (scikit-survival): penalised Cox (CoxNet), random survival forest,
gradient-boosted Cox.

Hyper-parameters come from ``models.survival_models``: a list is a grid tuned by inner
cross-validation, a scalar is fixed. The score is the model's risk (higher = earlier event); every
model also gives survival functions, for the integrated Brier score.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import BaseEstimator
from sksurv.ensemble import GradientBoostingSurvivalAnalysis, RandomSurvivalForest
from sksurv.linear_model import CoxnetSurvivalAnalysis, CoxPHSurvivalAnalysis

from deltarad.runlog import UserError

DEFAULTS: dict[str, dict[str, Any]] = {
    "coxnet": {"alpha": 0.1, "l1_ratio": 0.5},
    "random_survival_forest": {"n_estimators": 100, "min_samples_leaf": 3, "n_jobs": 1},
    "gradient_boosting": {"n_estimators": 100, "max_depth": 2, "subsample": 0.8},
}
NAMES = tuple(DEFAULTS)


def make(name: str, params: dict[str, Any], seed: int) -> BaseEstimator:
    """A survival estimator by config name with ``params`` over the defaults."""
    if name not in DEFAULTS:
        raise UserError(
            f"config key 'models.survival_models': unknown model '{name}' (known: {sorted(NAMES)})"
        )
    kwargs = {**DEFAULTS[name], **params}
    if name == "coxnet":
        alpha = float(kwargs.pop("alpha"))
        # One fixed penalty per fit (the grid is tuned outside); the baseline hazard gives
        # survival functions.
        return CoxnetSurvivalAnalysis(alphas=[alpha], fit_baseline_model=True, **kwargs)
    if name == "random_survival_forest":
        return RandomSurvivalForest(random_state=seed, **kwargs)
    return GradientBoostingSurvivalAnalysis(random_state=seed, **kwargs)


def score(model: BaseEstimator, X: Any) -> np.ndarray:
    """Risk score: higher means an earlier event."""
    return np.asarray(model.predict(X), float)


def survival_at(model: BaseEstimator, X: Any, times: np.ndarray) -> np.ndarray:
    """(patients x times) survival probabilities; times outside a function's domain are clipped."""
    funcs = model.predict_survival_function(X)
    out = np.empty((len(funcs), len(times)))
    for i, f in enumerate(funcs):
        out[i] = f(np.clip(times, f.domain[0], f.domain[1]))
    return out


def score_model(train_score: np.ndarray, train_y: np.ndarray) -> BaseEstimator:
    """Survival functions for a bare risk score (the oracle's true latent risk, an end-to-end
    network's risk head): a one-covariate Cox model on the training patients' scores (Breslow
    baseline hazard), so that the score's integrated Brier score is computed like a fitted
    model's, from training data only. Raises ValueError / ArithmeticError when it cannot fit."""
    x = np.asarray(train_score, float)[:, None]
    if not np.all(np.isfinite(x)) or not train_y["event"].any():
        raise ValueError("risk scores not finite or no training events")
    return CoxPHSurvivalAnalysis(ties="breslow").fit(x, train_y)


def importance(model: BaseEstimator) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(coefficients, importances) of a fitted survival model; None where not defined."""
    if isinstance(model, CoxnetSurvivalAnalysis):
        return np.ravel(model.coef_[:, -1]), None
    try:
        return None, np.asarray(model.feature_importances_)
    except (AttributeError, NotImplementedError):  # random survival forests have none
        return None, None
