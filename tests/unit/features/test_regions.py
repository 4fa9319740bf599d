"""Peritumoral rings in millimetres: geometry, anisotropy, clipping, naming."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from deltarad.body import body_array
from deltarad.features import regions as rg


def _ball(shape, spacing_zyx, radius_mm, centre=None):
    grid = np.indices(shape).astype(float)
    centre = np.array(centre if centre is not None else [(s - 1) / 2 for s in shape])
    d2 = sum(((grid[i] - centre[i]) * spacing_zyx[i]) ** 2 for i in range(3))
    return d2 <= radius_mm**2


def test_names_are_column_safe_and_unambiguous():
    assert rg.region_name(0, 3) == "ring0to3mm"
    assert rg.region_name(2.5, 5) == "ring2p5to5mm"
    assert rg.parse_rings("0-3, 3-6,6-10") == [(0, 3), (3, 6), (6, 10)]
    assert rg.parse_rings([[0, 3]]) == [(0.0, 3.0)]
    for bad in ("3-0", "a-b", "0-3,0-3", "1"):
        with pytest.raises(rg.RegionError):
            rg.parse_rings(bad)


def test_rings_are_disjoint_annuli_measured_in_mm_with_anisotropic_spacing():
    spacing = (4.0, 1.0, 1.0)  # z thick, x/y fine
    tumor = _ball((21, 61, 61), spacing, 8.0)
    rings = rg.ring_arrays(tumor, spacing, [(0, 3), (3, 6)])
    a, b = rings["ring0to3mm"], rings["ring3to6mm"]
    assert not (a & b).any() and not (a & tumor).any() and not (b & tumor).any()
    # In-plane (1 mm voxels) the 0-3 mm ring is 3 voxels thick on each side; along z the next
    # voxel centre is 4 mm away, so it falls in the 3-6 mm ring instead.
    assert a[10, 30, :].sum() == 6
    assert a[:, 30, 30].sum() == 0
    assert b[:, 30, 30].sum() == 2


def test_ring_distances_match_a_brute_force_check():
    spacing = (2.0, 1.5, 1.0)
    tumor = _ball((12, 16, 20), spacing, 5.0)
    ring = rg.ring_arrays(tumor, spacing, [(2, 5)])["ring2to5mm"]
    pts = np.argwhere(tumor) * spacing
    for idx in np.argwhere(np.ones(tumor.shape, bool))[::7]:
        d = np.sqrt(((pts - idx * spacing) ** 2).sum(1)).min()
        assert ring[tuple(idx)] == (2 < d <= 5 and not tumor[tuple(idx)])


def test_body_clipping_and_field_of_view():
    image = np.full((10, 20, 20), -1000.0)
    image[:, 3:17, 3:17] = 40.0
    image[:, 8:11, 8:11] = -900.0  # air inside the body (a hole) stays body
    body = body_array(image, -500)
    assert body[:, 9, 9].all() and not body[:, 0, 0].any()
    assert body_array(image, None).all()
    assert (body_array(image, "otsu") == body).all()  # Otsu finds the same body here
    tumor = np.zeros(image.shape, bool)
    tumor[4:6, 4:6, 4:6] = True
    ring = rg.ring_arrays(tumor, (1, 1, 1), [(0, 3)], body)["ring0to3mm"]
    assert ring.any() and not (ring & ~body).any()


def test_build_regions_keeps_geometry_and_reports_empty_rings():
    arr = np.zeros((6, 8, 8), np.uint8)
    arr[:, :, :] = 0
    arr[0:2, 0:3, 0:3] = 1  # tumour in the corner
    image = sitk.GetImageFromArray(np.zeros(arr.shape, np.float32))
    image.SetSpacing((1.0, 1.0, 3.0))
    image.SetOrigin((5.0, -2.0, 7.0))
    mask = sitk.GetImageFromArray(arr)
    mask.CopyInformation(image)
    out = rg.build_regions(image, mask, [(0, 2), (30, 40)], body_threshold=None)
    assert list(out) == ["tumor", "ring0to2mm", "ring30to40mm"]
    assert out["ring0to2mm"].GetOrigin() == image.GetOrigin()
    assert sitk.GetArrayFromImage(out["tumor"]).sum() == 18
    assert sitk.GetArrayFromImage(out["ring30to40mm"]).sum() == 0  # beyond the field of view
