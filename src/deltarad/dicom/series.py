"""A DICOM image series as one 3-D image: slice order, geometry checks, rescale, PET SUV.

Slices are ordered by their position along the slice normal (never by file name or
InstanceNumber, which exporters get wrong). A series with a missing slice, duplicate positions,
non-uniform slice spacing, a tilted (sheared) stack or slices of differing size or orientation
is refused with an error naming the file(s): we do not resample, because interpolating over a
gap invents data and hides an export problem the user should fix at the source.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset

from deltarad.dicom.discover import Discovery, Series
from deltarad.runlog import UserError

# Relative tolerance on slice gaps; DICOM positions are decimal strings rounded by exporters.
GAP_TOLERANCE = 0.01
ORIENTATION_TOLERANCE = 1e-4


class SeriesError(UserError):
    """A series cannot be turned into a 3-D image; the message names the file(s)."""


@dataclass(frozen=True)
class Volume:
    """A converted series: the image and what masks need to map onto it."""

    image: sitk.Image
    slice_uids: tuple[str, ...]  # SOPInstanceUIDs in slice order (for DICOM-SEG)
    units: str  # "HU", "SUVbw", "BQML", or the modality's arbitrary units
    notes: tuple[str, ...]  # conversion remarks (e.g. why SUV was not computed)


def _floats(ds: Dataset, keyword: str) -> np.ndarray:
    return np.asarray([float(v) for v in ds.get(keyword)], float)


def _read_all(series: Series, found: Discovery) -> list[Dataset]:
    datasets = []
    for path in series.files:
        try:
            ds = pydicom.dcmread(path)
            ds.pixel_array  # noqa: B018 - decode now so a broken file is named here
        except Exception as err:  # noqa: BLE001 - any decoder failure: a corrupt file
            raise SeriesError(
                f"corrupt file {found.relpath(path)}: cannot read its pixel data "
                f"({type(err).__name__}: {err})"
            ) from None
        datasets.append(ds)
    return datasets


def _check_consistent(series: Series, datasets: list[Dataset], found: Discovery) -> None:
    first = datasets[0]
    ref = {
        "Rows x Columns": (int(first.Rows), int(first.Columns)),
        "PixelSpacing": tuple(np.round(_floats(first, "PixelSpacing"), 6)),
        "FrameOfReferenceUID": str(first.get("FrameOfReferenceUID", "")),
    }
    iop0 = _floats(first, "ImageOrientationPatient")
    for path, ds in zip(series.files[1:], datasets[1:], strict=True):
        got = {
            "Rows x Columns": (int(ds.Rows), int(ds.Columns)),
            "PixelSpacing": tuple(np.round(_floats(ds, "PixelSpacing"), 6)),
            "FrameOfReferenceUID": str(ds.get("FrameOfReferenceUID", "")),
        }
        bad = [k for k in ref if ref[k] != got[k]]
        if np.max(np.abs(_floats(ds, "ImageOrientationPatient") - iop0)) > ORIENTATION_TOLERANCE:
            bad.append("ImageOrientationPatient")
        if int(ds.get("NumberOfFrames", 1) or 1) != 1 or int(ds.get("SamplesPerPixel", 1)) != 1:
            bad.append("NumberOfFrames/SamplesPerPixel")
        if bad:
            shown = [f"{got[k]} vs {ref[k]}" for k in bad if k in ref and "UID" not in k]
            raise SeriesError(
                f"mixed series: file {found.relpath(path)} differs from "
                f"{found.relpath(series.files[0])} of the same series in {', '.join(bad)}"
                + (f" ({'; '.join(shown)})" if shown else "")
                + " - two acquisitions under one series UID (e.g. a folder holding mixed series)"
            )


def slice_geometry(
    series: Series, datasets: list[Dataset], found: Discovery
) -> tuple[list[int], np.ndarray, float]:
    """Slice order, direction matrix (columns: row, column, normal) and slice spacing."""
    if len(datasets) < 2:
        raise SeriesError(
            f"series of file {found.relpath(series.files[0])} has a single slice: not a 3-D "
            "image (a stray file of another series?)"
        )
    _check_consistent(series, datasets, found)
    iop = _floats(datasets[0], "ImageOrientationPatient")
    row, col = iop[:3], iop[3:]
    normal = np.cross(row, col)
    positions = np.array([_floats(ds, "ImagePositionPatient") for ds in datasets])
    along = positions @ normal
    order = [int(i) for i in np.argsort(along, kind="stable")]
    along, positions = along[order], positions[order]
    gaps = np.diff(along)
    names = [found.relpath(series.files[i]) for i in order]
    for i, gap in enumerate(gaps):
        if gap < 1e-3:
            raise SeriesError(
                f"duplicate slice position: files {names[i]} and {names[i + 1]} lie at the same "
                f"position ({along[i]:.3f} mm along the slice normal)"
            )
    step = float(np.median(gaps))
    for i, gap in enumerate(gaps):
        if abs(gap - step) > max(GAP_TOLERANCE * step, 1e-3):
            ratio = gap / step
            what = (
                f"missing slice(s): about {round(ratio) - 1} slice(s) absent"
                if ratio > 1.5 and abs(ratio - round(ratio)) < 0.1
                else "non-uniform slice spacing"
            )
            raise SeriesError(
                f"{what} between files {names[i]} and {names[i + 1]}: gap {gap:.4g} mm, "
                f"expected {step:.4g} mm; refused (not resampled: fix or re-export the series)"
            )
    offsets = positions - positions[0] - np.outer(along - along[0], normal)
    if np.max(np.abs(offsets)) > max(GAP_TOLERANCE * step, 1e-3):
        raise SeriesError(
            f"slices of file {names[0]}'s series are not stacked along the slice normal "
            "(gantry tilt or sheared acquisition); refused"
        )
    spacing = round(float((along[-1] - along[0]) / (len(along) - 1)), 6)
    return order, np.column_stack([row, col, normal]), spacing


def _parse_time(date: str, time: str) -> datetime:
    time = (time.split(".")[0] + "000000")[:6]
    return datetime.strptime(date[:8] + time, "%Y%m%d%H%M%S")


def suv_factor(ds: Dataset) -> tuple[float | None, str]:
    """Factor turning Bq/ml into body-weight SUV (g/ml), or None and the reason why not.

    SUVbw = activity concentration x body weight / injected dose decayed to the scan start
    (DecayCorrection START) or not decayed (ADMIN: the scanner already corrected to injection).
    """
    units = str(ds.get("Units", "")).upper()
    if units != "BQML":
        return None, f"PET Units is {units or 'missing'}, not BQML: values kept as stored"
    weight = float(ds.get("PatientWeight", 0) or 0)
    info = ds.get("RadiopharmaceuticalInformationSequence")
    if weight <= 0 or not info:
        return None, "PET without PatientWeight or radiopharmaceutical data: values in Bq/ml"
    rp = info[0]
    dose = float(rp.get("RadionuclideTotalDose", 0) or 0)
    half_life = float(rp.get("RadionuclideHalfLife", 0) or 0)
    if dose <= 0 or half_life <= 0:
        return None, "PET without injected dose or half-life: values in Bq/ml"
    correction = str(ds.get("DecayCorrection", "")).upper()
    if correction == "ADMIN":
        decayed = dose
    elif correction == "START":
        try:
            if rp.get("RadiopharmaceuticalStartDateTime"):
                start_dt = str(rp.RadiopharmaceuticalStartDateTime)
                injected = _parse_time(start_dt[:8], start_dt[8:])
            else:
                injected = _parse_time(str(ds.SeriesDate), str(rp.RadiopharmaceuticalStartTime))
            scan = _parse_time(str(ds.SeriesDate), str(ds.SeriesTime))
        except (AttributeError, ValueError):
            return None, "PET injection or series time missing or malformed: values in Bq/ml"
        elapsed = (scan - injected).total_seconds()
        if elapsed < 0:
            return None, "PET injection time after the scan start: values in Bq/ml"
        decayed = dose * 2.0 ** (-elapsed / half_life)
    else:
        return None, f"PET DecayCorrection {correction or 'missing'} not supported: Bq/ml"
    return weight * 1000.0 / decayed, ""


def load_volume(series: Series, found: Discovery) -> Volume:
    """Read, check and convert one image series (rescale slope/intercept applied per slice)."""
    datasets = _read_all(series, found)
    order, direction, dz = slice_geometry(series, datasets, found)
    datasets = [datasets[i] for i in order]
    slopes = np.array([float(ds.get("RescaleSlope", 1) or 1) for ds in datasets])
    intercepts = np.array([float(ds.get("RescaleIntercept", 0) or 0) for ds in datasets])
    stored = np.stack([ds.pixel_array for ds in datasets])
    values = stored.astype(np.float64) * slopes[:, None, None] + intercepts[:, None, None]
    notes: list[str] = []
    units = {"CT": "HU", "MR": "arbitrary", "PET": "BQML"}[series.modality]
    if series.modality == "PET":
        factor, why = suv_factor(datasets[0])
        if factor is None:
            notes.append(why)
        else:
            values *= factor
            units = "SUVbw"
    integral = (
        units != "SUVbw"
        and np.all(slopes == np.round(slopes))
        and np.all(intercepts == np.round(intercepts))
    )
    if integral and values.min() >= -32768 and values.max() <= 32767:
        array = values.astype(np.int16)
    else:
        array = values.astype(np.float32)
    image = sitk.GetImageFromArray(array)
    row_spacing, col_spacing = _floats(datasets[0], "PixelSpacing")
    image.SetSpacing((float(col_spacing), float(row_spacing), dz))
    image.SetOrigin(tuple(float(v) for v in _floats(datasets[0], "ImagePositionPatient")))
    image.SetDirection(tuple(float(v) for v in direction.ravel()))
    uids = tuple(str(ds.SOPInstanceUID) for ds in datasets)
    return Volume(image, uids, units, tuple(notes))


def check_folders_clean(series: Series, found: Discovery) -> None:
    """Refuse a series sharing a folder with an unreadable DICOM file: it may be one of its
    slices, and an end slice lost that way leaves no gap to detect."""
    bad = [p for p, _ in found.unreadable if p.parent in series.folders]
    if bad:
        raise SeriesError(
            f"corrupt file {found.relpath(bad[0])} lies in this series' folder and may be one "
            "of its slices; refused (remove or re-export the file)"
        )
