"""Tumour masks from DICOM: RTSTRUCT contours rasterised and DICOM-SEG segments read, both
onto the referenced image's voxel grid.

RTSTRUCT: each closed planar contour is mapped to voxel coordinates of the referenced image;
it must lie on a slice of that image (a contour between slices means the structure set belongs
to another reconstruction, the classic cause of masks one slice off). A voxel is inside when its
centre is inside the polygon; several contours on one slice combine by even-odd (holes).

DICOM-SEG: read with highdicom, frames matched to the image's slices by SOPInstanceUID, so
the mask is on exactly the image grid by construction.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset
from skimage.draw import polygon2mask

from deltarad.runlog import UserError

# A contour plane may be this far (in slices) from a slice centre and still count as on it.
PLANE_TOLERANCE = 0.1


class MaskError(UserError):
    """A structure set or segmentation cannot be turned into a mask."""


def rtstruct_series_uid(ds: Dataset) -> str | None:
    """SeriesInstanceUID of the image series a structure set was drawn on."""
    for frame in ds.get("ReferencedFrameOfReferenceSequence", []):
        for study in frame.get("RTReferencedStudySequence", []):
            for series in study.get("RTReferencedSeriesSequence", []):
                if "SeriesInstanceUID" in series:
                    return str(series.SeriesInstanceUID)
    return None


def seg_series_uid(ds: Dataset) -> str | None:
    """SeriesInstanceUID of the image series a DICOM-SEG segments."""
    for series in ds.get("ReferencedSeriesSequence", []):
        if "SeriesInstanceUID" in series:
            return str(series.SeriesInstanceUID)
    return None


def _choose(names: dict[int, str], roi_regex: str, what: str, name: str) -> int:
    pattern = re.compile(roi_regex, re.IGNORECASE)
    hits = [n for n, label in sorted(names.items()) if pattern.search(label)]
    if len(hits) != 1:
        listed = ", ".join(repr(label) for _, label in sorted(names.items())) or "none"
        count = f"{len(hits)} ROIs match" if hits else "no ROI matches"
        raise MaskError(
            f"{what} {name}: {count} the ROI regex {roi_regex!r} (ROIs: {listed}); "
            "set a regex that matches exactly one"
        )
    return hits[0]


def rasterise_rtstruct(path: Path, name: str, roi_regex: str, image: sitk.Image) -> np.ndarray:
    """The ROI matching `roi_regex` as a uint8 array (z, y, x) on `image`'s grid.

    `name` is how messages refer to the file (relative to the ingest root).
    """
    ds = pydicom.dcmread(path)
    names = {int(r.ROINumber): str(r.ROIName) for r in ds.get("StructureSetROISequence", [])}
    number = _choose(names, roi_regex, "structure set", name)
    contours = [
        c
        for roi in ds.get("ROIContourSequence", [])
        if int(roi.ReferencedROINumber) == number
        for c in roi.get("ContourSequence", [])
    ]
    size = image.GetSize()
    mask = np.zeros(size[::-1], bool)
    origin = np.asarray(image.GetOrigin())
    spacing = np.asarray(image.GetSpacing())
    inverse = np.linalg.inv(np.asarray(image.GetDirection()).reshape(3, 3))
    for contour in contours:
        kind = str(contour.get("ContourGeometricType", "CLOSED_PLANAR"))
        if kind == "POINT":
            continue
        points = np.asarray([float(v) for v in contour.ContourData]).reshape(-1, 3)
        index = ((points - origin) @ inverse.T) / spacing  # continuous (x, y, z) indices
        z = float(np.mean(index[:, 2]))
        k = int(round(z))
        if np.ptp(index[:, 2]) > 2 * PLANE_TOLERANCE or abs(z - k) > PLANE_TOLERANCE:
            raise MaskError(
                f"structure set {name}: a contour of ROI {names[number]!r} lies at slice index "
                f"{z:.2f}, between slices of the referenced image (drawn on another "
                "reconstruction?)"
            )
        if not 0 <= k < size[2]:
            raise MaskError(
                f"structure set {name}: a contour of ROI {names[number]!r} lies outside the "
                f"referenced image (slice index {k}, image has {size[2]} slices)"
            )
        polygon = index[:, [1, 0]]  # (row, column) = (y, x)
        mask[k] ^= polygon2mask((size[1], size[0]), polygon)
    if not mask.any():
        raise MaskError(f"structure set {name}: ROI {names[number]!r} has no contour voxels")
    return mask.astype(np.uint8)


def read_seg(path: Path, name: str, roi_regex: str, slice_uids: tuple[str, ...]) -> np.ndarray:
    """The segment matching `roi_regex` as a uint8 array (z, y, x) on the image's slices."""
    import highdicom as hd

    seg = hd.seg.segread(path)
    labels = {int(s.SegmentNumber): str(s.SegmentLabel) for s in seg.SegmentSequence}
    number = _choose(labels, roi_regex, "segmentation", name)
    try:
        pixels = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=list(slice_uids),
            segment_numbers=[number],
            assert_missing_frames_are_empty=True,
        )
    except (ValueError, KeyError, AttributeError, RuntimeError) as err:
        raise MaskError(
            f"segmentation {name}: its frames do not map onto the referenced image's slices "
            f"({type(err).__name__})"
        ) from None
    array = np.asarray(pixels)[..., 0]
    if np.issubdtype(array.dtype, np.floating):
        array = array >= 0.5
    mask = (array > 0).astype(np.uint8)
    if not mask.any():
        raise MaskError(f"segmentation {name}: segment {labels[number]!r} is empty")
    return mask
