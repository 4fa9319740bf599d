"""Find DICOM series in a folder tree and sort them into images, RTSTRUCTs and SEGs.

Series are grouped by (StudyInstanceUID, SeriesInstanceUID), never by folder: exports often put
several series in one folder or split one series over several. Objects that are not 3-D image
slices or masks (structured reports, presentation states, key objects, RT plans and doses,
DICOMDIR) are ignored. Headers only are read here (no pixel data), so discovery stays fast.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from deltarad.dicom.pseudonym import Scrubber

LOG = logging.getLogger("deltarad.dicom")
RTSTRUCT_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"
SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
# DICOM modality -> the samples sheet's modality.
IMAGE_MODALITIES = {"CT": "CT", "MR": "MR", "PT": "PET"}
DATE_TAGS = ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate")
# Storage classes of the slices we convert (CT, MR, PET); a file of one of these classes without
# the geometry of a slice is a truncated file, not an object to ignore.
SLICE_CLASSES = (
    "1.2.840.10008.5.1.4.1.1.2",
    "1.2.840.10008.5.1.4.1.1.4",
    "1.2.840.10008.5.1.4.1.1.128",
)


@dataclass
class Series:
    """One DICOM series: its files and the header fields that drive ingest."""

    kind: str  # "image", "rtstruct" or "seg"
    patient_id: str  # the original ID: never written out
    study_uid: str
    series_uid: str
    modality: str  # sheet modality for images, "RTSTRUCT"/"SEG" otherwise
    date: str | None  # YYYYMMDD of the study
    files: list[Path] = field(default_factory=list)
    header: Dataset | None = None  # header of the first file read

    @property
    def folders(self) -> set[Path]:
        return {f.parent for f in self.files}


@dataclass
class Discovery:
    """Everything found under a root: series, unreadable files and a count of ignored ones."""

    root: Path
    series: list[Series]
    unreadable: list[tuple[Path, str]]  # (file, reason): DICOM files that cannot be parsed
    ignored: int
    folder_patients: dict[Path, set[str]]  # folder -> original patient IDs of its files

    def relpath(self, path: Path) -> str:
        """A file named relative to the root (shorter, and hides the site's mount points)."""
        try:
            return str(path.relative_to(self.root))
        except ValueError:
            return str(path)


def _has_preamble(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def read_header(path: Path) -> Dataset | None:
    """Header of a DICOM file, None if it is not DICOM; raises if it is DICOM but unreadable.

    A file with the DICOM preamble that fails to parse is corrupt; a file without it is read
    leniently (old exports omit the preamble) and ignored when that fails.
    """
    if _has_preamble(path):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        meta = getattr(ds, "file_meta", None)
        if "SOPClassUID" not in ds and not (meta and meta.get("MediaStorageSOPClassUID")):
            raise ValueError("no SOP class in the file (truncated or damaged)")
        return ds
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError):
        return None
    return ds if "SOPClassUID" in ds and "SeriesInstanceUID" in ds else None


def _date(ds: Dataset) -> str | None:
    for tag in DATE_TAGS:
        value = str(ds.get(tag, "") or "").strip()
        if len(value) >= 8 and value[:8].isdigit():
            return value[:8]
    return None


def _kind(ds: Dataset) -> str | None:
    sop_class = str(ds.get("SOPClassUID", ""))
    if sop_class == RTSTRUCT_CLASS:
        return "rtstruct"
    if sop_class == SEG_CLASS:
        return "seg"
    modality = str(ds.get("Modality", ""))
    if (
        modality in IMAGE_MODALITIES
        and "ImagePositionPatient" in ds
        and "ImageOrientationPatient" in ds
        and "Rows" in ds
    ):
        return "image"
    return None


def discover(root: Path, scrubber: Scrubber) -> Discovery:
    """Read every file header under `root` and group the usable ones into series.

    Every identifying header value is registered with `scrubber` on the way, so that later
    messages naming files or series can be cleaned before they are written.
    """
    root = Path(root)
    groups: dict[tuple[str, str], Series] = {}
    unreadable: list[tuple[Path, str]] = []
    folder_patients: dict[Path, set[str]] = {}
    ignored = 0
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        try:
            ds = read_header(path)
        except Exception as err:  # noqa: BLE001 - any parser failure means a corrupt file
            unreadable.append((path, f"{type(err).__name__}: {err}"))
            continue
        if ds is None:
            ignored += 1
            continue
        scrubber.collect(ds)
        kind = _kind(ds)
        meta_class = str(getattr(ds, "file_meta", {}).get("MediaStorageSOPClassUID", ""))
        if kind is None and meta_class in (*SLICE_CLASSES, RTSTRUCT_CLASS, SEG_CLASS):
            unreadable.append((path, "incomplete header (truncated file?)"))
            continue
        patient_id = str(ds.get("PatientID", "") or "").strip()
        if kind is None or not patient_id:
            ignored += 1
            continue
        folder_patients.setdefault(path.parent, set()).add(patient_id)
        key = (str(ds.get("StudyInstanceUID", "")), str(ds.get("SeriesInstanceUID", "")))
        series = groups.get(key)
        if series is None:
            modality = str(ds.get("Modality", ""))
            series = groups[key] = Series(
                kind=kind,
                patient_id=patient_id,
                study_uid=key[0],
                series_uid=key[1],
                modality=IMAGE_MODALITIES.get(modality, kind.upper()),
                date=_date(ds),
                header=ds,
            )
        series.files.append(path)
    LOG.info(
        "found %d series (%d image, %d RTSTRUCT, %d SEG) in %d patients; %d files ignored, "
        "%d unreadable",
        len(groups),
        sum(s.kind == "image" for s in groups.values()),
        sum(s.kind == "rtstruct" for s in groups.values()),
        sum(s.kind == "seg" for s in groups.values()),
        len({s.patient_id for s in groups.values()}),
        ignored,
        len(unreadable),
    )
    return Discovery(root, list(groups.values()), unreadable, ignored, folder_patients)
