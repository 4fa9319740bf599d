"""Write NIfTI scans and masks out as DICOM: image series, RTSTRUCT and DICOM-SEG.

This exists to test ingest on data the project makes itself: the synthetic cohort is exported
with fake identifying data (names, birth dates, institutions, visit dates, hospital numbers,
also in folder names, as real exports do), ingested back and compared with the originals.
UIDs are derived from a seed, so the same call writes the same files.

Example:
    >>> person = fake_person(0, "C1")
    >>> person.patient_id
    'MRN0400001'
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from skimage import measure

from deltarad import __version__, io
from deltarad.dicom.discover import RTSTRUCT_CLASS

CT_CLASS = "1.2.840.10008.5.1.4.1.1.2"
MR_CLASS = "1.2.840.10008.5.1.4.1.1.4"
PET_CLASS = "1.2.840.10008.5.1.4.1.1.128"
# Sheet modality -> (DICOM Modality, storage class).
MODALITIES = {"CT": ("CT", CT_CLASS), "MR": ("MR", MR_CLASS), "PET": ("PT", PET_CLASS)}
STUDY_COMPONENT_CLASS = "1.2.840.10008.3.1.2.3.1"
FAMILY = ("MUSTERMANN", "JANSSEN", "ROSSI", "DUBOIS", "NOWAK", "SILVA", "MEYER", "COSTA")
GIVEN = ("ERIKA", "PIETER", "GIULIA", "AMELIE", "TOMASZ", "JOANA", "LUKAS", "INES")


@dataclass(frozen=True)
class FakePerson:
    """Identifying data that must never reach an output: everything here is made up."""

    patient_id: str
    name: str  # DICOM person name, FAMILY^GIVEN
    birth_date: str  # YYYYMMDD
    institution: str
    referring: str
    accession_prefix: str

    @property
    def strings(self) -> list[str]:
        """Every value a leak check must search for."""
        family, given = self.name.split("^")
        return [
            self.patient_id,
            self.name,
            family,
            given,
            self.birth_date,
            f"{self.birth_date[:4]}-{self.birth_date[4:6]}-{self.birth_date[6:]}",
            self.institution,
            self.referring,
            self.accession_prefix,
        ]


def fake_person(index: int, center: str) -> FakePerson:
    """A deterministic fake identity for the `index`-th patient of a cohort."""
    family = FAMILY[index % len(FAMILY)] + ("" if index < len(FAMILY) else str(index))
    given = GIVEN[(index * 3) % len(GIVEN)]
    born = date(1950, 1, 1) + timedelta(days=397 * index + 11)
    return FakePerson(
        patient_id=f"MRN04{index + 1:05d}",
        name=f"{family}^{given}",
        birth_date=born.strftime("%Y%m%d"),
        institution=f"Sint Fictus Ziekenhuis {center}",
        referring=f"DRVANDENBERG{index:02d}^HENK",
        accession_prefix=f"ACC9{index:03d}",
    )


def _uid(*parts: object) -> str:
    return str(generate_uid(entropy_srcs=[str(p) for p in parts]))


def _ds_str(value: float) -> str:
    """A decimal string (at most 16 characters) that reads back as the same float if possible."""
    text = repr(float(value))
    if len(text) <= 16:
        return text
    return pydicom.valuerep.format_number_as_ds(float(value))


def _common(person: FakePerson, study_date: str, study_uid: str, accession: str) -> Dataset:
    ds = Dataset()
    ds.PatientName = person.name
    ds.PatientID = person.patient_id
    ds.PatientBirthDate = person.birth_date
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = study_date
    ds.StudyTime = "101500"
    ds.SeriesDate = study_date
    ds.SeriesTime = "102000"
    ds.AccessionNumber = accession
    ds.ReferringPhysicianName = person.referring
    ds.StudyID = accession[-4:]
    ds.StudyDescription = f"CT THORAX for {person.name.replace('^', ' ')}"
    ds.InstitutionName = person.institution
    ds.Manufacturer = "DeltaRad synthetic"
    return ds


def _save(ds: Dataset, sop_class: str, path: Path) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    with io.atomic_path(path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)


def write_image_series(
    image: sitk.Image,
    folder: Path,
    person: FakePerson,
    study_date: str,
    study_uid: str,
    modality: str = "CT",
    seed: str = "",
    extra: Dataset | None = None,
    channel: str | None = None,
) -> list[Dataset]:
    """One file per slice (IMG0001.dcm, ...); integer images keep slope 1, float images are
    quantised to 16 bits with a slope and intercept (the rounding the round trip allows).
    The SeriesDescription starts with `channel` (default: the modality), which ingest derives
    the channel back from, and ends with the institution (identifying text to cut out).
    `extra` holds further header fields for every slice (e.g. PET dose and timing)."""
    array = sitk.GetArrayFromImage(image)
    if np.issubdtype(array.dtype, np.integer):
        slope, intercept = 1.0, float(min(int(array.min()), -1024))
    else:
        low, high = float(array.min()), float(array.max())
        slope, intercept = max((high - low) / 65535.0, 1e-6), low
    stored = np.clip(np.rint((array - intercept) / slope), 0, 65535).astype(np.uint16)
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    spacing = np.asarray(image.GetSpacing())
    origin = np.asarray(image.GetOrigin())
    series_uid = _uid(seed, "series")
    frame_uid = _uid(seed, "frame")
    dicom_modality, sop_class = MODALITIES[modality]
    datasets = []
    for k in range(array.shape[0]):
        ds = _common(person, study_date, study_uid, f"{person.accession_prefix}{study_date[-4:]}")
        ds.Modality = dicom_modality
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = _uid(seed, "slice", k)
        ds.FrameOfReferenceUID = frame_uid
        ds.PositionReferenceIndicator = ""
        ds.SeriesNumber = 2
        ds.InstanceNumber = k + 1
        ds.SeriesDescription = f"{channel or modality} {person.institution}"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImagePositionPatient = [_ds_str(v) for v in origin + direction[:, 2] * k * spacing[2]]
        ds.ImageOrientationPatient = [_ds_str(v) for v in direction[:, :2].T.ravel()]
        ds.PixelSpacing = [_ds_str(spacing[1]), _ds_str(spacing[0])]
        ds.SliceThickness = _ds_str(spacing[2])
        ds.Rows, ds.Columns = int(array.shape[1]), int(array.shape[2])
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.RescaleSlope = _ds_str(slope)
        ds.RescaleIntercept = _ds_str(intercept)
        if modality == "CT":
            ds.RescaleType = "HU"
            ds.KVP = "120"
        ds.PixelData = stored[k].tobytes()
        if extra is not None:
            ds.update(extra)
        _save(ds, sop_class, folder / f"IMG{k + 1:04d}.dcm")
        datasets.append(ds)
    return datasets


def _contours(mask: np.ndarray, image: sitk.Image) -> list[tuple[int, np.ndarray]]:
    """(slice, points in mm) of every closed contour of a (z, y, x) mask, on voxel edges."""
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    spacing = np.asarray(image.GetSpacing())
    origin = np.asarray(image.GetOrigin())
    out = []
    for k in range(mask.shape[0]):
        if not mask[k].any():
            continue
        padded = np.pad(mask[k].astype(float), 1)
        for rc in measure.find_contours(padded, 0.5):
            rc = rc[:-1] - 1.0  # drop the closing point, undo the padding
            index = np.column_stack([rc[:, 1], rc[:, 0], np.full(len(rc), k)])
            out.append((k, origin + (index * spacing) @ direction.T))
    return out


def write_rtstruct(
    mask: np.ndarray,
    image: sitk.Image,
    slices: list[Dataset],
    path: Path,
    person: FakePerson,
    roi_name: str = "GTV_primary",
    seed: str = "",
) -> None:
    """A structure set with the tumour ROI and a decoy ROI (a box) to exercise the regex."""
    first = slices[0]
    ds = _common(person, first.StudyDate, first.StudyInstanceUID, first.AccessionNumber)
    ds.Modality = "RTSTRUCT"
    ds.SeriesInstanceUID = _uid(seed, "rtstruct-series")
    ds.SOPInstanceUID = _uid(seed, "rtstruct")
    ds.SeriesNumber = 50
    ds.InstanceNumber = 1
    ds.StructureSetLabel = "contours"
    ds.StructureSetDate = first.StudyDate
    ds.StructureSetTime = "120000"
    image_refs = {}
    for s in slices:
        ref = Dataset()
        ref.ReferencedSOPClassUID = s.SOPClassUID
        ref.ReferencedSOPInstanceUID = s.SOPInstanceUID
        image_refs[int(s.InstanceNumber) - 1] = ref
    series_ref = Dataset()
    series_ref.SeriesInstanceUID = first.SeriesInstanceUID
    series_ref.ContourImageSequence = Sequence(list(image_refs.values()))
    study_ref = Dataset()
    study_ref.ReferencedSOPClassUID = STUDY_COMPONENT_CLASS
    study_ref.ReferencedSOPInstanceUID = first.StudyInstanceUID
    study_ref.RTReferencedSeriesSequence = Sequence([series_ref])
    frame_ref = Dataset()
    frame_ref.FrameOfReferenceUID = first.FrameOfReferenceUID
    frame_ref.RTReferencedStudySequence = Sequence([study_ref])
    ds.ReferencedFrameOfReferenceSequence = Sequence([frame_ref])
    box = np.zeros_like(mask)
    box[1:3, 2:6, 2:6] = 1
    rois, roi_contours, observations = [], [], []
    for number, (name, roi_mask) in enumerate(((roi_name, mask), ("External_box", box)), 1):
        roi = Dataset()
        roi.ROINumber = number
        roi.ReferencedFrameOfReferenceUID = first.FrameOfReferenceUID
        roi.ROIName = name
        roi.ROIGenerationAlgorithm = "MANUAL"
        rois.append(roi)
        items = []
        for k, points in _contours(roi_mask, image):
            item = Dataset()
            item.ContourImageSequence = Sequence([image_refs[k]])
            item.ContourGeometricType = "CLOSED_PLANAR"
            item.NumberOfContourPoints = len(points)
            item.ContourData = [_ds_str(round(v, 4)) for v in points.ravel()]
            items.append(item)
        contour = Dataset()
        contour.ReferencedROINumber = number
        contour.ROIDisplayColor = [255, 0, 0]
        contour.ContourSequence = Sequence(items)
        roi_contours.append(contour)
        obs = Dataset()
        obs.ObservationNumber = number
        obs.ReferencedROINumber = number
        obs.RTROIInterpretedType = "GTV" if number == 1 else "EXTERNAL"
        obs.ROIInterpreter = ""
        observations.append(obs)
    ds.StructureSetROISequence = Sequence(rois)
    ds.ROIContourSequence = Sequence(roi_contours)
    ds.RTROIObservationsSequence = Sequence(observations)
    _save(ds, RTSTRUCT_CLASS, path)


def write_seg(
    mask: np.ndarray, slices: list[Dataset], path: Path, label: str = "GTV tumour", seed: str = ""
) -> None:
    """A binary DICOM-SEG (highdicom) of one segment over the given slices, in slice order."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=label,
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Neoplasm,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
    )
    seg = hd.seg.Segmentation(
        source_images=slices,
        pixel_array=mask.astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[description],
        series_instance_uid=_uid(seed, "seg-series"),
        series_number=60,
        sop_instance_uid=_uid(seed, "seg"),
        instance_number=1,
        manufacturer="DeltaRad",
        manufacturer_model_name="synthetic",
        software_versions=__version__,
        device_serial_number="0",
    )
    # highdicom stamps the creation time and a random dimension UID; fix both so the same call
    # gives the same bytes.
    seg.InstanceCreationDate = seg.ContentDate = slices[0].StudyDate
    seg.InstanceCreationTime = seg.ContentTime = "120000"
    for item in seg.get("ContributingEquipmentSequence", []):
        if "ContributionDateTime" in item:
            item.ContributionDateTime = slices[0].StudyDate + "120000"
    dimension_uid = _uid(seed, "seg-dimensions")
    for keyword in ("DimensionOrganizationSequence", "DimensionIndexSequence"):
        for item in seg.get(keyword, []):
            item.DimensionOrganizationUID = dimension_uid
    with io.atomic_path(path) as tmp:
        seg.save_as(tmp)


def export_cohort(
    cohort_root: Path, out: Path, start: date = date(2021, 3, 4), masks: bool = True
) -> pd.DataFrame:
    """Export every scan of a generated cohort as DICOM under `out`.

    Layout: ``{MRN}_{FAMILY}/{YYYYMMDD}/{channel}/IMG*.dcm`` (the sheet's `channel`, else the
    modality), one study per timepoint with a series per channel, and ``RS.dcm`` and
    ``SEG.dcm`` next to the series folder (``RS_{channel}.dcm``, ``SEG_{channel}.dcm`` when the
    timepoint has several channels). Returns one row per scan linking the original patient,
    timepoint and channel to the fake identity, the visit date and the written folder (the
    test's answer key).
    """
    samples = io.read_tsv(Path(cohort_root) / "samples.tsv")
    if "channel" not in samples.columns:
        samples["channel"] = None
    samples["channel"] = samples["channel"].fillna(samples["modality"])
    rows = []
    for index, pid in enumerate(sorted(samples["patient_id"].unique())):
        scans = samples[samples["patient_id"] == pid]
        person = fake_person(index, scans["center"].iloc[0])
        baseline = start + timedelta(days=31 * index)
        for timepoint, visit_scans in scans.groupby("timepoint", sort=False):
            several = len(visit_scans) > 1
            days = int(visit_scans["days"].iloc[0])
            visit = (baseline + timedelta(days=days)).strftime("%Y%m%d")
            study_uid = _uid(f"{pid}/{timepoint}", "study")
            study = out / f"{person.patient_id}_{person.name.split('^')[0]}" / visit
            for scan in visit_scans.to_dict("records"):
                channel = scan["channel"]
                seed = f"{pid}/{timepoint}" + (f"/{channel}" if several else "")
                suffix = f"_{channel}" if several else ""
                image = io.read_image(Path(cohort_root) / scan["image"])
                slices = write_image_series(
                    image,
                    study / channel,
                    person,
                    visit,
                    study_uid,
                    scan["modality"],
                    seed,
                    channel=channel,
                )
                drawn = isinstance(scan["mask"], str)
                mask = (
                    sitk.GetArrayFromImage(io.read_image(Path(cohort_root) / scan["mask"]))
                    if (masks and drawn)
                    else None
                )
                # Contours only where the sheet has a non-empty mask (an empty one is a complete
                # response: a structure set would have no contour to hold).
                if mask is not None and mask.any():
                    write_rtstruct(
                        mask, image, slices, study / f"RS{suffix}.dcm", person, seed=seed
                    )
                    write_seg(mask, slices, study / f"SEG{suffix}.dcm", seed=seed)
                rows.append(
                    {
                        "patient_id": pid,
                        "timepoint": timepoint,
                        "channel": channel,
                        "days": int(scan["days"]),
                        "dicom_patient_id": person.patient_id,
                        "study_date": visit,
                        "series_folder": str(study / channel),
                        "study_uid": study_uid,
                        "series_uid": str(slices[0].SeriesInstanceUID),
                        "phi": "|".join(person.strings + [visit]),
                    }
                )
    return pd.DataFrame(rows)
