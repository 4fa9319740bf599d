"""Evaluation families of the splits and the survival curves behind the integrated Brier score.

Fitted models give survival functions directly; a bare risk score (the oracle's true latent risk,
an end-to-end network's risk head) gets them from a one-covariate Cox model of the training
patients' scores (:func:`deltarad.model.survival.score_model`), so every risk score on the same
test patients has an IBS computed the same way. ``rec`` is the stage's
:class:`deltarad.model.run.Recorder` (ids, y, centres by position; curves by key).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from deltarad.model import survival
from deltarad.model.stats import weighted_times
from deltarad.model.validation import Split

log = logging.getLogger(__name__)


def ibs_grid(test_t: np.ndarray, train_t: np.ndarray) -> np.ndarray:
    """IBS time grid: 10-80 % quantiles of the test times, inside both follow-ups."""
    if len(test_t) < 2:
        return np.array([])
    grid = np.unique(np.quantile(test_t, np.linspace(0.1, 0.8, 12)))
    return grid[(grid >= test_t.min()) & (grid < min(test_t.max(), train_t.max()))]


def evaluations(splits: Sequence[Split], centers: np.ndarray) -> dict[str, tuple]:
    """evaluation -> (test positions, training positions) for metrics needing training data."""
    out: dict[str, tuple] = {}
    nested = [s for s in splits if s.evaluation == "nested_cv"]
    if nested:
        out["nested_cv"] = (
            np.concatenate([s.test for s in nested]),
            np.union1d(nested[0].train, nested[0].test),
        )
    for s in splits:
        if s.evaluation == "external":
            for c in sorted(set(centers[s.test])):
                out[f"external:{c}"] = (s.test[centers[s.test] == c], s.train)
        elif s.evaluation != "nested_cv":
            out[s.evaluation] = (s.test, s.train)
    return out


def targets(s: Split, centers: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """(evaluation, test positions) a split's test patients belong to."""
    if s.evaluation != "external":
        return [(s.evaluation, s.test)]
    return [(f"external:{c}", s.test[centers[s.test] == c]) for c in sorted(set(centers[s.test]))]


def curve_grids(
    rec: Any, s: Split, splits: Sequence[Split], test: np.ndarray | None = None
) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(evaluation, test positions, time grid) of a split's test patients: the IBS grid of each
    evaluation comes from that evaluation's pooled test and training times."""
    evals = evaluations(splits, rec.centers)
    y = rec.y
    out = []
    for ev, pos in targets(s, rec.centers):
        if test is not None:
            pos = np.intersect1d(pos, test)
        ev_test, ev_train = evals[ev]
        grid = weighted_times(y[ev_train], ibs_grid(y[ev_test]["time"], y[ev_train]["time"]))
        if len(grid) >= 2 and len(pos):
            out.append((ev, pos, grid))
    return out


def keep_curves(rec: Any, key: tuple, pos: np.ndarray, S: np.ndarray, grid: np.ndarray) -> None:
    """Add test patients' survival curves (rows) to ``rec.curves[key]``."""
    frame = pd.DataFrame(S, index=rec.ids[pos], columns=grid)
    rec.curves[key] = pd.concat([rec.curves[key], frame]) if key in rec.curves else frame


def store_model_curves(
    rec: Any, fitted: dict, X: pd.DataFrame, s: Split, splits: Sequence[Split], fs: str
) -> None:
    """Survival curves of the test patients on their evaluation's time grid (for the IBS)."""
    for ev, pos, grid in curve_grids(rec, s, splits):
        for m, f in fitted.items():
            Z = f.pipeline[:-1].transform(X.iloc[pos])
            keep_curves(rec, (m, fs, ev), pos, survival.survival_at(f.pipeline[-1], Z, grid), grid)


def store_score_curves(
    rec: Any,
    model: str,
    fs: str,
    s: Split,
    train: np.ndarray,
    score: np.ndarray,
    splits: Sequence[Split],
    test: np.ndarray | None = None,
) -> None:
    """Survival curves for a bare risk score (oracle, end-to-end network) on a split's test
    patients, through a one-covariate Cox model of the ``train`` patients' scores; ``score``
    is indexed by position (NaN where a patient has none)."""
    grids = curve_grids(rec, s, splits, test)
    if not grids:
        return
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cox = survival.score_model(score[train], rec.y[train])
    except (ValueError, ArithmeticError, np.linalg.LinAlgError) as err:
        log.warning(
            "%s/%s/%s fold %d: no survival curves for the IBS (%s)",
            model,
            fs,
            s.evaluation,
            s.fold,
            err,
        )
        return
    for ev, pos, grid in grids:
        S = survival.survival_at(cox, score[pos][:, None], grid)
        keep_curves(rec, (model, fs, ev), pos, S, grid)
