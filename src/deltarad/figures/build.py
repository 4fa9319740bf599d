"""One entry point for the workflow's figure jobs: table files in, PNG + PDF out.

Why a dispatcher: every figure rule has the same shape (tables, options, the style, two
outputs), so one ≤ 20-line adapter script serves them all and the per-figure logic stays in
the figure modules, where unit tests call it with small DataFrames.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from deltarad import io
from deltarad.figures import harmonization, models, registration, response, segmentation, survival
from deltarad.figures.style import Style
from deltarad.figures.table1 import write_table1
from deltarad.runlog import UserError

Paths = Mapping[str, str]
Options = Mapping[str, Any]


def _metrics(inputs: Paths) -> Any:
    return response.read_metrics(inputs["metrics"]) if "metrics" in inputs else None


def _roc(i: Paths, o: Options, s: Style, out: Paths) -> None:
    response.roc_figure(
        response.read_predictions(i["predictions"]),
        _metrics(i),
        s,
        out["png"],
        out["pdf"],
        max_curves=o["max_curves"],
        evaluations=o["evaluations"],
    )


def _calibration(i: Paths, o: Options, s: Style, out: Paths) -> None:
    response.calibration_figure(
        response.read_predictions(i["predictions"]),
        _metrics(i),
        s,
        out["png"],
        out["pdf"],
        max_curves=o["max_curves"],
        n_bins=o["calibration_bins"],
        evaluations=o["evaluations"],
    )


def _decision(i: Paths, o: Options, s: Style, out: Paths) -> None:
    response.decision_curve_figure(
        response.read_predictions(i["predictions"]),
        _metrics(i),
        s,
        out["png"],
        out["pdf"],
        max_curves=o["max_curves"],
        evaluations=o["evaluations"],
    )


def _km(i: Paths, o: Options, s: Style, out: Paths) -> None:
    survival.km_figure(
        response.read_predictions(i["predictions"]),
        _metrics(i),
        s,
        out["png"],
        out["pdf"],
        evaluations=o["evaluations"],
        time_unit=o["time_unit"],
    )


def _td_auc(i: Paths, o: Options, s: Style, out: Paths) -> None:
    survival.td_auc_figure(
        survival.read_td_auc(i["td_auc"]),
        _metrics(i),
        s,
        out["png"],
        out["pdf"],
        max_curves=o["max_curves"],
        evaluations=o["evaluations"],
        time_unit=o["time_unit"],
    )


def _forest(i: Paths, o: Options, s: Style, out: Paths) -> None:
    survival.forest_figure(
        survival.read_hazard_ratios(i["hazard_ratios"]),
        s,
        out["png"],
        out["pdf"],
        max_features=o["top_features"],
    )


def _coefficients(i: Paths, o: Options, s: Style, out: Paths) -> None:
    models.coefficients_figure(
        models.read_coefficients(i["coefficients"]),
        _metrics(i),
        s,
        out["png"],
        out["pdf"],
        max_features=o["top_features"],
    )


def _performance(i: Paths, o: Options, s: Style, out: Paths) -> None:
    models.performance_figure(_metrics(i), s, out["png"], out["pdf"], evaluations=o["evaluations"])


def _multitask(i: Paths, o: Options, s: Style, out: Paths) -> None:
    models.multitask_figure(_metrics(i), s, out["png"], out["pdf"], evaluations=o["evaluations"])


def _harmonization(i: Paths, o: Options, s: Style, out: Paths) -> None:
    harmonization.harmonization_figure(
        harmonization.read_check(i["check"]),
        harmonization.read_embedding(i["embedding"]),
        s,
        out["png"],
        out["pdf"],
        n_features=o["harmonization_features"],
    )


def _dice(i: Paths, o: Options, s: Style, out: Paths) -> None:
    segmentation.dice_figure(
        segmentation.read_segmentation_qc(i["qc"]),
        io.read_tsv(i["samples"]),
        s,
        out["png"],
        out["pdf"],
        seed=o["seed"],
    )


def _overlays(i: Paths, o: Options, s: Style, out: Paths) -> None:
    segmentation.overlay_figure(o["cases"], s, out["png"], out["pdf"], method=o["method"])


def _registration(i: Paths, o: Options, s: Style, out: Paths) -> None:
    registration.registration_panel(o["cases"], s, out["png"], out["pdf"])


def _table1(i: Paths, o: Options, s: Style, out: Paths) -> None:
    write_table1(i["clinical"], i["samples"], s, out["tsv"], out["png"], out["pdf"], o["time_unit"])


FIGURES: dict[str, Callable[[Paths, Options, Style, Paths], None]] = {
    "table1": _table1,
    "registration": _registration,
    "dice": _dice,
    "overlays": _overlays,
    "harmonization": _harmonization,
    "roc": _roc,
    "calibration": _calibration,
    "decision_curve": _decision,
    "km": _km,
    "td_auc": _td_auc,
    "forest": _forest,
    "coefficients": _coefficients,
    "performance": _performance,
    "multitask": _multitask,
}


def draw(
    name: str,
    inputs: Mapping[str, str],
    outputs: Mapping[str, str],
    options: Mapping[str, Any],
    style: Mapping[str, Any] | None,
) -> None:
    """Draw figure `name` from its input tables (`inputs`, by role) to `outputs` (`png`, `pdf`
    and, for Table 1, `tsv`), with the figure `options` and the `figures.style` block."""
    if name not in FIGURES:
        raise UserError(f"unknown figure {name!r}; known: {sorted(FIGURES)}")
    FIGURES[name](inputs, options, Style.from_config(style), outputs)
