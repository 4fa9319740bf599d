"""Tables that describe fitted models: coefficients, Cox hazard ratios of the selected features,
and the harmonisation check (feature distributions and a PCA embedding by centre, before and
after ComBat fitted on the training centres)."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pandas as pd
from sklearn.pipeline import Pipeline

from deltarad.features.naming import parse
from deltarad.model import response, survival
from deltarad.model.harmonize import BATCH_COLUMN, ComBat
from deltarad.model.steps import Impute

log = logging.getLogger(__name__)
# importance_kind: what `importance` holds: `impurity` (forest / boosting impurity decrease),
# `permutation` (mean drop of the training score when one feature is permuted; models with
# neither coefficients nor impurity importances, e.g. random survival forests), or empty.
COEF_COLUMNS = [
    "endpoint",
    "model",
    "feature_set",
    "feature",
    "coefficient",
    "importance",
    "importance_kind",
]
HR_COLUMNS = ["feature_set", "model", "feature", "hr", "ci_low", "ci_high", "p"]
CHECK_COLUMNS = ["feature", "center", "stage", "mean", "sd"]
EMBED_COLUMNS = ["patient_id", "center", "stage", "pc1", "pc2"]


def coefficients(
    endpoint: str,
    model: str,
    fs: str,
    pipe: Pipeline,
    X_train: pd.DataFrame | None = None,
    y_train: np.ndarray | None = None,
    repeats: int = 0,
    seed: int = 0,
) -> pd.DataFrame:
    """Standardised coefficients or importances of a final model's selected features.

    A model with neither (random survival forest) gets permutation importances on its own
    training patients (``X_train``, ``y_train``) when ``repeats`` > 0: the mean drop of its
    score (Harrell's C for survival, accuracy for response) over ``repeats`` seeded
    permutations of each feature. On training data they say what the model uses, not what
    generalises."""
    names = list(pipe.named_steps["reduce"].features_)
    module = response if endpoint == "response" else survival
    final = pipe.named_steps["model"]
    coef, imp = module.importance(final)
    kind = "impurity" if imp is not None else ""
    if coef is None and imp is None and repeats > 0 and X_train is not None and len(names):
        try:
            imp = permutation_importance(pipe, X_train, y_train, repeats, seed)
            kind = "permutation"
        except (ValueError, ArithmeticError) as err:  # e.g. no comparable pairs (tiny cohorts)
            log.warning(
                "%s/%s/%s: no permutation importances on the %d training patients (%s)",
                endpoint,
                model,
                fs,
                len(X_train),
                err,
            )
    if coef is None and imp is None:
        log.info("%s/%s/%s: model gives neither coefficients nor importances", endpoint, model, fs)
    n = len(names)
    return pd.DataFrame(
        {
            "endpoint": endpoint,
            "model": model,
            "feature_set": fs,
            "feature": names,
            "coefficient": coef if coef is not None and len(coef) == n else np.nan,
            "importance": imp if imp is not None and len(imp) == n else np.nan,
            "importance_kind": kind if imp is not None and len(imp) == n else "",
        },
        columns=COEF_COLUMNS,
    ).astype({"coefficient": float, "importance": float})  # all-NA columns stay numeric


def permutation_importance(
    pipe: Pipeline, X: pd.DataFrame, y: np.ndarray, repeats: int, seed: int
) -> np.ndarray:
    """Mean permutation importance of each selected feature on the preprocessed training rows
    (the model's own ``score``), seeded."""
    from sklearn.inspection import permutation_importance as sk_permutation_importance

    Z = pipe[:-1].transform(X)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = sk_permutation_importance(
            pipe[-1], Z, y, n_repeats=repeats, random_state=seed, n_jobs=1
        )
    return np.asarray(result.importances_mean, float)


def hazard_ratios(
    fs: str, pipe: Pipeline, X: pd.DataFrame, y: np.ndarray, penalizer: float
) -> pd.DataFrame:
    """HR per SD (Wald 95 % CI, p) of each selected feature in one multivariable Cox model refit
    on the training centres' preprocessed data (lifelines, small ridge penalty for stability)."""
    from lifelines import CoxPHFitter

    Z = pipe[:-1].transform(X)
    if Z.shape[1] == 0:
        return pd.DataFrame(columns=HR_COLUMNS)
    frame = Z.copy()
    frame["time"], frame["event"] = y["time"], y["event"].astype(int)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cph = CoxPHFitter(penalizer=penalizer).fit(frame, "time", "event")
    except Exception as err:  # lifelines raises its own convergence errors
        log.warning("%s: Cox refit for hazard ratios failed (%s)", fs, err)
        return pd.DataFrame(columns=HR_COLUMNS)
    s = cph.summary
    return pd.DataFrame(
        {
            "feature_set": fs,
            "model": "cox",
            "feature": s.index.astype(str),
            "hr": s["exp(coef)"].to_numpy(),
            "ci_low": s["exp(coef) lower 95%"].to_numpy(),
            "ci_high": s["exp(coef) upper 95%"].to_numpy(),
            "p": s["p"].to_numpy(),
        },
        columns=HR_COLUMNS,
    )


def harmonization_check(
    features: pd.DataFrame,
    centers: pd.Series,
    train_centers: list[str],
    combat: ComBat,
    n_features: int,
    covariates: pd.DataFrame | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-centre mean/sd of the features with the strongest centre effect, and a 2-D PCA of
    all imaging features, before and after ComBat fitted on the training centres' patients
    (with the protected ``covariates``, indexed by patient_id, when configured).

    Features are chosen by the F statistic across training centres before harmonisation; the PCA
    is fitted on the training patients of each stage and applied to all patients."""
    table = features.set_index("patient_id")
    cols = [c for c in table.columns if (part := parse(c)) is not None and not part.is_qc]
    if not cols:
        log.warning("harmonisation check: no imaging features")
        return pd.DataFrame(columns=CHECK_COLUMNS), pd.DataFrame(columns=EMBED_COLUMNS)
    X = table[cols].astype(float)
    if covariates is not None:
        X = X.join(covariates, how="left")
    X[BATCH_COLUMN] = centers.loc[X.index].astype(str).to_numpy()
    is_train = X[BATCH_COLUMN].isin(train_centers).to_numpy()
    imp = Impute().fit(X[is_train])
    before = imp.transform(X)
    after = combat.fit(before[is_train]).transform(before)
    before = before.drop(columns=[BATCH_COLUMN])
    feats = [c for c in after.columns if c in before.columns]
    center = X[BATCH_COLUMN]
    tr = before[is_train]
    grand = tr[feats].var(axis=0)
    within = tr[feats].groupby(center[is_train]).var().mean(axis=0)
    ratio = (grand / within.replace(0, np.nan)).fillna(0).sort_values(ascending=False)
    top = list(ratio.index[:n_features])
    rows, embed = [], []
    for stage, data in (("before", before), ("after", after)):
        stats = data[top].groupby(center).agg(["mean", "std"])
        for f in top:
            for c in stats.index:
                rows.append(
                    {
                        "feature": f,
                        "center": c,
                        "stage": stage,
                        "mean": stats.loc[c, (f, "mean")],
                        "sd": stats.loc[c, (f, "std")],
                    }
                )
        V = data[feats].to_numpy(float)
        mu, sd = V[is_train].mean(axis=0), V[is_train].std(axis=0)
        Z = (V - mu) / np.where(sd > 0, sd, 1.0)
        pcs = _pca2(Z[is_train], Z)
        for pid, c, pc in zip(data.index, center, pcs, strict=True):
            embed.append(
                {
                    "patient_id": pid,
                    "center": c,
                    "stage": stage,
                    "pc1": pc[0],
                    "pc2": pc[1] if len(pc) > 1 else np.nan,
                }
            )
    return pd.DataFrame(rows, columns=CHECK_COLUMNS), pd.DataFrame(embed, columns=EMBED_COLUMNS)


def _pca2(train: np.ndarray, data: np.ndarray) -> np.ndarray:
    """First two principal components fitted on ``train`` (via the small n x n Gram matrix:
    patients are few, features many), applied to ``data``."""
    mu = train.mean(axis=0)
    centred = train - mu
    evals, evecs = np.linalg.eigh(centred @ centred.T)
    order = np.argsort(evals)[::-1][:2]
    scale = np.sqrt(np.maximum(evals[order], 1e-12))
    axes = (evecs[:, order].T @ centred) / scale[:, None]  # unit-norm loadings (2 x p)
    return (data - mu) @ axes.T
