"""The whole model stage on small synthetic tables: contract columns, permuted labels, a
one-patient centre, the oracle and network predictions."""

from __future__ import annotations

import logging

import joblib
import numpy as np
import pandas as pd
import pytest

from deltarad import io
from deltarad.model.run import PREDICTION_COLUMNS, run_models

CONFIG = {
    "study": {"external_centers": ["D"]},
    "segmentation": {"methods": ["mtms"]},
    "models": {
        "seed": 7,
        "outer_folds": 3,
        "inner_folds": 2,
        "bootstrap": 200,
        "selection": {"k": 3},
        "harmonize": {"protect": ["age", "sex"]},
        "feature_sets": [
            {"name": "clinical", "clinical": ["age", "sex"]},
            {"name": "clinical+imaging", "clinical": ["age"], "timepoints": ["baseline"]},
            {"name": "deep", "timepoints": ["*"], "sources": ["deep"]},
        ],
        "response_models": {"logistic": {"C": [0.1, 1.0]}},
        "survival_models": {"coxnet": {"alpha": [0.1]}},
    },
}
NAMES = [
    "metrics",
    "predictions",
    "td_auc",
    "hazard_ratios",
    "coefficients",
    "harmonization_check",
    "harmonization_embedding",
    "delong",
]


def write_cohort(root, n_per=15, p=30, permute=False, extra_center=False, seed=0):
    rng = np.random.default_rng(seed)
    centers = list(np.repeat(["A", "B", "C", "D"], n_per)) + (["E"] if extra_center else [])
    n = len(centers)
    ids = [f"P{i:03d}" for i in range(n)]
    z = rng.normal(size=n)
    shift = {"A": 0, "B": 2, "C": -1, "D": 1, "E": 3}
    feats = pd.DataFrame({"patient_id": ids})
    for i in range(p):
        signal = z if i < 3 else 0
        feats[f"baseline__CT__tumor__pyrad__f{i}"] = (
            signal + rng.normal(size=n) + np.array([shift[c] for c in centers])
        )
    feats["baseline__CT__tumor__qc__failed"] = False
    response = (z + rng.normal(0, 0.7, n) > 0).astype(int)
    time = rng.exponential(np.exp(-z)) * 20 + 0.5
    event = (rng.random(n) < 0.75).astype(int)
    if permute:
        response = rng.permutation(response)
        perm = rng.permutation(n)
        time, event = time[perm], event[perm]
    clinical = pd.DataFrame(
        {
            "patient_id": ids,
            "response": response,
            "time": time.round(2),
            "event": event,
            "age": rng.integers(40, 80, n),
            "sex": rng.choice(["F", "M"], n),
        }
    )
    samples = pd.DataFrame({"patient_id": ids, "center": centers})
    latent = pd.DataFrame(
        {
            "patient_id": ids,
            "center": centers,
            "latent_risk": z,
            "response_probability": 1 / (1 + np.exp(-1.5 * z)),
            "response_probability_followup": 1 / (1 + np.exp(-2.0 * z)),
        }
    )
    network = pd.DataFrame(
        {
            "patient_id": ids,
            "method": "mtms",
            "response_probability": 1 / (1 + np.exp(-z)),
            "risk_score": z,
            "split": ["test" if c == "D" else "train" for c in centers],
        }
    )
    feats.to_parquet(root / "features.parquet", index=False)
    for name, table in (
        ("clinical", clinical),
        ("samples", samples),
        ("latent", latent),
        ("network", network),
    ):
        io.write_table(table, root / f"{name}.tsv")
    outputs = {n: root / f"out/{n}.tsv" for n in NAMES}
    outputs["models"] = root / "out/models/fitted"
    return outputs


def run(root, outputs, config=CONFIG, threads=1):
    return run_models(
        root / "features.parquet",
        root / "clinical.tsv",
        root / "samples.tsv",
        outputs,
        config,
        latent=root / "latent.tsv",
        network=root / "network.tsv",
        threads=threads,
    )


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    outputs = write_cohort(root)
    run(root, outputs)
    return outputs


def test_tables_have_the_contract_columns(finished):
    metrics = io.read_tsv(finished["metrics"])
    assert list(metrics.columns) == [
        "endpoint",
        "model",
        "feature_set",
        "evaluation",
        "metric",
        "value",
        "ci_low",
        "ci_high",
        "n",
    ]
    pred = io.read_tsv(finished["predictions"])
    assert list(pred.columns) == PREDICTION_COLUMNS
    assert PREDICTION_COLUMNS[:6] == [
        "patient_id",
        "endpoint",
        "model",
        "feature_set",
        "evaluation",
        "score",
    ]
    assert set(metrics["evaluation"]) == {"nested_cv", "external:D", "loco:A", "loco:B", "loco:C"}
    assert "deep" not in set(metrics["feature_set"])  # absent source: skipped, not a crash
    assert {"oracle", "network:mtms"} <= set(metrics["feature_set"])
    net = metrics[metrics["feature_set"] == "network:mtms"]
    assert set(net["evaluation"]) == {"external:D"}
    surv = pred[pred["endpoint"] == "survival"]
    assert set(surv["risk_group"].dropna()) == {"high", "low"}
    for name, cols in (
        (
            "td_auc",
            ["endpoint", "model", "feature_set", "evaluation", "time", "auc", "ci_low", "ci_high"],
        ),
        ("hazard_ratios", ["feature_set", "model", "feature", "hr", "ci_low", "ci_high", "p"]),
        ("harmonization_check", ["feature", "center", "stage", "mean", "sd"]),
        ("harmonization_embedding", ["patient_id", "center", "stage", "pc1", "pc2"]),
    ):
        table = io.read_tsv(finished[name])
        assert list(table.columns) == cols and len(table), name
    assert len(io.read_tsv(finished["delong"]))
    model = joblib.load(finished["models"] / "response/clinical+imaging/logistic.joblib")
    assert hasattr(model, "predict_proba")
    metric_names = set(metrics["metric"])
    assert {
        "auc",
        "sensitivity",
        "specificity",
        "brier",
        "calibration_slope",
        "c_index",
        "c_index_uno",
        "td_auc",
        "ibs",
        "logrank_p",
        "hazard_ratio",
    } <= metric_names


def test_models_find_the_planted_signal_and_oracle_is_best(finished):
    m = io.read_tsv(finished["metrics"])
    m["value"] = m["value"].astype(float)

    def value(fs, metric, ev="nested_cv"):
        return m[(m.feature_set == fs) & (m.metric == metric) & (m.evaluation == ev)]["value"]

    assert value("clinical+imaging", "auc").max() > 0.7
    assert value("oracle", "auc").iloc[0] >= value("clinical+imaging", "auc").max() - 0.05
    assert value("clinical+imaging", "c_index").max() > 0.6


def test_permuted_labels_give_cis_covering_half(tmp_path):
    outputs = write_cohort(tmp_path, permute=True, seed=3)
    run(tmp_path, outputs)
    m = io.read_tsv(outputs["metrics"])
    rows = m[
        (m.evaluation == "nested_cv")
        & m.metric.isin(["auc", "c_index"])
        & (m.feature_set == "clinical+imaging")
    ]
    assert len(rows) == 2
    assert (rows["ci_low"].astype(float) < 0.5).all()
    assert (rows["ci_high"].astype(float) > 0.5).all()


def test_one_patient_centre_is_reported_not_fatal(tmp_path, caplog):
    outputs = write_cohort(tmp_path, extra_center=True)
    config = {
        **CONFIG,
        "study": {"external_centers": ["D", "E"]},
        "models": {**CONFIG["models"], "feature_sets": CONFIG["models"]["feature_sets"][1:2]},
    }
    run(tmp_path, outputs, config)
    m = io.read_tsv(outputs["metrics"])
    e = m[(m.evaluation == "external:E") & (m.metric == "auc")]
    assert len(e) and e["value"].isna().all()
    assert "single response class (n=1)" in caplog.text


def test_tiny_cohort_runs_with_clear_messages(tmp_path, caplog):
    """2 centres x 3 patients (config/test.yaml): NA metrics and messages, no crash."""
    outputs = write_cohort(tmp_path, n_per=3)
    keep = {"P000", "P001", "P002", "P009", "P010", "P011"}  # centres A and D
    for name in ("clinical", "samples", "latent", "network"):
        table = io.read_tsv(tmp_path / f"{name}.tsv")
        io.write_table(table[table["patient_id"].isin(keep)], tmp_path / f"{name}.tsv")
    feats = pd.read_parquet(tmp_path / "features.parquet")
    feats[feats["patient_id"].isin(keep)].to_parquet(tmp_path / "features.parquet", index=False)
    forest = {"random_survival_forest": {"n_estimators": 5}}
    models = {
        **CONFIG["models"],
        "survival_models": {**CONFIG["models"]["survival_models"], **forest},
    }
    run(tmp_path, outputs, {**CONFIG, "models": models})
    m = io.read_tsv(outputs["metrics"])
    assert list(m.columns)[:4] == ["endpoint", "model", "feature_set", "evaluation"]
    assert set(m["evaluation"]) <= {"external:D"}
    assert "nested_cv: too few patients" in caplog.text
    assert "loco: needs at least 2 training centres" in caplog.text


def test_threads_do_not_change_results(finished, tmp_path):
    outputs = write_cohort(tmp_path)
    run(tmp_path, outputs, threads=2)
    for name in ("metrics", "predictions"):
        a = io.read_tsv(finished[name])
        b = io.read_tsv(outputs[name])
        pd.testing.assert_frame_equal(a, b)


def test_oracle_rows_are_complete(finished):
    """Every metric a model gets on some test patients, the oracle gets on the same patients
    (the IBS through a Cox model of its training scores), with a CI where the models have one."""
    m = io.read_tsv(finished["metrics"])
    for c in ("value", "ci_low", "ci_high"):
        m[c] = m[c].astype(float)
    for (endpoint, ev), group in m.groupby(["endpoint", "evaluation"]):
        models = group[~group["model"].isin(["oracle", "end_to_end"])]
        names = {"response": ["oracle", "oracle:followup"], "survival": ["oracle"]}[endpoint]
        assert set(group.loc[group["model"] == "oracle", "feature_set"]) == set(names)
        for name in names:
            oracle = group[group["feature_set"] == name].set_index("metric")
            assert set(models["metric"]) == set(oracle.index), (endpoint, ev, name)
            finite = set(models.loc[models["value"].notna(), "metric"])
            missing = {x for x in finite if not np.isfinite(oracle.loc[x, "value"])}
            assert not missing - {"hazard_ratio", "logrank_p"}, (endpoint, ev, name, missing)
            with_ci = set(models.loc[models["ci_low"].notna(), "metric"])
            no_ci = {x for x in with_ci & finite if not np.isfinite(oracle.loc[x, "ci_low"])}
            assert not no_ci - {"hazard_ratio"}, (endpoint, ev, name, no_ci)
    ibs = m[(m["model"] == "oracle") & (m["metric"] == "ibs")].set_index("evaluation")
    assert ibs.loc["external:D", "ci_low"] < ibs.loc["external:D", "value"]
    assert ibs.loc["external:D", "value"] < ibs.loc["external:D", "ci_high"]
    network = m[(m["feature_set"] == "network:mtms") & (m["metric"] == "ibs")]
    assert network["value"].notna().all()


def test_td_auc_table_has_bootstrap_cis(finished):
    td = io.read_tsv(finished["td_auc"])
    for c in ("auc", "ci_low", "ci_high"):
        td[c] = td[c].astype(float)
    ok = td.dropna(subset=["ci_low"])
    assert len(ok) > 0.8 * len(td)
    assert ((ok["ci_low"] <= ok["auc"] + 1e-12) & (ok["auc"] <= ok["ci_high"] + 1e-12)).all()
    m = io.read_tsv(finished["metrics"])
    rows = m[(m["metric"] == "td_auc") & m["value"].notna()]
    assert rows["ci_low"].notna().all()


def test_delong_holm_within_each_evaluation(finished):
    from deltarad.model.stats import holm

    d = io.read_tsv(finished["delong"])
    d["p"], d["p_holm"] = d["p"].astype(float), d["p_holm"].astype(float)
    ok = d["p"].notna()
    assert (d.loc[ok, "p_holm"] >= d.loc[ok, "p"] - 1e-15).all()
    assert d.loc[~ok, "p_holm"].isna().all()
    for _, family in d.groupby(["endpoint", "evaluation"]):
        np.testing.assert_allclose(family["p_holm"], holm(family["p"].to_numpy()))


def test_protected_covariates_are_not_model_features(finished):
    coef = io.read_tsv(finished["coefficients"])
    assert not coef["feature"].str.startswith("__").any()
    model = joblib.load(finished["models"] / "survival/clinical+imaging/coxnet.joblib")
    assert model.named_steps["combat"].protected_ == ["__protect__age", "__protect__sex_M"]


def test_random_survival_forest_gets_seeded_permutation_importances(caplog):
    from deltarad.figures.models import COEFFICIENT_COLUMNS
    from deltarad.model import summaries
    from deltarad.model.stats import surv_array
    from deltarad.model.validation import ModelSettings, fit_split

    rng = np.random.default_rng(1)
    n = 60
    X = pd.DataFrame(
        rng.normal(size=(n, 4)), columns=[f"baseline__CT__tumor__pyrad__f{i}" for i in range(4)]
    )
    X["__center__"] = np.repeat(["A", "B"], n // 2)
    time = rng.exponential(np.exp(-1.5 * X["baseline__CT__tumor__pyrad__f0"].to_numpy())) * 10
    y = surv_array(time, rng.random(n) < 0.8)
    settings = ModelSettings.from_config(
        {"survival_models": {"random_survival_forest": {"n_estimators": 20}}, "inner_folds": 2}
    )
    train = np.arange(n)
    fitted = fit_split("survival", X, y, y["event"].astype(int), train, settings, 3, "t")
    pipe = fitted["random_survival_forest"].pipeline
    tables = [
        summaries.coefficients("survival", "random_survival_forest", "fs", pipe, X, y, 5, 3)
        for _ in range(2)
    ]
    pd.testing.assert_frame_equal(tables[0], tables[1])  # seeded
    t = tables[0].set_index("feature")
    assert (t["importance_kind"] == "permutation").all() and t["coefficient"].isna().all()
    assert t["importance"].idxmax() == "baseline__CT__tumor__pyrad__f0"
    assert list(summaries.COEF_COLUMNS[: len(COEFFICIENT_COLUMNS)]) == COEFFICIENT_COLUMNS
    # Training patients without a comparable pair (tiny cohorts): NA and a message, no crash.
    only_last = surv_array(time, time == time.max())
    with caplog.at_level(logging.WARNING):
        t = summaries.coefficients("survival", "rsf", "fs", pipe, X, only_last, 5, 3)
    assert t["importance"].isna().all()
    assert "rsf/fs: no permutation importances on the 60 training patients" in caplog.text


@pytest.mark.parametrize("heads", [["segmentation", "response"], ["segmentation"]])
def test_deep_features_of_an_outcome_trained_encoder_only_on_unseen_patients(tmp_path, heads):
    """The encoder of a network with an outcome head has seen its train/val patients' labels:
    its deep features are evaluated only on folds without those patients (here: external D).
    A segmentation-only encoder has seen no labels and keeps every evaluation."""
    outputs = write_cohort(tmp_path, n_per=10, p=6)
    feats = pd.read_parquet(tmp_path / "features.parquet")
    rng = np.random.default_rng(3)
    for i in range(4):
        feats[f"baseline__CT__tumor__deep__l1_f{i}_mean"] = rng.normal(size=len(feats))
    feats.to_parquet(tmp_path / "features.parquet", index=False)
    config = {
        **CONFIG,
        "models": {
            **CONFIG["models"],
            "endpoints": ["response"],
            "loco": True,
            "bootstrap": 50,
            "feature_sets": [
                {"name": "clinical", "clinical": ["age", "sex"]},
                {"name": "deep", "timepoints": ["*"], "sources": ["deep"]},
            ],
        },
        "segmentation": {"methods": ["mtms"], "presets": {"mtms": {"heads": heads}}},
        "features": {"deep": {"method": "mtms"}},
    }
    run(tmp_path, outputs, config=config)
    m = io.read_tsv(outputs["metrics"])
    deep = set(m.loc[m["feature_set"] == "deep", "evaluation"])
    clinical = set(m.loc[m["feature_set"] == "clinical", "evaluation"])
    assert "nested_cv" in clinical and any(e.startswith("loco:") for e in clinical)
    if "response" in heads:
        assert deep == {"external:D"}
    else:
        assert deep == clinical
