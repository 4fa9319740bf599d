"""Patient-level validation: nested CV on the training centres, external test on held-out
centres, leave-one-centre-out; hyper-parameters tuned by inner CV inside each training set.

Everything data-driven (imputation, ComBat, filters, selection, model, the decision threshold and
the risk-group cut-off) is fitted on the training patients of a split only. The decision
threshold comes from the inner-CV out-of-fold scores of the selected hyper-parameters on the
training patients (scores of patients the model had not seen, as the test patients' will be); the
risk-group cut-off is a quantile of the final model's scores on its training patients (the same
model and scale as the test scores).
"""

from __future__ import annotations

import itertools
import logging
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import Pipeline

from deltarad.model import response, survival
from deltarad.model.harmonize import BATCH_COLUMN, ComBat
from deltarad.model.stats import decision_threshold
from deltarad.model.steps import Impute, Reduce, univariate_auc, univariate_cindex
from deltarad.runlog import UserError

log = logging.getLogger(__name__)
ENDPOINTS = ("response", "survival")


@dataclass(frozen=True)
class ModelSettings:
    """The ``models:`` block of the config (schema: config.schema.yaml)."""

    seed: int = 20261125
    endpoints: tuple[str, ...] = ENDPOINTS
    outer_folds: int = 5
    inner_folds: int = 3
    loco: bool = True
    harmonize: Mapping[str, Any] = field(default_factory=dict)
    filter: Mapping[str, Any] = field(default_factory=dict)
    selection: Mapping[str, Any] = field(default_factory=dict)
    response_models: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    survival_models: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    threshold: str | float = "youden"
    risk_cutoff: str | float = "median"
    bootstrap: int = 1000
    time_quantiles: tuple[float, ...] = (0.25, 0.5, 0.75)
    hr_penalizer: float = 0.1
    check_features: int = 12
    permutation_repeats: int = 5

    @classmethod
    def from_config(cls, block: Mapping[str, Any]) -> ModelSettings:
        d = cls()
        return cls(
            seed=int(block.get("seed", d.seed)),
            endpoints=tuple(block.get("endpoints", d.endpoints)),
            outer_folds=int(block.get("outer_folds", d.outer_folds)),
            inner_folds=int(block.get("inner_folds", d.inner_folds)),
            loco=bool(block.get("loco", d.loco)),
            harmonize=dict(block.get("harmonize", {})),
            filter=dict(block.get("filter", {})),
            selection=dict(block.get("selection", {})),
            response_models=dict(block.get("response_models", {"logistic": {}})),
            survival_models=dict(block.get("survival_models", {"coxnet": {}})),
            threshold=block.get("threshold", d.threshold),
            risk_cutoff=block.get("risk_cutoff", d.risk_cutoff),
            bootstrap=int(block.get("bootstrap", d.bootstrap)),
            time_quantiles=tuple(block.get("time_quantiles", d.time_quantiles)),
            hr_penalizer=float(block.get("hr_penalizer", d.hr_penalizer)),
            check_features=int(block.get("check_features", d.check_features)),
            permutation_repeats=int(block.get("permutation_repeats", d.permutation_repeats)),
        )

    @property
    def protect(self) -> tuple[str, ...]:
        """Clinical columns ComBat keeps the effects of (``models.harmonize.protect``)."""
        return tuple(str(c) for c in self.harmonize.get("protect", []) or [])

    def models(self, endpoint: str) -> Mapping[str, Mapping[str, Any]]:
        return self.response_models if endpoint == "response" else self.survival_models

    def preprocessing(self) -> Pipeline:
        """The unfitted steps before the model."""
        h, f, s = self.harmonize, self.filter, self.selection
        return Pipeline(
            [
                ("impute", Impute(max_missing=float(f.get("max_missing", 0.5)))),
                (
                    "combat",
                    ComBat(
                        enabled=bool(h.get("enabled", True)),
                        empirical_bayes=bool(h.get("empirical_bayes", True)),
                        unseen=str(h.get("unseen_center", "estimate")),
                        min_batch_size=int(h.get("min_center_size", 2)),
                    ),
                ),
                (
                    "reduce",
                    Reduce(
                        k=int(s.get("k", 10)),
                        method=str(s.get("method", "univariate")),
                        min_variance=float(f.get("min_variance", 1e-8)),
                        max_correlation=float(f.get("max_correlation", 0.9)),
                        prescreen=int(f.get("prescreen", 200)),
                        seed=self.seed,
                    ),
                ),
            ]
        )


@dataclass(frozen=True)
class Split:
    """Training and test positions of one fit; ``evaluation`` names the test set's family."""

    evaluation: str
    fold: int
    train: np.ndarray
    test: np.ndarray


def grid(params: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every combination of the list-valued parameters; scalars are fixed."""
    keys = sorted(params)
    values = [params[k] if isinstance(params[k], list) else [params[k]] for k in keys]
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*values)]


def stratified_folds(strata: np.ndarray, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified k folds (k lowered to the smallest class size); [] when fewer than 2 folds."""
    _, counts = np.unique(strata, return_counts=True)
    k = min(k, int(counts.min()) if len(counts) > 1 else len(strata))
    if k < 2:
        return []
    skf = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    return list(skf.split(np.zeros(len(strata)), strata))


def make_splits(
    centers: np.ndarray, strata: np.ndarray, external: list[str], settings: ModelSettings
) -> list[Split]:
    """Nested-CV folds on the training centres, the external split, and LOCO splits."""
    centers = np.asarray(centers, str)
    is_train = ~np.isin(centers, external)
    train_pos = np.nonzero(is_train)[0]
    out = []
    folds = stratified_folds(strata[train_pos], settings.outer_folds, settings.seed)
    if not folds:
        log.warning(
            "nested_cv: too few patients per class/event status for %d folds; skipped",
            settings.outer_folds,
        )
    for i, (tr, te) in enumerate(folds):
        out.append(Split("nested_cv", i, train_pos[tr], train_pos[te]))
    out.append(Split("external", 0, train_pos, np.nonzero(~is_train)[0]))
    train_centers = sorted(str(c) for c in set(centers[train_pos]))
    if settings.loco and len(train_centers) < 2:
        log.warning("loco: needs at least 2 training centres (have %s); skipped", train_centers)
    elif settings.loco:
        for i, c in enumerate(train_centers):
            test = train_pos[centers[train_pos] == c]
            train = train_pos[centers[train_pos] != c]
            out.append(Split(f"loco:{c}", i, train, test))
    return out


def tuning_score(endpoint: str, y: np.ndarray, score: np.ndarray) -> float:
    """AUC (response) or Harrell's C (survival) of out-of-fold scores; NaN where undefined."""
    ok = np.isfinite(score)
    if ok.sum() < 2:
        return math.nan
    if endpoint == "response":
        yy = np.asarray(y)[ok]
        if yy.min() == yy.max():
            return math.nan
        return float(univariate_auc(score[ok, None], yy)[0])
    yy = y[ok]
    if not yy["event"].any():
        return math.nan
    return float(univariate_cindex(score[ok, None], yy["time"], yy["event"])[0])


@dataclass
class Fitted:
    """One model fitted on a split's training patients."""

    pipeline: Pipeline
    params: dict[str, Any]
    threshold: float
    inner_score: float


def _module(endpoint: str) -> Any:
    return response if endpoint == "response" else survival


def _fit_model(endpoint: str, name: str, params: dict, seed: int, X: pd.DataFrame, y: np.ndarray):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _module(endpoint).make(name, params, seed).fit(X, y)


def _cutoff(endpoint: str, settings: ModelSettings, y: np.ndarray, score: np.ndarray) -> float:
    ok = np.isfinite(score)
    if ok.sum() == 0:
        return math.nan
    if endpoint == "response":
        return decision_threshold(settings.threshold, np.asarray(y)[ok], score[ok])
    rule = settings.risk_cutoff
    q = 0.5 if rule == "median" else float(rule)
    return float(np.quantile(score[ok], q))


def fit_split(
    endpoint: str,
    X: pd.DataFrame,
    y: np.ndarray,
    strata: np.ndarray,
    train: np.ndarray,
    settings: ModelSettings,
    seed: int,
    what: str,
) -> dict[str, Fitted]:
    """Tune every configured model by inner CV on ``train`` and refit on all of ``train``.

    The preprocessing is shared by the models of an endpoint: it is fitted once per inner fold
    and once on the whole training set (it does not depend on the model's hyper-parameters).
    """
    models = settings.models(endpoint)
    if endpoint == "survival" and not y[train]["event"].any():
        raise UserError(f"{what}: no events among the {len(train)} training patients; skipped")
    if endpoint == "response" and len(set(np.asarray(y)[train])) < 2:
        raise UserError(f"{what}: training patients have a single response class; skipped")
    small = X[BATCH_COLUMN].iloc[train].value_counts()
    small = small[small < int(settings.harmonize.get("min_center_size", 2))]
    for center, count in small.items():
        log.warning(
            "%s: centre %s has %d training patient(s): ComBat leaves it unadjusted",
            what,
            center,
            count,
        )
    cands = {m: grid(p) for m, p in models.items()}
    oof = {m: np.full((len(cands[m]), len(train)), np.nan) for m in models}
    inner = stratified_folds(strata[train], settings.inner_folds, seed)
    if not inner:
        extra = ", no decision threshold" if endpoint == "response" else ""
        log.warning("%s: too few patients for inner CV; first grid point%s", what, extra)
    for itr, iva in inner:
        tr, va = train[itr], train[iva]
        if endpoint == "survival" and not y[tr]["event"].any():
            log.warning("%s: an inner fold has no events in training; fold skipped", what)
            continue
        if endpoint == "response" and len(set(np.asarray(y)[tr])) < 2:
            log.warning("%s: an inner fold has a single class in training; fold skipped", what)
            continue
        pre = settings.preprocessing()
        Xtr = pre.fit_transform(X.iloc[tr], y[tr])
        if Xtr.shape[1] == 0:  # said once below, for the whole training set
            continue
        Xva = pre.transform(X.iloc[va])
        for m in models:
            for ci, params in enumerate(cands[m]):
                try:
                    model = _fit_model(endpoint, m, params, seed, Xtr, y[tr])
                    oof[m][ci, iva] = _module(endpoint).score(model, Xva)
                except (ValueError, ArithmeticError) as err:
                    log.warning("%s, %s %s: inner fit failed (%s)", what, m, params, err)
    pre = settings.preprocessing()
    Xtr = pre.fit_transform(X.iloc[train], y[train])
    if Xtr.shape[1] == 0:
        raise UserError(
            f"{what}: no feature survives the filters on the {len(train)} training patients "
            "(all missing in more than models.filter.max_missing of them, or constant); skipped"
        )
    out = {}
    for m in models:
        scores = [tuning_score(endpoint, y[train], oof[m][ci]) for ci in range(len(cands[m]))]
        finite = [s if np.isfinite(s) else -np.inf for s in scores]
        best = int(np.argmax(finite))
        try:
            model = _fit_model(endpoint, m, cands[m][best], seed, Xtr, y[train])
        except (ValueError, ArithmeticError) as err:
            log.warning("%s, %s: fit failed (%s); model skipped", what, m, err)
            continue
        # Response: threshold on the inner-CV scores (probabilities share a scale; in-sample
        # forest probabilities are overconfident). Survival: quantile of the final model's own
        # training scores (risk scales differ between models fitted on different numbers of
        # patients, e.g. a random survival forest's summed cumulative hazard).
        basis = oof[m][best] if endpoint == "response" else survival.score(model, Xtr)
        out[m] = Fitted(
            Pipeline([*pre.steps, ("model", model)]),
            cands[m][best],
            _cutoff(endpoint, settings, y[train], basis),
            scores[best],
        )
    return out


def oracle_cutoff(
    endpoint: str, settings: ModelSettings, y: np.ndarray, score: np.ndarray
) -> float:
    """The oracle's threshold / cut-off from the training patients' true scores."""
    return _cutoff(endpoint, settings, y, np.asarray(score, float))
