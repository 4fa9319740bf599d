"""Response (0/1) models: penalised logistic regression, random forest, gradient boosting.

Hyper-parameters come from ``models.response_models`` in the config: a list is a grid tuned by
inner cross-validation, a scalar is fixed. The score of a patient is the predicted probability
of response.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression

from deltarad.runlog import UserError

# Fixed defaults that the config may override (n_jobs=1: the rule's threads are the budget).
DEFAULTS: dict[str, dict[str, Any]] = {
    "logistic": {"C": 1.0, "l1_ratio": 0.0, "max_iter": 2000},
    "random_forest": {"n_estimators": 200, "min_samples_leaf": 2, "n_jobs": 1},
    "gradient_boosting": {"n_estimators": 100, "max_depth": 2, "subsample": 0.8},
}
CLASSES = {
    "logistic": LogisticRegression,
    "random_forest": RandomForestClassifier,
    "gradient_boosting": GradientBoostingClassifier,
}


def make(name: str, params: dict[str, Any], seed: int) -> BaseEstimator:
    """A response estimator by config name with ``params`` over the defaults."""
    if name not in CLASSES:
        raise UserError(
            f"config key 'models.response_models': unknown model '{name}' "
            f"(known: {sorted(CLASSES)})"
        )
    kwargs = {**DEFAULTS[name], **params}
    if name == "logistic":
        # Few patients, few selected features: Newton is exact and fast; L1 needs saga.
        kwargs.setdefault("solver", "saga" if float(kwargs["l1_ratio"]) > 0 else "newton-cholesky")
    return CLASSES[name](random_state=seed, **kwargs)


def score(model: BaseEstimator, X: Any) -> np.ndarray:
    """Probability of response (class 1)."""
    proba = model.predict_proba(X)
    classes = list(model.classes_)
    return proba[:, classes.index(1)] if 1 in classes else np.zeros(len(proba))


def importance(model: BaseEstimator) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(coefficients, importances) of a fitted response model; None where not defined."""
    if hasattr(model, "coef_"):
        return np.ravel(model.coef_), None
    if hasattr(model, "feature_importances_"):
        return None, np.asarray(model.feature_importances_)
    return None, None
