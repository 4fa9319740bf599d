"""Checks of one scan's image and mask files, made during validation, before any compute.

A bad scan found here costs the user one message; found later it costs a failed job (or, worse,
features computed on a truncated tumour). Each finding is ``(column, message)``: the message
names the file, the caller (:mod:`deltarad.cohort`) adds the sheet line and the patient.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import SimpleITK as sitk

from deltarad import io

if TYPE_CHECKING:
    from deltarad.cohort import ValidationSettings

Finding = tuple[str, str]  # (sheet column, message)
_AXES = ("x", "y", "z")


def display_path(path: Path) -> str:
    """Relative to the working directory where the file lies below it, absolute otherwise."""
    absolute = Path(os.path.abspath(path))
    try:
        return str(absolute.relative_to(Path.cwd()))
    except ValueError:
        return str(absolute)


def _file_type(path: Path) -> str | None:
    """Why `path` cannot be read as an image before trying: a folder, or an unknown suffix."""
    if path.is_dir():
        return (
            "is a folder, not an image file; convert a DICOM series with `deltarad ingest-dicom` "
            f"first ({display_path(path)})"
        )
    if path.is_file() and not io.is_image_path(path):
        return (
            f"has an unsupported file type; expected one of {', '.join(io.IMAGE_SUFFIXES)} "
            f"({display_path(path)})"
        )
    return None


def _border_faces(tumour: np.ndarray) -> list[str]:
    """Faces of the voxel grid (z, y, x array) that tumour voxels lie on, as 'x = 0' etc."""
    faces = []
    for axis_index, axis in enumerate(reversed(range(tumour.ndim))):  # x, y, z
        last = tumour.shape[axis] - 1
        for index in (0, last):
            if np.take(tumour, index, axis=axis).any():
                faces.append(f"{_AXES[axis_index]} = {index}")
    return faces


def mask_findings(
    mask: Path, image: Path, image_geo: io.Geometry, s: ValidationSettings, baseline: bool = True
) -> list[str]:
    """Messages about a mask: readable, a label image on the image's grid, a whole tumour.

    An empty mask is an error at the baseline (there must be a tumour to follow) and valid at a
    later timepoint: the tumour vanished (complete response)."""
    problem = _file_type(mask)
    if problem:
        return [f"mask {problem}"]
    try:
        mask_geo, _, comps = io.read_header(mask)
    except io.ImageReadError as err:
        return [str(err)]
    if comps != 1:
        return [
            f"mask has {comps} components per voxel, expected a label image ({display_path(mask)})"
        ]
    fields = image_geo.mismatches(mask_geo, s.spacing_rel, s.origin_mm, s.direction)
    if fields:
        return [
            f"mask grid differs from the image in {', '.join(fields)}: "
            f"image {display_path(image)} has {image_geo.describe()}; "
            f"mask {display_path(mask)} has {mask_geo.describe()}"
        ]
    arr = sitk.GetArrayFromImage(io.read_image(mask))
    labels = set(np.unique(arr).tolist()) - {0}
    out = []
    unexpected = sorted(labels - {s.mask_label, *s.extra_mask_labels})
    if unexpected:
        out.append(
            f"mask contains unexpected label(s) {unexpected} (tumour label is {s.mask_label}; "
            f"list others in validation.extra_mask_labels) ({display_path(mask)})"
        )
    tumour = arr == s.mask_label
    count = int(np.count_nonzero(tumour))
    if count == 0:
        if baseline:  # at a later timepoint an empty mask is a complete response: valid
            out.append(
                f"baseline mask has no voxel with the tumour label {s.mask_label}: the baseline "
                "must show the tumour (an empty mask is valid only at a later timepoint, where it "
                f"means complete response) ({display_path(mask)})"
            )
    elif count < s.min_mask_voxels:
        out.append(
            f"mask has only {count} tumour voxel(s), fewer than validation.min_mask_voxels = "
            f"{s.min_mask_voxels} ({display_path(mask)})"
        )
    faces = _border_faces(tumour) if count else []
    if faces:
        out.append(
            f"tumour (label {s.mask_label}) touches the image border at {', '.join(faces)}: it "
            "is cut off by the field of view, so its shape, texture and ring features would be "
            f"wrong; use a scan covering the whole tumour or remove this row ({display_path(mask)})"
        )
    return out


def image_findings(image: Path) -> tuple[io.Geometry | None, list[str]]:
    """Geometry (None when unusable) and messages about an image: readable, 3-D, scalar, finite,
    not constant."""
    problem = _file_type(image)
    if problem:
        return None, [f"image {problem}"]
    try:
        geo, pixel, comps = io.read_header(image)
    except io.ImageReadError as err:
        return None, [str(err)]
    shown = display_path(image)
    if len(geo.size) != 3 or min(geo.size) < 2:
        return None, [f"image must be 3-D, found size {geo.size} ({shown})"]
    if comps != 1:
        return None, [f"image has {comps} components per voxel, expected a scalar image ({shown})"]
    if "float" in pixel:
        bad = io.count_nonfinite(image)
        if bad:
            return geo, [f"image has {bad} NaN or infinite voxel(s) ({shown})"]
    stats = sitk.MinimumMaximumImageFilter()
    stats.Execute(io.read_image(image))
    if stats.GetMinimum() == stats.GetMaximum():
        return geo, [
            f"image is constant (every voxel is {stats.GetMinimum():g}): nothing to measure "
            f"or register ({shown})"
        ]
    return geo, []


def scan_findings(
    image: Path, mask: Path | None, s: ValidationSettings, baseline: bool = True
) -> list[Finding]:
    """Every finding about one scan's files, as (column, message)."""
    geo, problems = image_findings(image)
    findings = [("image", p) for p in problems]
    if geo is not None and mask is not None:
        findings += [("mask", p) for p in mask_findings(mask, image, geo, s, baseline)]
    return findings
