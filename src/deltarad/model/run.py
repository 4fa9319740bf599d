"""The model stage: every endpoint x feature set x model x evaluation, and the tables it writes.

Entry point of the Snakemake rule ``models`` (workflow/rules/model.smk): :func:`run_models`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
from joblib import Parallel, delayed

from deltarad import io
from deltarad.model import curves, evaluate, summaries, survival
from deltarad.model import response as response_models
from deltarad.model.featuresets import (
    EmptyFeatureSet,
    FeatureSet,
    design,
    protected_covariates,
)
from deltarad.model.stats import surv_array
from deltarad.model.validation import ModelSettings, Split, fit_split, make_splits, oracle_cutoff
from deltarad.runlog import UserError
from deltarad.segment.stage import NETWORK_PREDICTION_COLUMNS

log = logging.getLogger(__name__)
PREDICTION_COLUMNS = [
    "patient_id",
    "endpoint",
    "model",
    "feature_set",
    "evaluation",
    "score",
    "center",
    "fold",
    "response",
    "time",
    "event",
    "risk_group",
    "threshold",
]
ORACLE = "oracle"


@dataclass(frozen=True)
class Outputs:
    metrics: Path
    predictions: Path
    td_auc: Path
    hazard_ratios: Path
    coefficients: Path
    harmonization_check: Path
    harmonization_embedding: Path
    delong: Path
    models: Path  # {models}/{endpoint}/{feature_set}/{model}.joblib

    @classmethod
    def from_mapping(cls, paths: Mapping[str, Any]) -> Outputs:
        return cls(**{k: Path(paths[k]) for k in cls.__dataclass_fields__})

    def model_path(self, endpoint: str, feature_set: str, model: str) -> Path:
        return self.models / endpoint / feature_set / f"{model}.joblib"


@dataclass
class Cohort:
    """Patients with features, clinical data and a centre."""

    features: pd.DataFrame
    clinical: pd.DataFrame
    centers: pd.Series

    @classmethod
    def load(cls, features: str | Path, clinical: str | Path, samples: str | Path) -> Cohort:
        feats = pd.read_parquet(features)
        if "patient_id" not in feats.columns:
            feats = feats.reset_index().rename(columns={"index": "patient_id"})
        clin = io.read_tsv(clinical)
        centers = io.read_tsv(samples).groupby("patient_id")["center"].first()
        ids = sorted(set(feats["patient_id"]) & set(clin["patient_id"]) & set(centers.index))
        missing = sorted(set(clin["patient_id"]) - set(ids))
        if missing:
            log.info(
                "%d patient(s) without features (dropped by QC or not extracted): %s",
                len(missing),
                ", ".join(missing[:20]),
            )
        return cls(
            feats[feats["patient_id"].isin(ids)].reset_index(drop=True),
            clin[clin["patient_id"].isin(ids)].reset_index(drop=True),
            centers.loc[ids],
        )

    def labels(self, endpoint: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(patient ids, y, strata) of the patients with this endpoint known."""
        c = self.clinical.set_index("patient_id")
        if endpoint == "response":
            r = pd.to_numeric(c["response"], errors="coerce").dropna()
            return r.index.to_numpy(str), r.to_numpy(int), r.to_numpy(int)
        t = pd.to_numeric(c["time"], errors="coerce")
        e = pd.to_numeric(c["event"], errors="coerce")
        ok = t.notna() & e.notna()
        y = surv_array(t[ok], e[ok])
        return ok.index[ok].to_numpy(str), y, y["event"].astype(int)


def _label(split: Split, center: str) -> str:
    return f"external:{center}" if split.evaluation == "external" else split.evaluation


class Recorder:
    """Collects prediction rows and survival curves across the stage."""

    def __init__(self, ids: np.ndarray, y: np.ndarray, centers: np.ndarray, endpoint: str):
        self.ids, self.y, self.centers, self.endpoint = ids, y, centers, endpoint
        self.rows: list[dict] = []
        self.curves: dict[tuple, pd.DataFrame] = {}  # (model, feature set, evaluation) -> S(t)

    def add(
        self,
        model: str,
        fs: str,
        split: Split,
        pos: np.ndarray,
        score: np.ndarray,
        threshold: float,
    ) -> None:
        for p, s in zip(pos, score, strict=True):
            row = {
                "patient_id": self.ids[p],
                "endpoint": self.endpoint,
                "model": model,
                "feature_set": fs,
                "evaluation": _label(split, self.centers[p]),
                "score": float(s),
                "center": self.centers[p],
                "fold": split.fold,
                "threshold": threshold,
            }
            if self.endpoint == "response":
                row |= {"response": int(self.y[p]), "risk_group": None}
            else:
                group = (
                    None if not math.isfinite(threshold) else ("high" if s > threshold else "low")
                )
                row |= {
                    "time": float(self.y[p]["time"]),
                    "event": int(self.y[p]["event"]),
                    "risk_group": group,
                }
            self.rows.append(row)


# The synthetic truth's scores, as feature sets of the model `oracle`: per endpoint
# (feature set, column of truth/latent.tsv). The pre-treatment oracle knows the latents; the
# follow-up oracle also knows the radiological response the follow-up shows, so it is the
# ceiling of models that use follow-up imaging.
ORACLE_SCORES = {
    "response": [
        (ORACLE, "response_probability"),
        (f"{ORACLE}:followup", "response_probability_followup"),
    ],
    "survival": [(ORACLE, "latent_risk")],
}


def oracle_scores(endpoint: str, latent: pd.DataFrame | None) -> list[tuple[str, str]]:
    """The oracle feature sets that `latent` (truth/latent.tsv, if any) has columns for."""
    if latent is None:
        return []
    return [(name, col) for name, col in ORACLE_SCORES[endpoint] if col in latent.columns]


def run_models(
    features: str | Path,
    clinical: str | Path,
    samples: str | Path,
    outputs: Mapping[str, Any],
    config: Mapping[str, Any],
    latent: str | Path | None = None,
    network: str | Path | None = None,
    threads: int = 1,
) -> pd.DataFrame:
    """Fit, validate and summarise every configured model; write the stage's tables.

    ``threads`` feature sets are fitted at a time (results do not depend on it)."""
    start = time.perf_counter()
    out = Outputs.from_mapping(outputs)
    block = config.get("models", {})
    settings = ModelSettings.from_config(block)
    external = list(config.get("study", {}).get("external_centers", []))
    sets = [FeatureSet.from_config(b) for b in block.get("feature_sets", [])]
    methods = list((config.get("segmentation") or {}).get("methods") or [])
    cohort = Cohort.load(features, clinical, samples)
    oracle = io.read_tsv(latent).set_index("patient_id") if latent else None
    net = _read_network(network, methods)
    deep_trained_on = _deep_feature_label_patients(config, net)
    log.info(
        "%d patients, centres %s, external %s; feature sets %s",
        len(cohort.centers),
        sorted(set(cohort.centers)),
        external,
        [s.name for s in sets],
    )
    predictions, metric_rows, td_rows, coef, hrs = [], [], [], [], []
    for endpoint in settings.endpoints:
        ids, y, strata = cohort.labels(endpoint)
        if len(ids) < 4:
            log.warning("%s: only %d patients with this endpoint; skipped", endpoint, len(ids))
            continue
        centers = cohort.centers.loc[ids].to_numpy(str)
        splits = make_splits(centers, strata, external, settings)
        rec = Recorder(ids, y, centers, endpoint)
        for name, column in oracle_scores(endpoint, oracle):
            truth = pd.to_numeric(oracle.loc[ids, column]).to_numpy(float)
            for s in splits:
                cut = oracle_cutoff(endpoint, settings, y[s.train], truth[s.train])
                rec.add(ORACLE, name, s, s.test, truth[s.test], cut)
                if endpoint == "survival":
                    curves.store_score_curves(rec, ORACLE, name, s, s.train, truth, splits)
        tasks = []
        for fs in sets:
            try:
                X = design(
                    fs, cohort.features, cohort.clinical, cohort.centers, settings.protect
                ).loc[ids]
            except EmptyFeatureSet as err:
                log.warning("%s: %s", endpoint, err)
                continue
            fs_splits = splits
            if deep_trained_on and any("__deep__" in c for c in X.columns):
                fs_splits = clean_splits(splits, ids, deep_trained_on)
                log.warning(
                    "%s/%s: deep features come from an encoder trained with the outcome labels "
                    "of %d patients; evaluated only where none of them is a test patient (%s)",
                    endpoint,
                    fs.name,
                    len(deep_trained_on),
                    sorted({sp.evaluation for sp in fs_splits}) or "none",
                )
            tasks.append(
                delayed(_run_feature_set)(
                    endpoint, fs.name, X, y, strata, fs_splits, rec, settings, out
                )
            )
        # Threads: forests and numpy release the GIL; logging stays in this process's log.
        for part, fs_coef, fs_hrs in Parallel(n_jobs=threads, backend="threading")(tasks):
            rec.rows += part.rows
            rec.curves.update(part.curves)
            coef += fs_coef
            hrs += fs_hrs
        if net is not None:
            _add_network(rec, net, endpoint, splits, settings)
        predictions.extend(rec.rows)
        m_rows, t_rows = _metrics(endpoint, rec, splits, centers, y, settings)
        metric_rows += m_rows
        td_rows += t_rows
    pred = pd.DataFrame(predictions, columns=PREDICTION_COLUMNS)
    metrics = pd.DataFrame(metric_rows, columns=evaluate.METRIC_COLUMNS)
    io.write_table(metrics, out.metrics)
    io.write_table(pred, out.predictions)
    io.write_table(pd.DataFrame(td_rows, columns=evaluate.TD_AUC_COLUMNS), out.td_auc)
    io.write_table(evaluate.delong_table(pred), out.delong)
    io.write_table(_concat(coef, summaries.COEF_COLUMNS), out.coefficients)
    io.write_table(_concat(hrs, summaries.HR_COLUMNS), out.hazard_ratios)
    train_centers = sorted(set(cohort.centers) - set(external))
    check, embed = summaries.harmonization_check(
        cohort.features,
        cohort.centers,
        train_centers,
        settings.preprocessing().named_steps["combat"],
        settings.check_features,
        protected_covariates(cohort.clinical, settings.protect) if settings.protect else None,
    )
    io.write_table(check, out.harmonization_check)
    io.write_table(embed, out.harmonization_embedding)
    out.models.mkdir(parents=True, exist_ok=True)
    log.info(
        "model stage: %d metric rows, %d predictions, %.1f s",
        len(metrics),
        len(pred),
        time.perf_counter() - start,
    )
    return metrics


def _run_feature_set(
    endpoint: str,
    fs: str,
    X: pd.DataFrame,
    y: np.ndarray,
    strata: np.ndarray,
    splits: Sequence[Split],
    parent: Recorder,
    settings: ModelSettings,
    out: Outputs,
) -> tuple[Recorder, list[pd.DataFrame], list[pd.DataFrame]]:
    """Every split of one feature set: predictions, survival curves, the final models (saved),
    their coefficients and (survival) the hazard-ratio refit."""
    t0 = time.perf_counter()
    rec = Recorder(parent.ids, parent.y, parent.centers, endpoint)
    module = response_models if endpoint == "response" else survival
    coef: list[pd.DataFrame] = []
    hrs: list[pd.DataFrame] = []
    for s in splits:
        what = f"{endpoint}/{fs}/{s.evaluation}/fold {s.fold}"
        try:
            fitted = fit_split(
                endpoint, X, y, strata, s.train, settings, settings.seed + s.fold, what
            )
        except UserError as err:
            log.warning("%s", err)
            continue
        for m, f in fitted.items():
            if len(s.test):
                scores = module.score(f.pipeline, X.iloc[s.test])
                rec.add(m, fs, s, s.test, scores, f.threshold)
            if s.evaluation == "external":
                path = out.model_path(endpoint, fs, m)
                path.parent.mkdir(parents=True, exist_ok=True)
                with io.atomic_path(path) as tmp:
                    joblib.dump(f.pipeline, tmp)
                coef.append(
                    summaries.coefficients(
                        endpoint,
                        m,
                        fs,
                        f.pipeline,
                        X.iloc[s.train],
                        y[s.train],
                        settings.permutation_repeats,
                        settings.seed,
                    )
                )
        if endpoint == "survival" and s.evaluation == "external" and fitted:
            pipe = next(iter(fitted.values())).pipeline
            hrs.append(
                summaries.hazard_ratios(
                    fs, pipe, X.iloc[s.train], y[s.train], settings.hr_penalizer
                )
            )
        if endpoint == "survival":
            curves.store_model_curves(rec, fitted, X, s, splits, fs)
    log.info(
        "%s / %s: %d columns, %d splits, %.1f s",
        endpoint,
        fs,
        X.shape[1] - 1,
        len(splits),
        time.perf_counter() - t0,
    )
    return rec, coef, hrs


def _concat(frames: list[pd.DataFrame], columns: list[str]) -> pd.DataFrame:
    frames = [f for f in frames if len(f)]
    return (
        pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)
    )


def _metrics(
    endpoint: str,
    rec: Recorder,
    splits: Sequence[Split],
    centers: np.ndarray,
    y: np.ndarray,
    settings: ModelSettings,
) -> tuple[list[dict], list[dict]]:
    rows: list[dict] = []
    td: list[dict] = []
    evals = curves.evaluations(splits, centers)
    frame = pd.DataFrame(rec.rows, columns=PREDICTION_COLUMNS)
    for (model, fs, ev), group in frame.groupby(["model", "feature_set", "evaluation"], sort=True):
        key = (endpoint, model, fs, ev)
        if endpoint == "response":
            rows += evaluate.response_metrics(key, group, settings.bootstrap, settings.seed)
            continue
        train = y[evals[ev][1]] if ev in evals else y
        surv_curves = rec.curves.get((model, fs, ev))
        r, t = evaluate.survival_metrics(
            key,
            group,
            train,
            surv_curves,
            settings.bootstrap,
            settings.seed,
            settings.time_quantiles,
        )
        rows += r
        td += t
    return rows, td


def _deep_feature_label_patients(config: Mapping[str, Any], net: pd.DataFrame | None) -> set[str]:
    """Patients whose outcomes trained the encoder behind the deep features: the train/val
    patients of ``features.deep.method`` when its preset has a response or survival head.

    Such an encoder has seen those labels, so a test fold holding them would score the deep
    features optimistically (leakage); the feature sets with deep columns skip those folds.
    """
    method = ((config.get("features") or {}).get("deep") or {}).get("method")
    presets = (config.get("segmentation") or {}).get("presets") or {}
    heads = set((presets.get(method) or {}).get("heads", []))
    if net is None or not heads & {"response", "survival"}:
        return set()
    rows = net[net["method"] == method]
    return set(rows.loc[rows["split"] != "test", "patient_id"].astype(str))


def clean_splits(splits: Sequence[Split], ids: np.ndarray, exclude: set[str]) -> list[Split]:
    """The splits none of whose test patients is in `exclude`."""
    return [s for s in splits if not any(str(ids[p]) in exclude for p in s.test)]


def _read_network(path: str | Path | None, methods: list[str]) -> pd.DataFrame | None:
    if not path or not methods:
        return None
    table = io.read_tsv(path)
    missing = [c for c in NETWORK_PREDICTION_COLUMNS if c not in table.columns]
    if missing:
        raise UserError(f"{path}: missing column(s) {missing}")
    absent = sorted(set(methods) - set(table["method"]))
    if absent:
        log.warning("network predictions: no rows for method(s) %s", absent)
    return table[table["method"].isin(methods)]


def _add_network(
    rec: Recorder,
    net: pd.DataFrame,
    endpoint: str,
    splits: Sequence[Split],
    settings: ModelSettings,
) -> None:
    """End-to-end network scores as feature sets ``network:{method}`` (no refit), on the
    external split; threshold / cut-off from the method's train+val patients."""
    column = "response_probability" if endpoint == "response" else "risk_score"
    external = [s for s in splits if s.evaluation == "external"]
    if not external:
        return
    s = external[0]
    pos_of = {p: i for i, p in enumerate(rec.ids)}
    for method, rows in net.groupby("method"):
        scores = pd.to_numeric(rows.set_index("patient_id")[column], errors="coerce").dropna()
        train = [
            pos_of[p]
            for p in rows.loc[rows["split"].isin(["train", "val"]), "patient_id"]
            if p in pos_of and p in scores.index
        ]
        trained_on = set(rows.loc[rows["split"] != "test", "patient_id"])
        leaked = sorted(str(rec.ids[p]) for p in s.test if rec.ids[p] in trained_on)
        if leaked:
            log.warning(
                "network:%s: external patient(s) %s are in its train/val split; left out",
                method,
                ", ".join(leaked),
            )
        test = np.array(
            [p for p in s.test if rec.ids[p] in scores.index and rec.ids[p] not in trained_on],
            int,
        )
        if not len(test):
            log.warning("network:%s has no %s scores for the external patients", method, endpoint)
            continue
        cut = (
            oracle_cutoff(
                endpoint, settings, rec.y[train], scores.loc[rec.ids[train]].to_numpy(float)
            )
            if train
            else math.nan
        )
        rec.add(
            "end_to_end",
            f"network:{method}",
            s,
            test,
            scores.loc[rec.ids[test]].to_numpy(float),
            cut,
        )
        if endpoint == "survival" and train:
            by_pos = scores.reindex(rec.ids).to_numpy(float)
            curves.store_score_curves(
                rec, "end_to_end", f"network:{method}", s, np.asarray(train), by_pos, splits, test
            )
