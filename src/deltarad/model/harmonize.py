"""ComBat harmonisation by centre as a scikit-learn transformer, fitted on training data only.

Why our own: neuroCombat has no fit-on-train / apply-on-test API and neuroHarmonize pins
numpy < 2 (FACTS.md). ComBat fitted on the whole cohort before cross-validation leaks the test
patients' feature distributions into training (WORC does this; ComBat's authors say it was "not
designed" for train/test use). Here ComBat is a pipeline step: ``fit`` sees the training rows
only, ``transform`` applies the frozen training parameters.

Model (Johnson et al. 2007, Biostatistics 8:118; Fortin et al. 2017/2018, as neuroCombat):
``y_ij = alpha + gamma_i + delta_i * e_ij`` per feature, centre ``i``, patient ``j``. Features are
standardised with the training grand mean (centre means weighted by centre size) and pooled
variance; centre location ``gamma`` and scale ``delta`` are shrunk by parametric empirical Bayes
(normal prior on gamma, inverse-gamma prior on delta, hyper-parameters by the method of moments
across features within the centre) and removed. Fitted on a whole data set it reproduces
neuroCombat 0.2.12 to within 4e-6 (tests).

Biological covariates to protect (``models.harmonize.protect``: clinical columns such as age,
sex, stage) enter as in Fortin et al. (2018, NeuroImage 167:104) and neuroCombat: the design
matrix is [centre indicators, covariates], fitted by least squares on the training rows; the
covariate effects ``beta`` are kept in every row's standardisation mean
``grand_mean + covariates @ beta``, so ComBat removes the centre effect but not the part of a
feature explained by the covariates, even when a centre has, say, more advanced stages. The
covariate columns arrive with the prefix :data:`COVARIATE_PREFIX` (added by
:func:`deltarad.model.featuresets.design`), are imputed like any column, and are dropped on
output: they protect, they are not model features. A covariate that is constant or collinear
with the centres in a training set cannot be separated from the centre effect there; it is left
out of that fit (logged). The outcome is never a covariate.

Policy for a centre not seen in training (``unseen``):

- ``estimate`` (default): the centre's location and scale are estimated from its own feature
  values in the data being transformed (never its outcomes), with the same empirical-Bayes step,
  against the frozen training grand mean and pooled variance. Needs at least
  ``min_batch_size`` patients of that centre in the transform call; otherwise ``pooled``.
- ``pooled``: no centre adjustment (the rows are treated as an average training centre and left
  as they are).

A training centre with fewer than ``min_batch_size`` patients is not modelled (a variance needs
two patients); its rows are left unadjusted and a warning names it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin

log = logging.getLogger(__name__)

BATCH_COLUMN = "__center__"
COVARIATE_PREFIX = "__protect__"
UNSEEN_POLICIES = ("estimate", "pooled")


def is_imaging(column: str) -> bool:
    """Imaging columns are ``{timepoint}__{channel}__{region}__{source}__{feature}``; clinical
    ones not,
    nor the centre and protected-covariate columns (they start with ``__``)."""
    return "__" in column and not column.startswith("__")


def is_covariate(column: str) -> bool:
    """A protected biological covariate for ComBat (not a model feature)."""
    return column.startswith(COVARIATE_PREFIX)


def _estimable(C: np.ndarray, names: list[str], D: np.ndarray) -> list[int]:
    """Indices of covariate columns that add rank to the centre indicators ``D`` (greedy, in
    order): constant or centre-collinear covariates are not estimable in this training set."""
    keep: list[int] = []
    rank = np.linalg.matrix_rank(D)
    for j in range(C.shape[1]):
        trial = np.column_stack([D, C[:, keep + [j]]])
        r = np.linalg.matrix_rank(trial)
        if r > rank:
            keep.append(j)
            rank = r
        else:
            log.info(
                "ComBat: covariate %s is constant or collinear with the centres in these "
                "training rows; not protected in this fit",
                names[j],
            )
    return keep


def _moments_prior(delta_hat: np.ndarray) -> tuple[float, float]:
    """Inverse-gamma hyper-parameters (a, b) by the method of moments (Johnson 2007, eq. 3.1)."""
    m = float(np.mean(delta_hat))
    s2 = float(np.var(delta_hat, ddof=1))
    return (2 * s2 + m**2) / s2, (m * s2 + m**3) / s2


def eb_location_scale(
    s: np.ndarray, empirical_bayes: bool = True, tol: float = 1e-4, max_iter: int = 1000
) -> tuple[np.ndarray, np.ndarray]:
    """Centre location ``gamma*`` and scale ``delta*`` per feature from one centre's standardised
    rows ``s`` (n_b x p), shrunk by parametric empirical Bayes as in neuroCombat's ``it_sol``.

    Falls back to the plain estimates (gamma_hat, delta_hat) where the priors are undefined
    (one feature, or no spread of the estimates across features).
    """
    n = s.shape[0]
    gamma_hat = s.mean(axis=0)
    delta_hat = s.var(axis=0, ddof=1)
    if not empirical_bayes or s.shape[1] < 2:
        return gamma_hat, np.maximum(delta_hat, 1e-12)
    gamma_bar = float(gamma_hat.mean())
    t2 = float(gamma_hat.var(ddof=1))
    if not np.isfinite(t2) or t2 <= 0 or np.var(delta_hat, ddof=1) <= 0:
        return gamma_hat, np.maximum(delta_hat, 1e-12)
    a, b = _moments_prior(delta_hat)
    g_old, d_old = gamma_hat.copy(), delta_hat.copy()
    for _ in range(max_iter):
        g_new = (t2 * n * gamma_hat + d_old * gamma_bar) / (t2 * n + d_old)
        sum2 = ((s - g_new) ** 2).sum(axis=0)
        d_new = (0.5 * sum2 + b) / (n / 2.0 + a - 1.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            change = max(
                np.nanmax(np.abs(g_new - g_old) / np.abs(g_old)),
                np.nanmax(np.abs(d_new - d_old) / np.abs(d_old)),
            )
        g_old, d_old = g_new, d_new
        if change <= tol:
            break
    return g_old, np.maximum(d_old, 1e-12)


class ComBat(TransformerMixin, BaseEstimator):
    """ComBat by centre; the centre is the ``batch_column`` of the input frame (dropped on output).

    Only imaging columns (see :func:`is_imaging`) are harmonised; clinical columns pass through.
    Columns named ``__protect__<covariate>`` are protected biological covariates (module
    docstring): used in the fit and in the adjustment, dropped on output.
    ``enabled=False`` only drops the centre and covariate columns (the no-harmonisation
    baseline).

    Example:
        >>> import numpy as np, pandas as pd
        >>> rng = np.random.default_rng(0)
        >>> X = pd.DataFrame(rng.normal(size=(8, 3)), columns=[f"b__t__s__f{i}" for i in range(3)])
        >>> X[BATCH_COLUMN] = ["A"] * 4 + ["B"] * 4
        >>> X.loc[X[BATCH_COLUMN] == "B", "b__t__s__f0"] += 5
        >>> out = ComBat().fit(X).transform(X)
        >>> bool(abs(out["b__t__s__f0"][:4].mean() - out["b__t__s__f0"][4:].mean()) < 1)
        True
    """

    def __init__(
        self,
        enabled: bool = True,
        empirical_bayes: bool = True,
        unseen: str = "estimate",
        min_batch_size: int = 2,
        batch_column: str = BATCH_COLUMN,
    ) -> None:
        self.enabled = enabled
        self.empirical_bayes = empirical_bayes
        self.unseen = unseen
        self.min_batch_size = min_batch_size
        self.batch_column = batch_column

    def _split(self, X: pd.DataFrame) -> tuple[pd.Series, list[str]]:
        if self.batch_column not in X.columns:
            raise ValueError(f"ComBat needs the centre column '{self.batch_column}'")
        cols = [c for c in X.columns if is_imaging(c)]
        return X[self.batch_column].astype(str), cols

    def _covariates(self, X: pd.DataFrame) -> np.ndarray:
        """The protected covariates of the fit (n x q); NaN is an error (impute first)."""
        missing = [c for c in self.covariates_ if c not in X.columns]
        if missing:
            raise ValueError(f"ComBat: protected covariate column(s) {missing} missing")
        C = X[self.covariates_].to_numpy(float) if self.covariates_ else np.zeros((len(X), 0))
        if not np.all(np.isfinite(C)):
            bad = [c for c in self.covariates_ if not np.all(np.isfinite(X[c].to_numpy(float)))]
            raise ValueError(f"ComBat: protected covariate(s) {bad} have missing values")
        return C

    def fit(self, X: pd.DataFrame, y: object = None) -> ComBat:
        if self.unseen not in UNSEEN_POLICIES:
            raise ValueError(f"ComBat unseen policy must be one of {UNSEEN_POLICIES}")
        batch, cols = self._split(X)
        dropped = {self.batch_column, *(c for c in X.columns if is_covariate(c))}
        self.feature_names_in_ = np.asarray([c for c in X.columns if c not in dropped])
        self.columns_ = cols
        self.covariates_: list[str] = [c for c in X.columns if is_covariate(c)]
        self.batches_: list[str] = []
        self.skipped_batches_: list[str] = []
        if not self.enabled or not cols:
            return self
        counts = batch.value_counts()
        self.skipped_batches_ = sorted(counts.index[counts < self.min_batch_size])
        for b in self.skipped_batches_:  # fit_split warns once per split; inner folds: debug
            log.debug(
                "ComBat: centre %s has %d training patient(s) (< %d): not modelled, its rows "
                "are left unadjusted",
                b,
                counts[b],
                self.min_batch_size,
            )
        self.batches_ = sorted(counts.index[counts >= self.min_batch_size])
        keep = batch.isin(self.batches_).to_numpy()
        Y = X.loc[keep, cols].to_numpy(float)
        b = batch[keep].to_numpy()
        if not self.batches_:
            log.warning("ComBat: no training centre with >= %d patients", self.min_batch_size)
            return self
        D = (b[:, None] == np.asarray(self.batches_)[None, :]).astype(float)
        C = self._covariates(X.loc[keep])
        est = _estimable(C, self.covariates_, D)
        self.protected_ = [self.covariates_[j] for j in est]
        self.beta_ = np.zeros((len(self.covariates_), Y.shape[1]))
        if est:
            # Least squares on [centre indicators, covariates] (full rank after _estimable):
            # the small pseudo-inverse times Y, much faster than lstsq with thousands of
            # right-hand sides.
            design = np.column_stack([D, C[:, est]])
            coef = np.linalg.pinv(design) @ Y
            means = coef[: len(self.batches_)]
            self.beta_[est] = coef[len(self.batches_) :]
            fitted = design @ coef
        else:  # plain ComBat: the least-squares fit is the centre means
            means = np.stack([Y[b == k].mean(axis=0) for k in self.batches_])
            fitted = means[np.searchsorted(self.batches_, b)]
        sizes = D.sum(axis=0)
        self.grand_mean_ = (sizes[:, None] * means).sum(axis=0) / sizes.sum()
        var = ((Y - fitted) ** 2).mean(axis=0)
        self.valid_ = var > 1e-12 * np.maximum(1.0, self.grand_mean_**2)
        self.var_pooled_ = np.where(self.valid_, var, 1.0)
        s = self._standardise(Y, C)
        gammas, deltas = [], []
        for k in self.batches_:
            g, d = eb_location_scale(s[b == k], self.empirical_bayes)
            gammas.append(g)
            deltas.append(d)
        self.gamma_star_ = np.stack(gammas)
        self.delta_star_ = np.stack(deltas)
        return self

    def _stand_mean(self, C: np.ndarray) -> np.ndarray:
        """Each row's expected feature values without a centre effect: the grand mean plus
        the protected covariates' effects."""
        return self.grand_mean_ + C @ self.beta_

    def _standardise(self, Y: np.ndarray, C: np.ndarray) -> np.ndarray:
        return (Y - self._stand_mean(C)) / np.sqrt(self.var_pooled_)

    def _adjust(
        self, Y: np.ndarray, C: np.ndarray, gamma: np.ndarray, delta: np.ndarray
    ) -> np.ndarray:
        adj = (self._standardise(Y, C) - gamma) / np.sqrt(delta)
        out = adj * np.sqrt(self.var_pooled_) + self._stand_mean(C)
        return np.where(self.valid_, out, Y)

    def transform(self, X: pd.DataFrame) -> pd.DataFrame:
        batch, _ = self._split(X)
        out = X.drop(columns=[self.batch_column, *self.covariates_], errors="ignore")
        out = out.drop(columns=[c for c in out.columns if is_covariate(c)]).copy()
        if not self.enabled or not self.columns_ or not self.batches_:
            return out
        Y = X[self.columns_].to_numpy(float)
        C = self._covariates(X)
        adjusted = Y.copy()
        for k in pd.unique(batch):
            rows = (batch == k).to_numpy()
            if k in self.batches_:
                i = self.batches_.index(k)
                adjusted[rows] = self._adjust(
                    Y[rows], C[rows], self.gamma_star_[i], self.delta_star_[i]
                )
            elif k in self.skipped_batches_:
                continue
            elif self.unseen == "estimate" and rows.sum() >= self.min_batch_size:
                s = self._standardise(Y[rows], C[rows])
                g, d = eb_location_scale(s, self.empirical_bayes)
                adjusted[rows] = self._adjust(Y[rows], C[rows], g, d)
                log.debug(
                    "ComBat: centre %s unseen in training: location/scale estimated from its "
                    "%d patients' features (training parameters fixed)",
                    k,
                    rows.sum(),
                )
            else:
                log.info(
                    "ComBat: centre %s unseen in training (%d patient(s)): left unadjusted "
                    "(pooled policy)",
                    k,
                    rows.sum(),
                )
        rest = out.drop(columns=self.columns_)
        harmonised = pd.DataFrame(adjusted, columns=self.columns_, index=out.index)
        return pd.concat([rest, harmonised], axis=1)[list(out.columns)]

    def get_feature_names_out(self, input_features: Sequence[str] | None = None) -> np.ndarray:
        return self.feature_names_in_
