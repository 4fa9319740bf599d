"""Regions of one scan: the tumour and peritumoral rings defined in millimetres.

A ring ``[a, b]`` holds the voxels outside the tumour whose centre lies more than ``a`` mm and at
most ``b`` mm from the nearest tumour voxel centre (``a < d <= b``), measured in physical space
(anisotropic spacing handled), so a ring means the same tissue shell at every centre and both
timepoints. Rings are clipped to the body (:mod:`deltarad.body`, the definition every stage
shares; config ``preprocess.body_threshold``). A ring cut by
the image border is simply smaller; one with no voxel left is reported as a failed region by
the caller, never silently dropped. A tumour that has vanished at a later scan (complete
response) leaves its bed: the rings are then drawn around the baseline tumour
(:func:`series_regions`).

Example:
    >>> region_name(0, 3), region_name(2.5, 5)
    ('ring0to3mm', 'ring2p5to5mm')
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from deltarad.body import Threshold, body_array
from deltarad.runlog import UserError

TUMOR = "tumor"


class RegionError(UserError):
    """A ring specification is invalid."""


def _mm(value: float) -> str:
    text = f"{float(value):g}"
    return text.replace(".", "p").replace("-", "m")


def region_name(inner_mm: float, outer_mm: float) -> str:
    """Column-safe name of the ring ``inner < d <= outer`` mm: ``ring{inner}to{outer}mm``."""
    return f"ring{_mm(inner_mm)}to{_mm(outer_mm)}mm"


def parse_rings(spec: str | Sequence[Sequence[float]]) -> list[tuple[float, float]]:
    """Rings from config (``[[0, 3], [3, 6]]``) or the CLI (``"0-3,3-6"``), checked."""
    if isinstance(spec, str):
        pairs = []
        for part in (p.strip() for p in spec.split(",") if p.strip()):
            try:
                a, b = part.split("-")
                pairs.append((float(a), float(b)))
            except ValueError:
                raise RegionError(f"ring {part!r} is not of the form INNER-OUTER (mm)") from None
    else:
        pairs = [(float(a), float(b)) for a, b in spec]
    for a, b in pairs:
        if not 0 <= a < b:
            raise RegionError(f"ring {a:g}-{b:g} mm: need 0 <= inner < outer")
    names = [region_name(a, b) for a, b in pairs]
    if len(set(names)) != len(names):
        raise RegionError(f"duplicate rings: {names}")
    return pairs


def ring_arrays(
    tumor: np.ndarray,
    spacing_zyx: Sequence[float],
    rings_mm: Sequence[tuple[float, float]],
    body: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Boolean ring masks around a boolean tumour array, keyed by :func:`region_name`."""
    tumor = np.asarray(tumor, dtype=bool)
    if not tumor.any():
        return {region_name(a, b): np.zeros(tumor.shape, dtype=bool) for a, b in rings_mm}
    # Distance of every voxel centre to the nearest tumour voxel centre, in mm (0 inside).
    dist = ndimage.distance_transform_edt(~tumor, sampling=tuple(float(s) for s in spacing_zyx))
    out = {}
    for a, b in rings_mm:
        ring = (dist > a) & (dist <= b) & ~tumor
        if body is not None:
            ring &= body
        out[region_name(a, b)] = ring
    return out


def build_regions(
    image: sitk.Image,
    mask: sitk.Image,
    rings_mm: Sequence[tuple[float, float]],
    body_threshold: Threshold = None,
    label: int = 1,
    around: np.ndarray | None = None,
) -> dict[str, sitk.Image]:
    """The tumour and its rings as uint8 masks (value 1) on the image grid; `around` (a boolean
    (z, y, x) array on the same grid): draw the rings around it instead of the tumour."""
    tumor = sitk.GetArrayFromImage(mask) == label
    arrays = {TUMOR: tumor}
    body = body_array(sitk.GetArrayFromImage(image), body_threshold)
    # SimpleITK spacing is (x, y, z); numpy arrays are (z, y, x).
    centre = tumor if around is None else around
    arrays.update(ring_arrays(centre, image.GetSpacing()[::-1], rings_mm, body))
    out = {}
    for name, arr in arrays.items():
        region = sitk.GetImageFromArray(arr.astype(np.uint8))
        region.CopyInformation(image)
        out[name] = region
    return out


def series_regions(
    image: sitk.Image,
    mask: sitk.Image,
    rings_mm: Sequence[tuple[float, float]],
    body_threshold: Threshold = None,
    label: int = 1,
    bed: np.ndarray | None = None,
) -> tuple[dict[str, sitk.Image], bool]:
    """Regions of one scan of a patient's series on the baseline grid, and whether its tumour
    has vanished (complete response).

    `bed`: the baseline tumour (boolean (z, y, x) array on the baseline grid), None for the
    baseline itself. A later scan whose tumour mask is empty while the baseline had a tumour is a
    complete response: its rings are drawn around the tumour bed (the baseline tumour, which is
    already in this grid's space), so the peritumoral tissue is still measured.
    """
    tumor = sitk.GetArrayViewFromImage(mask) == label
    absent = bed is not None and bed.shape == tumor.shape and bool(bed.any()) and not tumor.any()
    regions = build_regions(image, mask, rings_mm, body_threshold, label, bed if absent else None)
    return regions, absent
