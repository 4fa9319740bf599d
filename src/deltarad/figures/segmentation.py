"""Segmentation figures: Dice and HD95 per centre, example overlays at both timepoints."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk
from matplotlib.lines import Line2D

from deltarad import io
from deltarad.figures import common
from deltarad.figures.style import Style, empty_panel, legend_on_top, save, subplots
from deltarad.runlog import UserError

QC_COLUMNS = ["patient_id", "timepoint", "method", "dice", "hd95_mm"]


def read_segmentation_qc(path: str | Path) -> pd.DataFrame:
    return common.read_table(path, QC_COLUMNS, numeric=("dice", "hd95_mm"))


def with_centers(qc: pd.DataFrame, samples: pd.DataFrame) -> pd.DataFrame:
    """QC rows with the patient's centre from the validated samples sheet."""
    centers = samples.drop_duplicates("patient_id").set_index("patient_id")["center"]
    missing = sorted(set(qc["patient_id"]) - set(centers.index))
    if missing:
        raise UserError(
            f"segmentation_qc.tsv: patient(s) {missing[:5]} not in samples.validated.tsv"
        )
    return qc.assign(center=qc["patient_id"].map(centers))


def dice_figure(
    qc: pd.DataFrame,
    samples: pd.DataFrame,
    style: Style,
    out_png: str | Path,
    out_pdf: str | Path,
    seed: int = 0,
) -> None:
    """Box plots with every patient as a dot: Dice (top) and HD95 (bottom) per centre, one
    colour per method, one column per timepoint. `seed` fixes the horizontal jitter."""
    df = with_centers(qc, samples)
    centers = sorted(df["center"].unique())
    methods = sorted(df["method"].unique())
    timepoints = sorted(df["timepoint"].unique(), key=lambda t: (t != "baseline", t))
    rng = np.random.default_rng(seed)
    width = 0.8 / max(len(methods), 1)
    with style.context():
        fig, axes = subplots(style, aspect=0.5, nrows=2, ncols=max(len(timepoints), 1), sharex=True)
        if df.empty:
            empty_panel(axes[0, 0], "no segmentation QC rows")
        for j, tp in enumerate(timepoints):
            for i, (metric, label) in enumerate((("dice", "Dice"), ("hd95_mm", "HD95 (mm)"))):
                ax = axes[i, j]
                values = df.loc[df["timepoint"] == tp, metric]
                if not df.empty and values.notna().sum() == 0:
                    # Say why the panel is empty (HD95 is NA where a mask is empty) without
                    # touching the x ticks, which are shared with the panel above.
                    ax.text(
                        0.5,
                        0.5,
                        f"{label} undefined\nfor all {len(values)} predictions\n(empty mask)",
                        ha="center",
                        va="center",
                        transform=ax.transAxes,
                        color="0.3",
                    )
                    ax.set_yticks([])
                for k, method in enumerate(methods):
                    offset = (k - (len(methods) - 1) / 2) * width
                    data, pos = [], []
                    for c_i, center in enumerate(centers):
                        vals = df.loc[
                            (df["timepoint"] == tp)
                            & (df["method"] == method)
                            & (df["center"] == center),
                            metric,
                        ].dropna()
                        if vals.empty:
                            continue
                        data.append(vals.to_numpy())
                        pos.append(c_i + offset)
                    if not data:
                        continue
                    ax.boxplot(
                        data,
                        positions=pos,
                        widths=width * 0.8,
                        showfliers=False,
                        medianprops={"color": style.color(k), "lw": 1.4},
                        boxprops={"color": style.color(k)},
                        whiskerprops={"color": style.color(k)},
                        capprops={"color": style.color(k)},
                    )
                    for p, vals in zip(pos, data, strict=True):
                        jitter = rng.uniform(-width * 0.25, width * 0.25, len(vals))
                        ax.scatter(
                            p + jitter,
                            vals,
                            s=7,
                            color=style.color(k),
                            alpha=0.7,
                            linewidths=0,
                            zorder=3,
                        )
                    ax.plot([], [], color=style.color(k), label=method)
                ax.set_ylabel(label)
                if metric == "dice":
                    ax.set_ylim(0, 1.02)
                    ax.set_title(tp.capitalize())
                ax.set_xticks(range(len(centers)), centers)
            axes[1, j].set_xlabel("Centre")
        legend_on_top(fig, axes[0, 0])
        save(fig, style, out_png, out_pdf)


def on_grid(mask: sitk.Image, reference: sitk.Image) -> np.ndarray:
    """A mask as a boolean array on the reference image's grid (nearest neighbour): the
    synthetic truth lives on the acquisition grid, the scans on the preprocessed one."""
    resampled = sitk.Resample(mask, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    return sitk.GetArrayFromImage(resampled) > 0


def _central_slice(mask: np.ndarray) -> int:
    """The axial slice with the most foreground (the middle one for an empty mask)."""
    counts = mask.reshape(mask.shape[0], -1).sum(axis=1)
    return int(np.argmax(counts)) if counts.any() else mask.shape[0] // 2


def _window(arr: np.ndarray) -> tuple[float, float]:
    lo, hi = np.percentile(arr, [1, 99])
    return float(lo), float(hi) if hi > lo else float(lo) + 1.0


def overlay_figure(
    cases: Sequence[dict[str, str | Path | None]],
    style: Style,
    out_png: str | Path,
    out_pdf: str | Path,
    method: str,
) -> None:
    """Columns: patients; rows: timepoints. Each panel: the scan in baseline space, the
    predicted tumour contour and, where known, the true one, on the slice with most true
    tumour (most predicted tumour without a truth).

    Each case is a dict with `patient_id`, `timepoint`, `image`, `prediction`, `truth` (None
    outside the synthetic cohort).
    """
    patients = list(dict.fromkeys(str(c["patient_id"]) for c in cases))
    timepoints = list(dict.fromkeys(str(c["timepoint"]) for c in cases))
    with style.context():
        ncols = max(len(patients), 1)
        fig, axes = subplots(
            style,
            aspect=max(len(timepoints), 1) / ncols,
            nrows=max(len(timepoints), 1),
            ncols=ncols,
        )
        if not cases:
            empty_panel(axes[0, 0], "no example patients")
        for case in cases:
            ax = axes[
                timepoints.index(str(case["timepoint"])), patients.index(str(case["patient_id"]))
            ]
            scan = io.read_image(case["image"])
            image = sitk.GetArrayFromImage(scan)
            pred = on_grid(io.read_image(case["prediction"]), scan)
            truth = on_grid(io.read_image(case["truth"]), scan) if case.get("truth") else None
            z = _central_slice(truth if truth is not None and truth.any() else pred)
            lo, hi = _window(image)
            ax.imshow(image[z], cmap="gray", vmin=lo, vmax=hi, origin="lower")
            if truth is not None and truth[z].any():
                ax.contour(truth[z], levels=[0.5], colors=[style.color(2)], linewidths=1.0)
            if pred[z].any():
                ax.contour(
                    pred[z], levels=[0.5], colors=[style.color(1)], linewidths=1.0, linestyles="--"
                )
            else:
                # Without this an empty prediction looks like a drawing error.
                note = "prediction empty" if not pred.any() else "no prediction on this slice"
                ax.text(0.03, 0.03, note, color="white", va="bottom", transform=ax.transAxes)
            # Short labels (legible when narrow): patient over the columns, timepoint beside
            # the rows, the slice inside the panel.
            ax.text(0.03, 0.97, f"z {z}", color="white", va="top", transform=ax.transAxes)
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
        for j, pid in enumerate(patients):
            axes[0, j].set_title(pid)
        for i, tp in enumerate(timepoints):
            axes[i, 0].set_ylabel(tp.capitalize())
        handles = [_legend_line(style.color(1), "--", f"predicted ({method})")]
        if any(c.get("truth") for c in cases):
            handles.append(_legend_line(style.color(2), "-", "truth"))
        fig.legend(handles=handles, loc="outside lower center", ncols=2)
        save(fig, style, out_png, out_pdf)


def _legend_line(color: str, ls: str, label: str) -> Line2D:
    return Line2D([], [], color=color, ls=ls, label=label)
