"""Which figures a run can draw, from which files, with which options.

Why here and not in figures.smk: the plan is plain data (tables by role, example images,
options), so it is unit-tested without Snakemake, and the rule file stays wiring only. A
figure is enabled when some rule of this configuration produces every table it reads, so a
run without segmentation or models simply has fewer figures instead of failing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from deltarad.runlog import UserError

BASELINE = "baseline"
# Report categories: the stage each figure belongs to (the models stage uses "4. Models").
COHORT_CATEGORY = "1. Cohort"
MODELS_CATEGORY = "4. Models"


@dataclass(frozen=True)
class FigureJob:
    """One figure rule: what it reads, draws and where the report files it."""

    name: str
    category: str
    subcategory: str | None
    tables: dict[str, str]
    options: dict[str, Any]
    enabled: bool
    images: list[str] = field(default_factory=list)


def producer_check(rules: Iterable[Any]) -> Callable[[str | Path], bool]:
    """A test `path -> bool`: does one of `rules` (Snakemake Rule objects) write `path`?"""
    rules = list(rules)

    def produced(path: str | Path) -> bool:
        return any(rule.is_producer(str(path)) for rule in rules)

    return produced


def example_patients(figures: Mapping[str, Any], later: pd.DataFrame) -> list[str]:
    """`figures.example_patient_ids`, else `figures.example_patients` patients with a later
    scan spread over the sorted IDs (with centre-prefixed IDs: over the centres)."""
    candidates = sorted(later["patient_id"].unique())
    chosen = list(figures["example_patient_ids"])
    unknown = sorted(set(chosen) - set(candidates))
    if unknown:
        raise UserError(f"figures.example_patient_ids: {unknown} have no follow-up scan")
    if chosen:
        return chosen
    n = min(int(figures["example_patients"]), len(candidates))
    if n == 0:
        return []
    return [candidates[int(i)] for i in np.linspace(0, len(candidates) - 1, n).round()]


def first_later(patient: str, later: pd.DataFrame) -> str:
    return str(later.loc[later["patient_id"] == patient, "timepoint"].iloc[0])


def registration_cases(
    results: Path, patients: list[str], later: pd.DataFrame
) -> list[dict[str, str]]:
    """Per example patient: preprocessed baseline and mask, follow-up before and after."""
    cases = []
    for pid in patients:
        tp = first_later(pid, later)
        folder = results / "preprocessed" / pid
        cases.append(
            {
                "patient_id": pid,
                "fixed": str(folder / f"{BASELINE}.nii.gz"),
                "mask": str(folder / f"{BASELINE}_mask.nii.gz"),
                "moving": str(folder / f"{tp}.nii.gz"),
                "registered": str(results / f"registered/{pid}/{tp}.nii.gz"),
            }
        )
    return cases


def overlay_method(config: Mapping[str, Any]) -> str | None:
    """`figures.overlay_method`, else the first of `segmentation.methods` (None: no overlays)."""
    if config["figures"]["overlay_method"]:
        return str(config["figures"]["overlay_method"])
    methods = (config.get("segmentation") or {}).get("methods") or []
    return str(methods[0]) if methods else None


def overlay_cases(
    results: Path,
    cohort: Path,
    synthetic: bool,
    patients: list[str],
    later: pd.DataFrame,
    method: str,
) -> list[dict[str, str | None]]:
    """Per example patient, at baseline and its first later timepoint: the scan in baseline
    space, the predicted mask and (synthetic cohort) the true mask."""
    cases: list[dict[str, str | None]] = []
    for pid in patients:
        tp = first_later(pid, later)
        truth = cohort / "truth/masks" / pid
        for timepoint, image, true_mask in (
            (
                BASELINE,
                results / f"preprocessed/{pid}/{BASELINE}.nii.gz",
                truth / f"{BASELINE}.nii.gz",
            ),
            (tp, results / f"registered/{pid}/{tp}.nii.gz", truth / f"{tp}_in_baseline.nii.gz"),
        ):
            cases.append(
                {
                    "patient_id": pid,
                    "timepoint": timepoint,
                    "image": str(image),
                    "prediction": str(results / f"segmentation/{method}/{pid}/{timepoint}.nii.gz"),
                    "truth": str(true_mask) if synthetic else None,
                }
            )
    return cases


def case_files(cases: list[dict[str, Any]]) -> list[str]:
    """Every file a list of cases names (inputs Snakemake should track)."""
    skip = ("patient_id", "timepoint")
    return sorted({v for c in cases for k, v in c.items() if k not in skip and v})


def plan_figures(
    config: Mapping[str, Any],
    results: str | Path,
    cohort: str | Path,
    synthetic: bool,
    later: pd.DataFrame,
    produced: Callable[[str | Path], bool],
) -> dict[str, FigureJob]:
    """Every figure rule of this configuration (Table 1 aside), enabled or not."""
    results, cohort = Path(results), Path(cohort)
    figures = config["figures"]
    tables = results / "tables"
    metrics = str(tables / "metrics.tsv")
    predictions = {"predictions": str(tables / "predictions.tsv"), "metrics": metrics}
    patients = example_patients(figures, later)
    method = overlay_method(config)
    # name: (category, subcategory, tables by role, option keys, extra condition)
    specs: dict[str, tuple[str, str | None, dict[str, str], list[str], bool]] = {
        "registration": (
            "2. Registration",
            None,
            {},
            [],
            bool(patients) and produced(results / f"registered/{patients[0]}/x.nii.gz"),
        ),
        "dice": (
            "3. Segmentation",
            None,
            {
                "qc": str(tables / "segmentation_qc.tsv"),
                "samples": str(tables / "samples.validated.tsv"),
            },
            ["seed"],
            True,
        ),
        "overlays": (
            "3. Segmentation",
            None,
            {"qc": str(tables / "segmentation_qc.tsv")},
            [],
            method is not None and bool(patients),
        ),
        "harmonization": (
            MODELS_CATEGORY,
            "Harmonisation",
            {
                "check": str(tables / "harmonization_check.tsv"),
                "embedding": str(tables / "harmonization_embedding.tsv"),
            },
            ["harmonization_features"],
            True,
        ),
        "roc": (MODELS_CATEGORY, "Response", predictions, ["max_curves", "evaluations"], True),
        "calibration": (
            MODELS_CATEGORY,
            "Response",
            predictions,
            ["max_curves", "calibration_bins", "evaluations"],
            True,
        ),
        "decision_curve": (
            MODELS_CATEGORY,
            "Response",
            predictions,
            ["max_curves", "evaluations"],
            True,
        ),
        "coefficients": (
            MODELS_CATEGORY,
            "Features in the models",
            {"coefficients": str(tables / "model_coefficients.tsv"), "metrics": metrics},
            ["top_features"],
            True,
        ),
        "km": (MODELS_CATEGORY, "Survival", predictions, ["evaluations", "time_unit"], True),
        "td_auc": (
            MODELS_CATEGORY,
            "Survival",
            {"td_auc": str(tables / "td_auc.tsv"), "metrics": metrics},
            ["max_curves", "evaluations", "time_unit"],
            True,
        ),
        "forest": (
            MODELS_CATEGORY,
            "Features in the models",
            {"hazard_ratios": str(tables / "hazard_ratios.tsv")},
            ["top_features"],
            True,
        ),
        "performance": (
            MODELS_CATEGORY,
            "Comparison",
            {"metrics": metrics},
            ["evaluations"],
            True,
        ),
        # Only when the segmentation networks' own predictions feed the models stage.
        "multitask": (
            MODELS_CATEGORY,
            "Comparison",
            {"metrics": metrics},
            ["evaluations"],
            produced(tables / "network_predictions.tsv"),
        ),
    }
    jobs = {}
    for name, (category, subcategory, inputs, keys, condition) in specs.items():
        options = {key: figures[key] for key in keys}
        if name == "registration":
            options["cases"] = registration_cases(results, patients, later)
        if name == "overlays" and method is not None:
            options["cases"] = overlay_cases(results, cohort, synthetic, patients, later, method)
            options["method"] = method
        images = case_files(options.get("cases", []))
        enabled = (
            name in figures["include"]
            and condition
            and all(produced(path) for path in inputs.values())
        )
        jobs[name] = FigureJob(name, category, subcategory, inputs, options, enabled, images)
    return jobs


def figure_targets(
    jobs: Mapping[str, FigureJob], config: Mapping[str, Any], results: str | Path
) -> list[Path]:
    """PNG + PDF of every enabled figure, and Table 1 when included."""
    results = Path(results)
    targets = [
        results / "figures" / f"{job.name}.{ext}"
        for job in jobs.values()
        if job.enabled
        for ext in ("png", "pdf")
    ]
    if "table1" in config["figures"]["include"]:
        targets += [
            results / "tables/table1.tsv",
            results / "figures/table1.png",
            results / "figures/table1.pdf",
        ]
    return targets
