"""Pipeline steps before the model: imputation, filtering, selection and scaling, all fitted on
training rows only. They take and return pandas frames so selected feature names survive to the
coefficient and hazard-ratio tables.

Order in a pipeline: :class:`Impute` -> :class:`~deltarad.model.harmonize.ComBat` ->
:class:`Reduce` -> model.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy.stats import rankdata
from sklearn.base import BaseEstimator, TransformerMixin

from deltarad.model.harmonize import BATCH_COLUMN, is_imaging

log = logging.getLogger(__name__)
SELECTION_METHODS = ("univariate", "mrmr", "l1")


def is_survival(y: np.ndarray) -> bool:
    return y.dtype.names is not None


def univariate_auc(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-column AUC of the raw values for a 0/1 label (Mann-Whitney with average ranks)."""
    y = np.asarray(y).astype(bool)
    n1, n0 = int(y.sum()), int((~y).sum())
    if n1 == 0 or n0 == 0:
        return np.full(X.shape[1], 0.5)
    ranks = rankdata(X, axis=0)
    return (ranks[y].sum(axis=0) - n1 * (n1 + 1) / 2) / (n1 * n0)


def comparable_pairs(time: np.ndarray, event: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i, j) Harrell's C compares: i had the event first (scikit-survival's rule:
    T_i < T_j, or equal times with j censored)."""
    t, e = np.asarray(time, float), np.asarray(event, bool)
    comp = e[:, None] & ((t[:, None] < t[None, :]) | ((t[:, None] == t[None, :]) & ~e[None, :]))
    return np.nonzero(comp)


def univariate_cindex(X: np.ndarray, time: np.ndarray, event: np.ndarray) -> np.ndarray:
    """Per-column Harrell's C with the raw value as risk score (higher = earlier event)."""
    i, j = comparable_pairs(time, event)
    if len(i) == 0:
        return np.full(X.shape[1], 0.5)
    diff = X[i] - X[j]
    return ((diff > 0).sum(axis=0) + 0.5 * (diff == 0).sum(axis=0)) / len(i)


def relevance(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Univariate strength |AUC - 0.5| or |C - 0.5|, in [0, 0.5], direction-free."""
    survival = is_survival(y)
    score = univariate_cindex(X, y["time"], y["event"]) if survival else univariate_auc(X, y)
    return np.abs(score - 0.5)


class Impute(TransformerMixin, BaseEstimator):
    """Drop columns missing in more than ``max_missing`` of the training rows; fill the rest with
    the training median. Infinite values count as missing. The centre column passes through."""

    def __init__(self, max_missing: float = 0.5) -> None:
        self.max_missing = max_missing

    def fit(self, X: pd.DataFrame, y: object = None) -> Impute:
        frame = X.drop(columns=[BATCH_COLUMN], errors="ignore")
        values = frame.to_numpy(float)
        values = np.where(np.isfinite(values), values, np.nan)
        keep = np.isnan(values).mean(axis=0) <= self.max_missing
        self.columns_ = list(frame.columns[keep])
        dropped = int((~keep).sum())
        if dropped:
            log.info(
                "impute: %d column(s) missing in > %.0f%% of training rows dropped",
                dropped,
                100 * self.max_missing,
            )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: median 0
            medians = np.nanmedian(values[:, keep], axis=0) if len(values) else np.zeros(keep.sum())
        self.medians_ = np.nan_to_num(medians, nan=0.0)
        self.has_batch_ = BATCH_COLUMN in X.columns
        return self

    def transform(self, X: pd.DataFrame) -> pd.DataFrame:
        values = X[self.columns_].to_numpy(float)
        values = np.where(np.isfinite(values), values, self.medians_)
        out = pd.DataFrame(values, columns=self.columns_, index=X.index)
        if self.has_batch_:
            out = pd.concat([out, X[[BATCH_COLUMN]]], axis=1)
        return out


class Reduce(TransformerMixin, BaseEstimator):
    """Variance filter, univariate prescreen, correlation filter, selection of ``k`` imaging
    features, then z-scoring; all statistics from the training rows.

    Non-imaging (clinical) columns skip filtering and selection and are always kept: they are
    few, chosen by the user, and a combined model should contain them (Li et al.).

    ``method``: ``univariate`` (top k by |AUC-0.5| or |C-0.5|), ``mrmr`` (greedy relevance minus
    mean |correlation| with the features already chosen) or ``l1`` (L1-logistic or lasso-Cox
    path, the largest model with at most k features, ranked by |coefficient|).
    """

    def __init__(
        self,
        k: int = 10,
        method: str = "univariate",
        min_variance: float = 1e-8,
        max_correlation: float = 0.9,
        prescreen: int = 200,
        seed: int = 0,
    ) -> None:
        self.k = k
        self.method = method
        self.min_variance = min_variance
        self.max_correlation = max_correlation
        self.prescreen = prescreen
        self.seed = seed

    def fit(self, X: pd.DataFrame, y: np.ndarray) -> Reduce:
        if self.method not in SELECTION_METHODS:
            raise ValueError(f"selection method must be one of {SELECTION_METHODS}")
        clinical = [c for c in X.columns if not is_imaging(c)]
        imaging = [c for c in X.columns if is_imaging(c)]
        chosen: list[str] = []
        if imaging:
            chosen = self._select(X[imaging].to_numpy(float), np.asarray(imaging), y)
        self.features_ = clinical + chosen
        values = X[self.features_].to_numpy(float)
        self.mean_ = values.mean(axis=0)
        sd = values.std(axis=0)
        self.scale_ = np.where(sd > 0, sd, 1.0)
        return self

    def _select(self, V: np.ndarray, names: np.ndarray, y: np.ndarray) -> list[str]:
        keep = V.var(axis=0) > self.min_variance
        V, names = V[:, keep], names[keep]
        if V.shape[1] == 0:
            log.warning("reduce: no imaging feature varies in the training rows")
            return []
        rel = relevance(V, y)
        order = np.argsort(-rel, kind="stable")[: self.prescreen]
        V, names, rel = V[:, order], names[order], rel[order]
        Z = (V - V.mean(axis=0)) / np.where(V.std(axis=0) > 0, V.std(axis=0), 1.0)
        corr = np.abs(Z.T @ Z) / len(Z)
        kept = np.zeros(len(names), bool)
        dropped = np.zeros(len(names), bool)
        for i in range(len(names)):  # most relevant first
            if dropped[i]:
                continue
            kept[i] = True
            dropped |= corr[i] > self.max_correlation
        idx = np.nonzero(kept)[0]
        if self.method == "univariate":
            pick = idx[: self.k]
        elif self.method == "mrmr":
            pick = _mrmr(rel[idx], corr[np.ix_(idx, idx)], self.k)
            pick = idx[pick]
        else:
            pick = idx[_l1_rank(Z[:, idx], y, self.k, self.seed)]
        return [str(n) for n in names[pick]]

    def transform(self, X: pd.DataFrame) -> pd.DataFrame:
        values = X[self.features_].to_numpy(float)
        return pd.DataFrame(
            (values - self.mean_) / self.scale_, columns=self.features_, index=X.index
        )

    def get_feature_names_out(self, input_features: Sequence[str] | None = None) -> np.ndarray:
        return np.asarray(self.features_)


def _mrmr(rel: np.ndarray, corr: np.ndarray, k: int) -> np.ndarray:
    """Greedy max-relevance min-redundancy (difference form; relevance scaled to [0, 1])."""
    chosen = [int(np.argmax(rel))] if len(rel) else []
    while len(chosen) < min(k, len(rel)):
        score = 2 * rel - corr[:, chosen].mean(axis=1)
        score[chosen] = -np.inf
        chosen.append(int(np.argmax(score)))
    return np.asarray(chosen, int)


def _l1_rank(Z: np.ndarray, y: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Indices of at most k features from an L1 path: the densest model with <= k non-zeros."""
    if is_survival(y):
        from sksurv.linear_model import CoxnetSurvivalAnalysis

        path = CoxnetSurvivalAnalysis(l1_ratio=1.0, n_alphas=30, alpha_min_ratio=0.05)
        path.fit(Z, y)
        coefs = path.coef_.T  # (alphas, features)
    else:
        from sklearn.linear_model import LogisticRegression

        coefs = []
        for c in np.logspace(-2, 1, 15):
            m = LogisticRegression(C=c, l1_ratio=1.0, solver="liblinear", random_state=seed)
            coefs.append(m.fit(Z, y).coef_[0])
        coefs = np.asarray(coefs)
    nonzero = (np.abs(coefs) > 0).sum(axis=1)
    ok = np.nonzero((nonzero <= k) & (nonzero > 0))[0]
    if len(ok) == 0:
        return np.arange(min(k, Z.shape[1]))  # fall back to relevance order
    best = coefs[ok[np.argmax(nonzero[ok])]]
    nz = np.nonzero(best)[0]
    return nz[np.argsort(-np.abs(best[nz]), kind="stable")]
