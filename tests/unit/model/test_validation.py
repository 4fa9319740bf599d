"""Splits, in-fold fitting and the clear messages for degenerate data."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from deltarad.model.featuresets import EmptyFeatureSet, FeatureSet, design, encode_clinical
from deltarad.model.harmonize import BATCH_COLUMN
from deltarad.model.stats import surv_array
from deltarad.model.steps import Reduce
from deltarad.model.validation import ModelSettings, fit_split, grid, make_splits
from deltarad.runlog import UserError

SETTINGS = ModelSettings.from_config(
    {
        "outer_folds": 3,
        "inner_folds": 2,
        "selection": {"k": 3},
        "response_models": {"logistic": {"C": [0.1, 1.0]}},
        "survival_models": {"coxnet": {"alpha": [0.1]}},
    }
)


def cohort(n_per: int = 10, p: int = 20, seed: int = 0):
    rng = np.random.default_rng(seed)
    centers = np.repeat(["A", "B", "C", "D"], n_per)
    n = len(centers)
    z = rng.normal(size=n)
    X = pd.DataFrame(
        rng.normal(size=(n, p)), columns=[f"baseline__CT__tumor__pyrad__f{i}" for i in range(p)]
    )
    X.iloc[:, 0] += 2 * z
    X[BATCH_COLUMN] = centers
    X.index = [f"P{i:03d}" for i in range(n)]
    y = (z + rng.normal(0, 0.5, n) > 0).astype(int)
    t = rng.exponential(np.exp(-z)) * 10 + 0.1
    ys = surv_array(t, rng.random(n) < 0.7)
    return X, y, ys, centers


def test_splits_are_patient_level_and_keep_external_out():
    X, y, _, centers = cohort()
    splits = make_splits(centers, y, ["D"], SETTINGS)
    evaluations = [s.evaluation for s in splits]
    assert evaluations.count("nested_cv") == 3
    assert "external" in evaluations and {"loco:A", "loco:B", "loco:C"} <= set(evaluations)
    ext = np.nonzero(centers == "D")[0]
    for s in splits:
        assert not set(s.train) & set(s.test)
        assert not set(s.train) & set(ext)  # the external centre never trains
    nested = [s for s in splits if s.evaluation == "nested_cv"]
    assert sorted(np.concatenate([s.test for s in nested])) == sorted(np.nonzero(centers != "D")[0])


def test_threshold_and_cutoff_come_from_training_data_only():
    X, y, ys, centers = cohort()
    train, test = np.arange(0, 30), np.arange(30, 40)
    altered = X.copy()
    altered.iloc[test, :-1] = 1e3  # test patients' features changed beyond recognition
    y_alt, ys_alt = y.copy(), ys.copy()
    y_alt[test] = 1 - y_alt[test]
    ys_alt["time"][test] = 0.01
    for endpoint, a, b in (("response", y, y_alt), ("survival", ys, ys_alt)):
        strata = a if endpoint == "response" else a["event"].astype(int)
        f1 = fit_split(endpoint, X, a, strata, train, SETTINGS, 1, "t")
        f2 = fit_split(endpoint, altered, b, strata, train, SETTINGS, 1, "t")
        for m in f1:
            assert np.isfinite(f1[m].threshold)
            assert f1[m].threshold == f2[m].threshold
            c1 = f1[m].pipeline.named_steps["combat"]
            c2 = f2[m].pipeline.named_steps["combat"]
            np.testing.assert_array_equal(c1.gamma_star_, c2.gamma_star_)
            np.testing.assert_array_equal(c1.grand_mean_, c2.grand_mean_)


def test_fold_without_events_gives_a_clear_message():
    X, _, ys, _ = cohort()
    ys["event"][:] = False
    with pytest.raises(UserError, match="no events among the 30 training patients"):
        fit_split(
            "survival",
            X,
            ys,
            ys["event"].astype(int),
            np.arange(30),
            SETTINGS,
            1,
            "survival/x/nested_cv/fold 0",
        )


def test_single_class_training_set_gives_a_clear_message():
    X, y, _, _ = cohort()
    with pytest.raises(UserError, match="single response class"):
        fit_split("response", X, np.zeros_like(y), y, np.arange(30), SETTINGS, 1, "r")


def test_empty_and_absent_feature_sets_say_why():
    X, _, _, centers = cohort()
    feats = X.drop(columns=BATCH_COLUMN).rename_axis("patient_id").reset_index()
    clinical = pd.DataFrame({"patient_id": feats["patient_id"], "age": 60, "sex": "F"})
    centres = pd.Series(centers, index=feats["patient_id"])
    deep = FeatureSet.from_config({"name": "deep", "timepoints": ["*"], "sources": ["deep"]})
    with pytest.raises(
        EmptyFeatureSet,
        match="feature set 'deep': no column .*sources present: "
        r"\['pyrad'\]",
    ):
        design(deep, feats, clinical, centres)
    with pytest.raises(UserError, match="clinical covariate 'stage' is not a column"):
        design(FeatureSet("c", clinical=("stage",)), feats, clinical, centres)


def test_reduce_keeps_clinical_and_k_imaging_features():
    X, y, _, _ = cohort()
    X["age"] = np.arange(len(X), dtype=float)
    red = Reduce(k=3).fit(X.drop(columns=BATCH_COLUMN), y)
    assert red.features_[0] == "age" and len(red.features_) == 4
    assert "baseline__CT__tumor__pyrad__f0" in red.features_  # the planted signal
    for method in ("mrmr", "l1"):
        chosen = Reduce(k=3, method=method).fit(X.drop(columns=BATCH_COLUMN), y).features_
        assert "baseline__CT__tumor__pyrad__f0" in chosen and len(chosen) <= 4


def test_clinical_encoding_and_grid():
    clinical = pd.DataFrame(
        {"patient_id": ["a", "b", "c"], "sex": ["F", "M", None], "stage": ["2", "3", "4"]}
    )
    enc = encode_clinical(clinical, ["sex", "stage"])
    assert list(enc.columns) == ["sex_M", "stage"]
    assert enc.loc["b", "sex_M"] == 1 and np.isnan(enc.loc["c", "sex_M"])
    assert grid({"a": [1, 2], "b": 3}) == [{"a": 1, "b": 3}, {"a": 2, "b": 3}]


def test_loco_needs_two_training_centres(caplog):
    _, y, _, _ = cohort()
    centers = np.repeat(["A", "B"], 20)
    with caplog.at_level(logging.WARNING):
        splits = make_splits(centers, y, ["B"], SETTINGS)
    assert "loco: needs at least 2 training centres" in caplog.text
    assert not [s for s in splits if s.evaluation.startswith("loco")]


def test_feature_set_with_no_surviving_features_gives_a_clear_message():
    X, y, ys, _ = cohort()
    X[[c for c in X.columns if c.startswith("baseline")]] = 1.0  # every feature constant
    for endpoint, target, strata in (("response", y, y), ("survival", ys, ys["event"])):
        with pytest.raises(UserError, match="no feature survives the filters on the 30 training"):
            fit_split(endpoint, X, target, strata.astype(int), np.arange(30), SETTINGS, 1, "e")
