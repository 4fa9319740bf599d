"""Registration before/after: checkerboards of the baseline and the follow-up.

Two users: the registration job's per-scan QC picture (:func:`registration_figure`, PNG only,
drawn while the images are in memory) and the paper panel over a few example patients
(:func:`registration_panel`, PNG + PDF in the publication style, redrawn from files).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import SimpleITK as sitk

from deltarad import io
from deltarad.figures.style import Style, empty_panel, save, subplots

# The QC pictures are for screens: small files, low resolution.
QC_STYLE = Style(dpi=80, width_mm=245.0, font_size=8.0, title_size=9.0)


def window(arr: np.ndarray) -> tuple[float, float]:
    """Display range: 1st to 99th percentile (robust to a few bright voxels)."""
    lo, hi = np.percentile(arr, [1, 99])
    return float(lo), float(hi) if hi > lo else float(lo) + 1.0


def checkerboard(a: np.ndarray, b: np.ndarray, tiles: int = 8) -> np.ndarray:
    """Alternating tiles of two same-shaped 2-D slices."""
    yy, xx = np.indices(a.shape)
    board = ((yy * tiles // a.shape[0]) + (xx * tiles // a.shape[1])) % 2 == 0
    return np.where(board, a, b)


def tumour_slice(mask: sitk.Image | None, depth: int) -> int:
    """The median axial slice of the tumour, or the middle slice without a mask."""
    if mask is not None and sitk.GetArrayViewFromImage(mask).any():
        return int(np.median(np.argwhere(sitk.GetArrayViewFromImage(mask) > 0)[:, 0]))
    return depth // 2


def registration_figure(
    fixed: sitk.Image,
    moving_before: sitk.Image,
    moving_after: sitk.Image,
    mask: sitk.Image | None,
    title: str,
    out_png: str | Path,
    style: Style = QC_STYLE,
) -> None:
    """Checkerboards of baseline vs follow-up before and after registration, three slices
    (the registration job's QC picture)."""
    f = sitk.GetArrayFromImage(fixed)
    before = sitk.GetArrayFromImage(moving_before)
    after = sitk.GetArrayFromImage(moving_after)
    z_mid = tumour_slice(mask, f.shape[0])
    step = f.shape[0] // 5
    slices = sorted({max(0, z_mid - step), z_mid, min(f.shape[0] - 1, z_mid + step)})
    lo, hi = window(f)
    with style.context():
        fig, axes = plt.subplots(2, len(slices), figsize=(3.2 * len(slices), 6.6), squeeze=False)
        for j, z in enumerate(slices):
            for i, (moving, label) in enumerate(((before, "before"), (after, "after"))):
                ax = axes[i, j]
                ax.imshow(
                    checkerboard(f[z], moving[z]), cmap="gray", vmin=lo, vmax=hi, origin="lower"
                )
                ax.set_title(f"{label}, slice {z}")
                ax.axis("off")
        fig.suptitle(f"{title}: baseline / follow-up checkerboard")
        fig.tight_layout()
        with io.atomic_path(out_png) as tmp:
            fig.savefig(tmp, dpi=style.dpi, format="png", metadata={"Software": None})
        plt.close(fig)


def registration_panel(
    cases: Sequence[dict[str, str | Path]],
    style: Style,
    out_png: str | Path,
    out_pdf: str | Path,
) -> None:
    """Columns: example patients; rows: checkerboard before and after registration on the
    tumour's central slice. Each case holds `patient_id`, `fixed` (preprocessed baseline),
    `moving` (preprocessed follow-up, in its own pose), `registered` (follow-up in baseline
    space) and `mask` (baseline tumour)."""
    with style.context():
        ncols = max(len(cases), 1)
        fig, axes = subplots(style, aspect=2 / ncols, nrows=2, ncols=ncols)
        if not cases:
            empty_panel(axes[0, 0], "no example patients")
            axes[1, 0].set_visible(False)
        for row, case in zip(axes.T, cases, strict=False):
            fixed = io.read_image(case["fixed"])
            identity = sitk.Transform(fixed.GetDimension(), sitk.sitkIdentity)
            before = sitk.Resample(
                io.read_image(case["moving"]),
                fixed,
                identity,
                sitk.sitkLinear,
                0.0,
                fixed.GetPixelID(),
            )
            f = sitk.GetArrayFromImage(fixed)
            z = tumour_slice(io.read_image(case["mask"]), f.shape[0])
            lo, hi = window(f)
            for ax, moving in (
                (row[0], sitk.GetArrayFromImage(before)),
                (row[1], sitk.GetArrayFromImage(io.read_image(case["registered"]))),
            ):
                ax.imshow(
                    checkerboard(f[z], moving[z]), cmap="gray", vmin=lo, vmax=hi, origin="lower"
                )
                # Frameless, but keeping the axes so that the row label can be shown.
                ax.set_xticks([])
                ax.set_yticks([])
                for spine in ax.spines.values():
                    spine.set_visible(False)
            row[0].set_title(f"{case['patient_id']} (slice {z})")
        # Short labels: patient over the columns, stage beside the rows (legible when narrow).
        axes[0, 0].set_ylabel("Before registration")
        axes[1, 0].set_ylabel("After")
        save(fig, style, out_png, out_pdf)
