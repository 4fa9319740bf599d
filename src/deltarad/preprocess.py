"""Preprocessing: dataset fingerprint, resampling to a common grid, per-modality normalisation.

Every stage after ingest works on preprocessed scans, so that all centres share one voxel
spacing (radiomics texture depends on it) and MR intensities are comparable. Physical
coordinates are preserved: resampling and cropping keep origin and direction semantics, so a
transform estimated on preprocessed scans maps the same physical points as on the originals.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import SimpleITK as sitk

from deltarad import io
from deltarad.body import DEFAULT_THRESHOLDS, Threshold, body_mask


@dataclass(frozen=True)
class PreprocessSettings:
    """The ``preprocess:`` block of the config."""

    spacing: tuple[float, float, float] | None = (1.5, 1.5, 1.5)  # None: keep each scan's
    ct_window: tuple[float, float] | None = None
    mr_zscore: bool = True
    mr_n4: bool = False
    crop: bool = False
    crop_margin_mm: float = 10.0
    # Per modality (deltarad.body): one body definition for every stage.
    body_threshold: dict[str, Threshold] = field(default_factory=lambda: dict(DEFAULT_THRESHOLDS))

    @classmethod
    def from_config(cls, block: dict[str, Any], fingerprint: dict | None = None) -> Any:
        spacing = block.get("spacing", cls.spacing)
        if spacing == "auto":
            if fingerprint is None:
                raise ValueError("preprocess.spacing 'auto' needs the dataset fingerprint")
            spacing = fingerprint["median_spacing"]
        window = block.get("ct_window")
        return cls(
            spacing=tuple(float(s) for s in spacing) if spacing else None,
            ct_window=tuple(float(w) for w in window) if window else None,
            mr_zscore=bool(block.get("mr_zscore", True)),
            mr_n4=bool(block.get("mr_n4", False)),
            crop=bool(block.get("crop", False)),
            crop_margin_mm=float(block.get("crop_margin_mm", 10.0)),
            body_threshold=dict(block.get("body_threshold") or DEFAULT_THRESHOLDS),
        )


def resample_to_spacing(
    image: sitk.Image, spacing: tuple[float, float, float], is_label: bool
) -> sitk.Image:
    """Resample onto a grid of `spacing` covering the same physical extent.

    Images use B-spline interpolation; labels are resampled per label by linear interpolation
    of their indicator and a 0.5 threshold, which keeps them binary and their volume unbiased
    (nearest neighbour shifts small structures by up to half a voxel).
    """
    old_spacing = np.asarray(image.GetSpacing())
    old_size = np.asarray(image.GetSize())
    new_spacing = np.asarray(spacing, float)
    new_size = np.maximum(np.round(old_size * old_spacing / new_spacing).astype(int), 1)
    # Keep the centre of the field of view fixed.
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    old_center = np.asarray(image.GetOrigin()) + direction @ ((old_size - 1) * old_spacing / 2)
    origin = old_center - direction @ ((new_size - 1) * new_spacing / 2)
    reference = sitk.Image([int(s) for s in new_size], sitk.sitkUInt8)
    reference.SetSpacing(tuple(new_spacing))
    reference.SetOrigin(tuple(origin))
    reference.SetDirection(image.GetDirection())
    if is_label:
        return resample_label(image, reference, sitk.Transform())
    out = sitk.Resample(
        sitk.Cast(image, sitk.sitkFloat32),
        reference,
        sitk.Transform(),
        sitk.sitkBSpline,
        float(sitk.GetArrayViewFromImage(image).min()),
        sitk.sitkFloat32,
    )
    return out


def resample_label(
    label: sitk.Image, reference: sitk.Image, transform: sitk.Transform
) -> sitk.Image:
    """Resample a label image onto `reference` through `transform`, label by label."""
    arr = sitk.GetArrayFromImage(label)
    out = np.zeros(reference.GetSize()[::-1], np.uint8)
    for value in sorted(set(np.unique(arr).tolist()) - {0}):
        indicator = sitk.GetImageFromArray((arr == value).astype(np.float32))
        indicator.CopyInformation(label)
        warped = sitk.Resample(indicator, reference, transform, sitk.sitkLinear, 0.0)
        out[sitk.GetArrayViewFromImage(warped) >= 0.5] = value
    image = sitk.GetImageFromArray(out)
    image.CopyInformation(reference)
    return image


def normalize(
    image: sitk.Image, modality: str, settings: PreprocessSettings
) -> tuple[sitk.Image, dict[str, Any]]:
    """Per-modality intensity normalisation; returns the image and what was done."""
    record: dict[str, Any] = {"modality": modality}
    if modality == "CT":
        if settings.ct_window:
            lo, hi = settings.ct_window
            image = sitk.Clamp(image, sitk.sitkFloat32, lo, hi)
            record["ct_window"] = [lo, hi]
        return image, record
    if modality == "MR":
        body = body_mask(image, modality, settings.body_threshold)
        if settings.mr_n4:
            n4 = sitk.N4BiasFieldCorrectionImageFilter()
            image = n4.Execute(sitk.Cast(image, sitk.sitkFloat32), body)
            record["n4"] = True
        if settings.mr_zscore:
            arr = sitk.GetArrayFromImage(image).astype(np.float32)
            inside = arr[sitk.GetArrayViewFromImage(body) > 0]
            mean, sd = float(inside.mean()), float(inside.std()) or 1.0
            out = sitk.GetImageFromArray((arr - mean) / sd)
            out.CopyInformation(image)
            image = out
            record["zscore"] = {"mean": mean, "sd": sd, "region": "body"}
        return image, record
    record["note"] = "PET kept as given (SUV or counts)"
    return image, record


def crop_to_body(
    image: sitk.Image,
    mask: sitk.Image | None,
    modality: str,
    margin_mm: float,
    thresholds: dict[str, Threshold] | None = None,
) -> tuple[sitk.Image, sitk.Image | None, list[int]]:
    """Crop to the body's bounding box plus a margin; returns (image, mask, [x0,y0,z0,x1,y1,z1])."""
    body = sitk.GetArrayFromImage(body_mask(image, modality, thresholds))
    idx = np.argwhere(body > 0)
    if len(idx) == 0:
        return image, mask, [0, 0, 0, *image.GetSize()]
    margin = np.ceil(margin_mm / np.asarray(image.GetSpacing())[::-1]).astype(int)
    lo = np.maximum(idx.min(0) - margin, 0)
    hi = np.minimum(idx.max(0) + margin + 1, body.shape)
    box = [int(v) for v in (*lo[::-1], *hi[::-1])]
    image = image[box[0] : box[3], box[1] : box[4], box[2] : box[5]]
    if mask is not None:
        mask = mask[box[0] : box[3], box[1] : box[4], box[2] : box[5]]
    return image, mask, box


def preprocess_scan(
    image_path: str | Path,
    mask_path: str | Path | None,
    modality: str,
    settings: PreprocessSettings,
    image_out: str | Path,
    mask_out: str | Path | None,
    record_out: str | Path,
    where: str = "",
) -> dict[str, Any]:
    """Resample, normalise and optionally crop one scan; write image, mask and a JSON record."""
    if mask_out is not None and not mask_path:
        raise io.ImageReadError(f"{where}: no mask given for {image_path}")
    image = io.read_image(image_path)
    mask = io.read_image(mask_path) if mask_path else None
    record: dict[str, Any] = {
        "input_spacing": list(image.GetSpacing()),
        "input_size": list(image.GetSize()),
        "settings": asdict(settings),
    }
    if settings.spacing is not None:
        image = resample_to_spacing(image, settings.spacing, is_label=False)
        if mask is not None:
            mask = resample_to_spacing(mask, settings.spacing, is_label=True)
        record["interpolation"] = {"image": "bspline", "mask": "linear indicator >= 0.5"}
    image, record["normalization"] = normalize(image, modality, settings)
    if settings.crop:
        image, mask, record["crop_box_xyz"] = crop_to_body(
            image, mask, modality, settings.crop_margin_mm, settings.body_threshold
        )
    image = sitk.Cast(image, sitk.sitkFloat32)
    record["output_spacing"] = list(image.GetSpacing())
    record["output_size"] = list(image.GetSize())
    io.write_image(image, image_out)
    if mask is not None and mask_out is not None:
        io.write_image(mask, mask_out)
        record["mask_voxels"] = int(np.count_nonzero(sitk.GetArrayViewFromImage(mask)))
    io.write_json(record, record_out)
    return record


def preprocess_mask(mask_path: str | Path, reference_path: str | Path, mask_out: str | Path) -> int:
    """A drawn mask on its preprocessed image's grid (resampled and cropped as that image), by
    per-label linear interpolation and a 0.5 threshold; returns the tumour voxel count.

    A job of its own, so scans without a drawn mask need none: the segmentation stage
    predicts theirs."""
    reference = io.read_image(reference_path)
    mask = resample_label(io.read_image(mask_path), reference, sitk.Transform())
    io.write_image(mask, mask_out)
    return int(np.count_nonzero(sitk.GetArrayViewFromImage(mask)))


def apply_normalization(image: sitk.Image, record: dict[str, Any]) -> sitk.Image | None:
    """Repeat a scan's recorded normalisation (the ``normalization`` entry of its preprocessing
    record) on another resampling of the same original, or None where it cannot be repeated
    exactly (N4 bias correction depends on the grid it ran on).

    Registration uses it to resample a later scan once, from the original straight onto the
    baseline grid, instead of resampling the already-resampled scan a second time: a second
    interpolation smooths the follow-up more than the baseline, and texture deltas would then
    partly measure smoothing."""
    if record.get("n4"):
        return None
    image = sitk.Cast(image, sitk.sitkFloat32)
    if "ct_window" in record:
        lo, hi = record["ct_window"]
        image = sitk.Clamp(image, sitk.sitkFloat32, lo, hi)
    if "zscore" in record:
        z = record["zscore"]
        image = (image - z["mean"]) / z["sd"]
    return image


def fingerprint(samples: pd.DataFrame) -> dict[str, Any]:
    """Dataset fingerprint (cf. nnU-Net's): spacings, sizes, per-centre intensity in the masks."""
    scans, per_center = [], {}
    for row in samples.itertuples():
        geo, _, _ = io.read_header(row.image)
        scans.append(
            {
                "patient_id": row.patient_id,
                "timepoint": row.timepoint,
                "spacing": list(geo.spacing),
                "size": list(geo.size),
            }
        )
        if isinstance(row.mask, str):
            img = sitk.GetArrayFromImage(io.read_image(row.image))
            msk = sitk.GetArrayFromImage(io.read_image(row.mask)) > 0
            per_center.setdefault((row.center, row.modality), []).append(img[msk].astype(float))
    spacings = np.asarray([s["spacing"] for s in scans])
    stats = {}
    for (center, modality), chunks in sorted(per_center.items()):
        values = np.concatenate(chunks)
        stats[f"{center}/{modality}"] = {
            "mean": float(values.mean()),
            "sd": float(values.std()),
            "median": float(np.median(values)),
            "p00_5": float(np.percentile(values, 0.5)),
            "p99_5": float(np.percentile(values, 99.5)),
            "voxels": int(values.size),
        }
    return {
        "n_scans": len(scans),
        "median_spacing": [float(v) for v in np.median(spacings, axis=0)],
        "min_spacing": [float(v) for v in spacings.min(axis=0)],
        "max_spacing": [float(v) for v in spacings.max(axis=0)],
        "intensity_in_mask": stats,
        "scans": scans,
    }


def write_fingerprint(samples_path: str | Path, out: str | Path) -> None:
    io.write_json(fingerprint(io.read_tsv(samples_path)), out)
