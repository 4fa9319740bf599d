"""Handcrafted features: pyradiomics on every region of a scan, without repeating work.

pyradiomics' own extractor (and its batch CLI) treats each (image, mask) row on its own: it
reads, normalises, resamples and filters the image again for every region. Here one scan is
loaded, normalised and (if configured) resampled once, each filter (LoG, wavelet, ...) runs once,
and every region's features are computed on those same images with pyradiomics' own feature
classes. Without resampling the values are identical to ``RadiomicsFeatureExtractor.execute`` per
region (the filters see the whole image either way; tested to 1e-6 relative). With resampling,
pyradiomics crops the resampled grid to each ROI's bounding box; here the grid is cropped once to
the union of all regions, so filtered-image features of inner regions can differ slightly from a
per-region run (the tumour alone, as one region, still matches exactly).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import SimpleITK as sitk
import yaml

from deltarad import io
from deltarad.features.regions import build_regions
from deltarad.runlog import UserError

SOURCE = "pyrad"
log = logging.getLogger(__name__)


class GeometryMismatchError(UserError):
    """Image and mask of a scan are not on the same voxel grid."""


def load_params(path: str | Path) -> dict[str, Any]:
    """A pyradiomics parameter file as a dict (comments are for people)."""
    return yaml.safe_load(Path(path).read_text()) or {}


def make_extractor(params: Mapping[str, Any] | str | Path) -> Any:
    """A configured pyradiomics extractor (its settings and enabled features drive everything)."""
    import radiomics
    from radiomics import featureextractor

    # radiomics sets its logger to INFO when imported (every feature class is logged, and a
    # GLCM note at WARNING for every region): keep job logs to real errors.
    radiomics.setVerbosity(logging.ERROR)
    logging.getLogger("radiomics").setLevel(logging.ERROR)
    logging.getLogger("pykwalify").setLevel(logging.WARNING)
    if isinstance(params, str | Path):
        params = load_params(params)
    extractor = featureextractor.RadiomicsFeatureExtractor(dict(params))
    return extractor


# Shape features that measure size: 0 for a tumour that has vanished (complete response). The
# others are ratios of sizes (sphericity, elongation, surface-to-volume, ...), undefined there.
ZERO_SIZE_SHAPE = (
    "VoxelVolume", "MeshVolume", "SurfaceArea", "Maximum3DDiameter", "Maximum2DDiameterSlice",
    "Maximum2DDiameterColumn", "Maximum2DDiameterRow", "MajorAxisLength", "MinorAxisLength",
    "LeastAxisLength",
)  # fmt: skip


def absent_tumor_features(extractor: Any) -> dict[str, float]:
    """The defined features of a tumour that has vanished: the enabled shape features of the
    original image, sizes 0 and ratios NaN. Intensity and texture of an empty region are
    undefined (pyradiomics refuses empty masks), so they are left out (NA in the table)."""
    from radiomics.shape import RadiomicsShape

    if "Original" not in extractor.enabledImagetypes or "shape" not in extractor.enabledFeatures:
        return {}
    enabled = extractor.enabledFeatures["shape"] or [
        name for name, deprecated in RadiomicsShape.getFeatureNames().items() if not deprecated
    ]
    return {
        f"original_shape_{name}": 0.0 if name in ZERO_SIZE_SHAPE else float("nan")
        for name in enabled
    }


def _on_grid(mask: sitk.Image, reference: sitk.Image) -> sitk.Image:
    """A region mask carried onto the (possibly resampled and cropped) reference grid."""
    if io.Geometry.of(mask) == io.Geometry.of(reference):
        return mask
    return sitk.Resample(mask, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0)


def _voxel_errors(
    regions: Mapping[str, sitk.Image], min_voxels: Mapping[str, int] | int
) -> dict[str, str]:
    errors = {}
    for name, mask in regions.items():
        need = min_voxels if isinstance(min_voxels, int) else min_voxels.get(name, 1)
        count = int(np.count_nonzero(sitk.GetArrayViewFromImage(mask) == 1))
        if count < max(int(need), 1):
            errors[name] = f"region {name} has {count} voxels (< minimum {need})"
    return errors


def prepare_scan(
    image: sitk.Image, regions: Mapping[str, sitk.Image], extractor: Any
) -> tuple[sitk.Image, sitk.Image, dict[str, sitk.Image]]:
    """Normalise and resample the image once, cropped to the union of all regions.

    Returns the working image, the union mask and every region mask on that grid. pyradiomics
    would instead resample onto a grid aligned to each region's own bounding box.
    """
    settings = {**extractor.settings, "label": 1}
    arrays = [sitk.GetArrayViewFromImage(m) == 1 for m in regions.values()]
    union = sitk.GetImageFromArray(np.logical_or.reduce(arrays).astype(np.uint8))
    union.CopyInformation(next(iter(regions.values())))
    work_image, work_union = extractor.loadImage(image, union, None, **settings)
    work_regions = {name: _on_grid(m, work_image) for name, m in regions.items()}
    return work_image, work_union, work_regions


def features_on_grid(
    image: sitk.Image, union: sitk.Image, regions: Mapping[str, sitk.Image], extractor: Any
) -> tuple[dict[str, dict[str, float]], dict[str, str]]:
    """Features of prepared regions: each filter runs once, all regions reuse its output.

    Identical to ``extractor.execute(image, region)`` per region when resampling is off (the
    inputs here are already resampled): pyradiomics filters the whole image it is given.
    """
    from radiomics import imageoperations

    settings = {**extractor.settings, "label": 1}
    settings.pop("resampledPixelSpacing", None)  # the grid is final; never resample again
    errors: dict[str, str] = {}
    features: dict[str, dict[str, float]] = {}
    prepared: dict[str, tuple[sitk.Image, Any]] = {}
    for name, region in regions.items():
        try:
            mask = imageoperations.getMask(region, **settings)
            bbox, corrected = imageoperations.checkMask(image, mask, **settings)
            if corrected is not None:
                mask = corrected
            if bbox is None:
                raise ValueError("refused by pyradiomics' mask checks")
            reseg = None
            if settings.get("resegmentRange") is not None:
                reseg = imageoperations.resegmentMask(image, mask, **settings)
                bbox, _ = imageoperations.checkMask(image, reseg, **settings)
                if bbox is None:
                    raise ValueError("no voxel left after resegmentation")
            shape_mask = reseg if (settings.get("resegmentShape") and reseg is not None) else mask
            features[name] = dict(extractor.computeShape(image, shape_mask, bbox, **settings))
            prepared[name] = (reseg if reseg is not None else mask, bbox)
        except (ValueError, AssertionError) as err:
            errors[name] = f"region {name}: {err}"
    if prepared:
        for image_type, custom in extractor.enabledImagetypes.items():
            args = {**settings, **custom}
            make = getattr(imageoperations, f"get{image_type}Image")
            for filtered, type_name, kwargs in make(image, union, **args):
                for name, (mask, bbox) in prepared.items():
                    img_c, mask_c = imageoperations.cropToTumorMask(filtered, mask, bbox)
                    features[name].update(
                        extractor.computeFeatures(img_c, mask_c, type_name, **kwargs)
                    )
    out = {n: {k: float(v) for k, v in features[n].items()} for n in prepared}
    return out, errors


def extract_regions(
    image: sitk.Image,
    regions: Mapping[str, sitk.Image],
    extractor: Any,
    min_voxels: Mapping[str, int] | int = 1,
) -> tuple[dict[str, dict[str, float]], dict[str, str]]:
    """Features of every region (uint8 masks, value 1) of one image, sharing all image work.

    Returns (features per usable region, error message per failed region); a region below its
    minimum voxel count or refused by pyradiomics' mask checks is a failure, not an exception.
    """
    errors = _voxel_errors(regions, min_voxels)
    usable = {n: m for n, m in regions.items() if n not in errors}
    if not usable:
        return {}, errors
    work_image, work_union, work_regions = prepare_scan(image, usable, extractor)
    features, more = features_on_grid(work_image, work_union, work_regions, extractor)
    return features, {**errors, **more}


def read_scan(
    image_path: str | Path, mask_path: str | Path, what: str
) -> tuple[sitk.Image, sitk.Image]:
    """Image and mask of one scan; a grid mismatch names the scan and both geometries."""
    image = io.read_image(image_path)
    mask = io.read_image(mask_path)
    a, b = io.Geometry.of(image), io.Geometry.of(mask)
    bad = a.mismatches(b)
    if bad:
        raise GeometryMismatchError(
            f"{what}: image and mask differ in {', '.join(bad)}: image {image_path} has "
            f"{a.describe()}; mask {mask_path} has {b.describe()}"
        )
    mask.CopyInformation(image)  # within tolerance: put both on exactly one grid
    return image, mask


def extract_scan(
    image_path: str | Path,
    mask_path: str | Path,
    extractor: Any,
    rings_mm: list[tuple[float, float]],
    body_threshold: float | None = None,
    min_voxels: Mapping[str, int] | int = 1,
    label: int = 1,
    what: str = "scan",
) -> tuple[dict[str, dict[str, float]], dict[str, str]]:
    """Regions of one scan file pair and their features (see :func:`extract_regions`)."""
    image, mask = read_scan(image_path, mask_path, what)
    regions = build_regions(image, mask, rings_mm, body_threshold, label)
    return extract_regions(image, regions, extractor, min_voxels)


def scan_table(
    features: Mapping[str, Mapping[str, float]], errors: Mapping[str, str], regions: list[str]
) -> pd.DataFrame:
    """One row per region (``region, error`` then pyradiomics' feature names), for one scan."""
    rows = [{"region": n, "error": errors.get(n, pd.NA), **features.get(n, {})} for n in regions]
    return pd.DataFrame(rows)


def write_scan_table(table: pd.DataFrame, path: str | Path) -> Path:
    """CSV (or TSV for a .tsv name) written atomically, NA for missing values."""
    path = Path(path)
    sep = "\t" if path.suffix == ".tsv" else ","
    with io.atomic_path(path) as tmp:
        table.to_csv(tmp, sep=sep, index=False, na_rep="NA", lineterminator="\n")
    return path
