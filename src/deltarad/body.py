"""The patient's body: one definition for every stage that needs it.

Preprocessing z-scores MR inside it and crops to it, registration measures its QC, intensity
window and TRE points inside it, and the peritumoral rings are clipped to it. All read the
thresholds of config key ``preprocess.body_threshold`` per modality: a number (image units;
CT: HU), ``otsu`` (Otsu's threshold of the scan itself, for MR/PET whose units are arbitrary) or
null (the whole field of view). The body is the largest connected component above the
threshold with holes filled per axial slice (air in the lungs or bowel inside the body is
kept; lungs reach the ends of the field of view in z, so a 3-D fill would leave them open).

Example:
    >>> import numpy as np
    >>> image = np.full((3, 5, 5), -1000.0); image[:, 1:4, 1:4] = 40.0; image[:, 2, 2] = -900.0
    >>> int(body_array(image, -500).sum()), bool(body_array(image, None).all())
    (27, True)
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

OTSU = "otsu"
# preprocess.body_threshold's default.
DEFAULT_THRESHOLDS: dict[str, float | str | None] = {"CT": -500.0, "MR": OTSU, "PET": OTSU}
Threshold = float | str | None


def threshold_for(modality: str | None, thresholds: Mapping[str, Threshold] | None) -> Threshold:
    """The body threshold of a modality (`thresholds` None: the defaults); a modality the
    mapping does not name (or none) has no threshold: the whole field of view."""
    table = DEFAULT_THRESHOLDS if thresholds is None else thresholds
    return table.get(modality or "")


def body_array(image: np.ndarray, threshold: Threshold) -> np.ndarray:
    """The body of a (z, y, x) array as booleans (module docstring)."""
    if threshold is None:
        return np.ones(image.shape, dtype=bool)
    if threshold == OTSU:
        otsu = sitk.OtsuThresholdImageFilter()
        otsu.Execute(sitk.GetImageFromArray(np.asarray(image, dtype=np.float32)))
        threshold = otsu.GetThreshold()
    labels, n = ndimage.label(image > float(threshold))
    if n == 0:
        return np.zeros(image.shape, dtype=bool)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    body = labels == int(np.argmax(sizes))
    for z in range(body.shape[0]):
        body[z] = ndimage.binary_fill_holes(body[z])
    return body


def body_mask(
    image: sitk.Image, modality: str | None, thresholds: Mapping[str, Threshold] | None = None
) -> sitk.Image:
    """The body of a scan as a uint8 image on its grid."""
    threshold = threshold_for(modality, thresholds)
    arr = body_array(sitk.GetArrayFromImage(image).astype(np.float32), threshold)
    out = sitk.GetImageFromArray(arr.astype(np.uint8))
    out.CopyInformation(image)
    return out
