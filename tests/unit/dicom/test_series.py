"""Series conversion on hand-made series: orientation, rescale rounding, PET SUV, bad stacks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from deltarad import io
from deltarad.dicom.discover import discover
from deltarad.dicom.export import fake_person, write_image_series
from deltarad.dicom.pseudonym import Scrubber
from deltarad.dicom.series import SeriesError, load_volume, suv_factor

# A right-handed sagittal orientation: columns of the matrix are the image x, y, z axes.
SAGITTAL = (0.0, 0.0, -1.0, 1.0, 0.0, 0.0, 0.0, -1.0, 0.0)


def _image(dtype=np.float32, direction=SAGITTAL) -> sitk.Image:
    rng = np.random.default_rng(7)
    array = (rng.normal(300.0, 80.0, (6, 9, 11))).astype(dtype)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.8, 1.25, 3.5))
    image.SetOrigin((-12.5, 40.25, 7.0))
    image.SetDirection(direction)
    return image


def _convert(root: Path):
    found = discover(root, Scrubber())
    (series,) = [s for s in found.series if s.kind == "image"]
    return load_volume(series, found), series, found


def test_oblique_axes_and_rescale_rounding(tmp_path):
    image = _image()
    slices = write_image_series(
        image, tmp_path / "s", fake_person(1, "X"), "20200101", "1.2.3", "MR"
    )
    volume, series, _ = _convert(tmp_path)
    assert series.modality == "MR" and volume.units == "arbitrary"
    assert io.Geometry.of(volume.image) == io.Geometry.of(image)
    original = sitk.GetArrayFromImage(image).astype(float)
    slope = float(slices[0].RescaleSlope)
    assert slope > 0.001  # really quantised: the test exercises the rounding
    error = np.abs(sitk.GetArrayFromImage(volume.image) - original).max()
    assert error <= slope / 2 + 1e-4 * np.abs(original).max()


def test_slices_sorted_by_position_not_file_name(tmp_path):
    image = _image(np.int16, direction=(1, 0, 0, 0, 1, 0, 0, 0, 1))
    write_image_series(image, tmp_path / "s", fake_person(2, "X"), "20200101", "1.2.3")
    names = sorted((tmp_path / "s").glob("*.dcm"))
    for path, new in zip(names, reversed(names), strict=True):
        path.rename(path.with_name("tmp_" + new.name))
    volume, _, _ = _convert(tmp_path)
    assert io.Geometry.of(volume.image) == io.Geometry.of(image)
    np.testing.assert_array_equal(
        sitk.GetArrayFromImage(volume.image), sitk.GetArrayFromImage(image)
    )


def _shift(path: Path, mm: float) -> None:
    ds = pydicom.dcmread(path)
    position = [float(v) for v in ds.ImagePositionPatient]
    position[2] += mm
    ds.ImagePositionPatient = position
    ds.save_as(path)


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda d: _shift(d / "IMG0004.dcm", 1.3), "non-uniform slice spacing"),
        (lambda d: _shift(d / "IMG0004.dcm", -3.5), "duplicate slice position"),
        (lambda d: [p.unlink() for p in d.glob("IMG000[2-6].dcm")], "single slice"),
    ],
    ids=["non-uniform", "duplicate", "single"],
)
def test_bad_stacks_refused_naming_files(tmp_path, edit, needle):
    image = _image(np.int16, direction=(1, 0, 0, 0, 1, 0, 0, 0, 1))
    write_image_series(image, tmp_path / "s", fake_person(3, "X"), "20200101", "1.2.3")
    edit(tmp_path / "s")
    with pytest.raises(SeriesError, match=needle) as err:
        _convert(tmp_path)
    assert "IMG000" in str(err.value)


def _pet_header(correction: str = "START") -> Dataset:
    extra = Dataset()
    extra.Units = "BQML"
    extra.DecayCorrection = correction
    extra.PatientWeight = "70"
    extra.SeriesTime = "110000"
    rp = Dataset()
    rp.RadiopharmaceuticalStartTime = "100000"
    rp.RadionuclideTotalDose = "370000000"
    rp.RadionuclideHalfLife = "6586.2"
    extra.RadiopharmaceuticalInformationSequence = Sequence([rp])
    return extra


def test_suv_factor_body_weight():
    ds = _pet_header()
    ds.SeriesDate = "20200101"
    decayed = 370e6 * 2.0 ** (-3600.0 / 6586.2)
    factor, why = suv_factor(ds)
    assert why == "" and factor == pytest.approx(70000.0 / decayed, rel=1e-12)
    ds.DecayCorrection = "ADMIN"
    assert suv_factor(ds)[0] == pytest.approx(70000.0 / 370e6, rel=1e-12)
    ds.Units = "CNTS"
    factor, why = suv_factor(ds)
    assert factor is None and "CNTS" in why
    ds.Units, ds.PatientWeight = "BQML", "0"
    assert suv_factor(ds)[0] is None


def test_pet_series_converted_to_suv(tmp_path):
    image = _image(np.float32, direction=(1, 0, 0, 0, 1, 0, 0, 0, 1))
    extra = _pet_header()
    person = fake_person(4, "X")
    write_image_series(image, tmp_path / "s", person, "20200101", "1.2.3", "PET", extra=extra)
    volume, series, _ = _convert(tmp_path)
    assert series.modality == "PET" and volume.units == "SUVbw"
    factor = 70000.0 / (370e6 * 2.0 ** (-3600.0 / 6586.2))
    expected = sitk.GetArrayFromImage(image) * factor
    np.testing.assert_allclose(sitk.GetArrayFromImage(volume.image), expected, rtol=2e-3, atol=1e-5)


def test_export_is_byte_identical(tmp_path):
    """Same input and seed give the same files (UIDs and timestamps are derived, not drawn)."""
    from deltarad.dicom.export import write_rtstruct, write_seg

    image = _image(np.int16, direction=(1, 0, 0, 0, 1, 0, 0, 0, 1))
    mask = np.zeros(image.GetSize()[::-1], np.uint8)
    mask[2:4, 3:7, 4:9] = 1
    digests = []
    for run in ("a", "b"):
        folder = tmp_path / run
        slices = write_image_series(image, folder / "s", fake_person(5, "X"), "20200101", "1.2.3")
        write_rtstruct(mask, image, slices, folder / "RS.dcm", fake_person(5, "X"), seed="x")
        write_seg(mask, slices, folder / "SEG.dcm", seed="x")
        digests.append({p.relative_to(folder): io.sha256(p) for p in folder.rglob("*.dcm")})
    assert len(digests[0]) == 8 and digests[0] == digests[1]
