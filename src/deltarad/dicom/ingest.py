"""`deltarad ingest-dicom`: a DICOM folder tree in, pseudonymised NIfTI and sample sheets out.

Per patient: image series get timepoints (study-date order, or a user's table) and channels
(:mod:`deltarad.dicom.channels`, or the user's table), are converted
(:mod:`deltarad.dicom.series`), and get a mask from a DICOM-SEG or RTSTRUCT that references them
(:mod:`deltarad.dicom.masks`). A problem with one series or one patient is recorded in
``failures.tsv`` and the rest goes on; a patient left without a usable baseline is dropped.

Output (under ``out``): ``samples.tsv``, ``clinical.tsv`` (when a clinical table is given),
``failures.tsv``, ``images/{pseudonym}/{timepoint}_{channel}.nii.gz`` (+ ``.json`` sidecar),
``masks/{pseudonym}/{timepoint}_{channel}.nii.gz`` and ``logs/ingest_dicom.log``. Every text
written passes through the :class:`~deltarad.dicom.pseudonym.Scrubber`.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from deltarad import io
from deltarad.cohort import BASELINE, SAMPLE_COLUMNS, CohortError, read_sheet
from deltarad.dicom.channels import CHANNEL_PATTERN, derive_channel, header_texts
from deltarad.dicom.discover import Discovery, Series, discover
from deltarad.dicom.masks import MaskError, rasterise_rtstruct, read_seg, rtstruct_series_uid
from deltarad.dicom.masks import seg_series_uid as _seg_series_uid
from deltarad.dicom.pseudonym import Scrubber, pseudonym
from deltarad.dicom.series import SeriesError, Volume, check_folders_clean, load_volume
from deltarad.runlog import UserError

FAILURE_COLUMNS = ["patient_id", "stage", "error"]
UNKNOWN = "unknown"
MASK_SOURCES = ("auto", "seg", "rtstruct")


@dataclass(frozen=True)
class IngestOptions:
    """What the user chooses; the key is passed separately so it is never stored with these."""

    roi_regex: str | None = None  # None: images only, no masks
    center: str = "site1"
    mask_source: str = "auto"  # auto prefers DICOM-SEG (raster, exact) over RTSTRUCT
    prefix: str = "P"
    timepoints: Path | None = None
    clinical: Path | None = None


@dataclass
class IngestResult:
    samples: pd.DataFrame
    failures: pd.DataFrame
    log: list[str] = field(default_factory=list)

    @property
    def n_patients(self) -> int:
        return int(self.samples["patient_id"].nunique())


@dataclass(frozen=True)
class _Scan:
    """An image series placed in the study: its timepoint, days and channel."""

    series: Series
    timepoint: str
    days: int
    channel: str | None  # None until named: the timepoint table's, else derived


@dataclass
class _Run:
    """State of one ingest run (kept out of module globals)."""

    found: Discovery
    key: bytes
    options: IngestOptions
    scrubber: Scrubber
    lines: list[str] = field(default_factory=list)
    failures: list[dict[str, str]] = field(default_factory=list)

    def pid(self, original: str) -> str:
        return pseudonym(original, self.key, self.options.prefix)

    def info(self, message: str) -> None:
        self.lines.append(f"INFO {message}")

    def fail(self, patient: str | None, stage: str, message: str) -> None:
        who = self.pid(patient) if patient else UNKNOWN
        self.failures.append({"patient_id": who, "stage": stage, "error": message})
        self.lines.append(f"ERROR patient {who}, stage {stage}: {message}")


class _Capture(logging.Handler):
    def __init__(self, lines: list[str]):
        super().__init__(logging.INFO)
        self.lines = lines

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.levelname} {record.name}: {record.getMessage()}")


@contextmanager
def _captured(lines: list[str]) -> Iterator[None]:
    """Route library logging and warnings into `lines`, to be scrubbed before writing."""
    handler = _Capture(lines)
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(min(old_level or logging.INFO, logging.INFO))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        finally:
            root.removeHandler(handler)
            root.setLevel(old_level)
            lines += [f"WARNING {w.category.__name__}: {w.message}" for w in caught]


def _mapping(path: Path) -> pd.DataFrame:
    df = read_sheet(path, ["patient_id", "timepoint"])
    keys = [c for c in ("study_date", "study_uid", "series_uid") if c in df.columns]
    if not keys:
        raise UserError(
            f"timepoint table {path} needs a study_date, study_uid or series_uid column "
            "to say which series each row means"
        )
    df = df.fillna("")
    bad = [
        str(i + 2)
        for i, tp in enumerate(df["timepoint"])
        if not re.fullmatch(r"[A-Za-z0-9_-]+", str(tp).strip())
    ]
    if bad:
        raise UserError(
            f"timepoint table {path}: timepoint must be [A-Za-z0-9_-]+ (lines {', '.join(bad)})"
        )
    if "channel" in df.columns:
        bad = [
            str(i + 2)
            for i, ch in enumerate(df["channel"])
            if str(ch).strip() and not CHANNEL_PATTERN.fullmatch(str(ch).strip())
        ]
        if bad:
            raise UserError(
                f"timepoint table {path}: channel must be letters and digits only "
                f"(lines {', '.join(bad)})"
            )
    return df


def _assign_timepoints(
    run: _Run, patient: str, images: list[Series], table: pd.DataFrame | None
) -> list[_Scan]:
    """Timepoint and days of a patient's image series (with the channel where the timepoint
    table names one); failures recorded in `run`."""
    labelled: list[tuple[Series, str, str | None]] = []
    rows = None if table is None else table[table["patient_id"].str.strip() == patient]
    if rows is not None and len(rows):
        for line, row in rows.iterrows():
            hits = [
                s
                for s in images
                if all(
                    not str(row.get(col, "")).strip() or str(row[col]).strip() == value
                    for col, value in (
                        ("study_date", s.date),
                        ("study_uid", s.study_uid),
                        ("series_uid", s.series_uid),
                    )
                )
            ]
            if not hits:
                run.fail(
                    patient, "timepoints", f"timepoint table line {line + 2} matches no series"
                )
            channel = str(row.get("channel", "")).strip() or None
            labelled += [(s, str(row["timepoint"]).strip(), channel) for s in hits]
        skipped = len(images) - len({id(s) for s, *_ in labelled})
        if skipped:
            run.info(f"patient {run.pid(patient)}: {skipped} series not in the timepoint table")
    else:
        dates = sorted({s.date for s in images if s.date})
        names = ["baseline", "followup"] + [f"followup{i}" for i in range(2, len(dates))]
        for s in images:
            if s.date is None:
                run.fail(patient, "timepoints", f"series in {_folder(run, s)} has no study date")
            else:
                labelled.append((s, names[dates.index(s.date)], None))
    base_dates = {s.date for s, tp, _ in labelled if tp == BASELINE}
    if len(base_dates) != 1 or None in base_dates:
        run.fail(patient, "timepoints", "no single baseline date: patient skipped")
        return []
    base = datetime.strptime(base_dates.pop(), "%Y%m%d")
    out = []
    for s, tp, channel in labelled:
        days = (datetime.strptime(s.date, "%Y%m%d") - base).days if s.date else -1
        if days < 0:
            run.fail(patient, "timepoints", f"{tp} series in {_folder(run, s)} predates baseline")
            continue
        out.append(_Scan(s, tp, days, channel))
    return out


def _described_modalities(placed: dict[str, list[_Scan]]) -> set[str]:
    """The modalities with several series at one timepoint of some patient: their series are
    named from their headers in every patient, the others after their modality."""
    counts: dict[tuple[str, str, str], int] = {}
    for patient, scans in placed.items():
        for scan in scans:
            key = (patient, scan.timepoint, scan.series.modality)
            counts[key] = counts.get(key, 0) + 1
    return {modality for (_, _, modality), n in counts.items() if n > 1}


def _name_channels(
    run: _Run, patient: str, scans: list[_Scan], described: set[str], cut: Callable[[str], str]
) -> list[_Scan]:
    """The scans with their channels; series sharing a channel at one timepoint are refused
    (failures recorded in `run`): the sheet could not tell them apart."""
    named = []
    for scan in scans:
        s = scan.series
        channel = scan.channel or (
            derive_channel(map(cut, header_texts(s.header)), s.modality)
            if s.modality in described
            else s.modality
        )
        named.append(replace(scan, channel=channel))
    slots: dict[tuple[str, str], list[_Scan]] = {}
    for scan in named:
        slots.setdefault((scan.timepoint, scan.channel), []).append(scan)
    out = []
    for (tp, channel), group in slots.items():
        if len(group) > 1:
            where = "; ".join(
                f"series {c.series.header.get('SeriesNumber', '?')} ({c.series.modality}) in "
                f"{_folder(run, c.series)}"
                for c in group
            )
            run.fail(
                patient,
                "channels",
                f"{len(group)} series at {tp} would all be channel {channel} ({where}), and the "
                "sheet could not tell them apart: in a timepoint table (--timepoints) keep one "
                "by its series_uid, or name each in a channel column",
            )
            continue
        out += group
    return out


def _folder(run: _Run, series: Series) -> str:
    return run.found.relpath(series.files[0].parent)


def _references(mask: Series, image: Series, images: list[Series]) -> bool:
    """Whether a structure set or segmentation was made on `image`.

    By the referenced series UID; a structure set without one (some planning systems) counts
    when its frame of reference is that of exactly one of the patient's image series.
    """
    header = mask.header
    ref = rtstruct_series_uid(header) if mask.kind == "rtstruct" else _seg_series_uid(header)
    if ref is not None:
        return ref == image.series_uid
    rois = header.get("StructureSetROISequence", [])
    frames = {str(r.get("ReferencedFrameOfReferenceUID", "")) for r in rois}
    owners = [s for s in images if str(s.header.get("FrameOfReferenceUID", "")) in frames]
    return owners == [image]


def _mask_for(
    run: _Run, image: Series, volume: Volume, masks: list[Series], images: list[Series]
) -> tuple[np.ndarray | None, str | None]:
    """(mask array or None, source) for one converted image series."""
    if not run.options.roi_regex:
        return None, None
    by_kind: dict[str, list[Series]] = {"seg": [], "rtstruct": []}
    for m in masks:
        if _references(m, image, images):
            by_kind[m.kind].append(m)
    order = ("seg", "rtstruct") if run.options.mask_source == "auto" else (run.options.mask_source,)
    for kind in order:
        if len(by_kind[kind]) > 1:
            first = run.found.relpath(by_kind[kind][0].files[0])
            run.info(
                f"{len(by_kind[kind])} {kind.upper()} objects reference the series in "
                f"{_folder(run, image)}: using the first, {first}"
            )
        for m in by_kind[kind][:1]:
            name = run.found.relpath(m.files[0])
            try:
                if kind == "seg":
                    mask = read_seg(m.files[0], name, run.options.roi_regex, volume.slice_uids)
                else:
                    mask = rasterise_rtstruct(m.files[0], name, run.options.roi_regex, volume.image)
            except MaskError:
                raise
            except Exception as err:  # noqa: BLE001 - a damaged file: name it
                raise MaskError(
                    f"cannot read {name} (corrupt file?): {type(err).__name__}: {err}"
                ) from None
            return mask, kind
    # Masks are often drawn on some scans only (e.g. the baseline): not a failure; the
    # segmentation stage predicts the missing ones (segmentation.masks).
    run.info(
        f"no {'/'.join(k.upper() for k in order)} references the series in "
        f"{_folder(run, image)}: scan kept without a mask"
    )
    return None, None


def _ingest_patient(
    run: _Run, patient: str, series: list[Series], scans: list[_Scan], out: Path
) -> list[dict]:
    """Convert a patient's named scans (and their masks) and write them; the sheet's rows."""
    images = [s for s in series if s.kind == "image"]
    masks = [s for s in series if s.kind != "image"]
    pid = run.pid(patient)
    converted = []
    for scan in scans:
        s, what = scan.series, f"{scan.timepoint} {scan.channel}"
        try:
            check_folders_clean(s, run.found)
            volume = load_volume(s, run.found)
        except Exception as err:  # noqa: BLE001 - one bad series must not stop the others
            text = (
                str(err)
                if isinstance(err, SeriesError)
                else f"series in {_folder(run, s)}: {type(err).__name__}: {err}"
            )
            run.fail(patient, "image", f"{what}: {text}")
            continue
        try:
            mask, source = _mask_for(run, s, volume, masks, images)
        except Exception as err:  # noqa: BLE001 - a broken mask file must not stop the scan
            text = str(err) if isinstance(err, MaskError) else f"{type(err).__name__}: {err}"
            run.fail(patient, "mask", f"{what}: {text}; scan kept without a mask")
            mask, source = None, None
        converted.append((scan, volume, mask, source))
    if not any(scan.timepoint == BASELINE for scan, *_ in converted):
        if images:
            run.fail(patient, "image", "no usable baseline scan: patient skipped")
        return []
    rows = []
    for scan, volume, mask, source in converted:
        stem = f"{scan.timepoint}_{scan.channel}"
        image_rel = f"images/{pid}/{stem}.nii.gz"
        io.write_image(volume.image, out / image_rel)
        mask_rel = None
        if mask is not None:
            mask_img = sitk.GetImageFromArray(mask)
            mask_img.CopyInformation(volume.image)
            mask_rel = f"masks/{pid}/{stem}.nii.gz"
            io.write_image(mask_img, out / mask_rel)
        io.write_json(
            {
                "modality": scan.series.modality,
                "channel": scan.channel,
                "units": volume.units,
                "timepoint": scan.timepoint,
                "days": scan.days,
                "slices": int(volume.image.GetSize()[2]),
                "mask_source": source,
                "roi_regex": run.options.roi_regex,
                "notes": list(volume.notes),
            },
            out / f"images/{pid}/{stem}.json",
        )
        for note in volume.notes:
            run.info(f"patient {pid} {scan.timepoint} {scan.channel}: {note}")
        rows.append(
            {
                "patient_id": pid,
                "center": run.options.center,
                "timepoint": scan.timepoint,
                "days": scan.days,
                "modality": scan.series.modality,
                "image": image_rel,
                "mask": mask_rel,
                "channel": scan.channel,
            }
        )
    return rows


def _clinical(run: _Run, path: Path, ingested: dict[str, str], out: Path) -> None:
    """Rewrite the user's clinical table with pseudonyms, for the patients that ingested."""
    df = read_sheet(path, ["patient_id"])
    df["patient_id"] = df["patient_id"].fillna("").str.strip()
    unknown = int((~df["patient_id"].isin(set(ingested))).sum())
    if unknown:
        run.info(f"clinical table: {unknown} row(s) of patients not ingested were left out")
    df = df[df["patient_id"].isin(set(ingested))].copy()
    df["patient_id"] = df["patient_id"].map(ingested)
    for column in df.columns.drop("patient_id"):
        cells = df[column]
        clean = cells.map(lambda v: v if pd.isna(v) else _scrub_cell(run.scrubber, str(v)))
        changed = int((cells.fillna("") != clean.fillna("")).sum())
        if changed:
            run.info(
                f"clinical table: column {run.scrubber.scrub(column)!r}: {changed} value(s) "
                "held identifying data from the DICOM headers and were redacted"
            )
        df[column] = clean
    df.columns = [run.scrubber.scrub(c) for c in df.columns]
    io.write_table(df.sort_values("patient_id"), out / "clinical.tsv")


def _scrub_cell(scrubber: Scrubber, value: str) -> str:
    """A clinical value without identifying data. A number is only replaced when it is one
    whole identifying value (a date written as 19500112): redacting digits inside a number
    would silently change a survival time."""
    try:
        float(value)
    except ValueError:
        return scrubber.scrub(value)
    return scrubber.scrub(value) if value.strip() in scrubber.values else value


def ingest_dicom(root: Path, out: Path, key: bytes, options: IngestOptions) -> IngestResult:
    """Ingest every patient under `root` into `out`; see the module docstring for the layout."""
    root, out = Path(root), Path(out)
    if not root.is_dir():
        raise UserError(f"DICOM root is not a folder: {root}")
    if options.mask_source not in MASK_SOURCES:
        raise UserError(f"mask source must be one of {', '.join(MASK_SOURCES)}")
    table = _mapping(options.timepoints) if options.timepoints else None
    scrubber = Scrubber()
    lines: list[str] = []
    rows: list[dict] = []
    with _captured(lines):
        found = discover(root, scrubber)
        run = _Run(found, key, options, scrubber, lines)
        patients = sorted({s.patient_id for s in found.series})
        for patient in patients:
            scrubber.add(patient, run.pid(patient))
            # A pseudonym is kept whole even where a short identifying value occurs inside it.
            scrubber.add(run.pid(patient), run.pid(patient))
        for path, reason in found.unreadable:
            owners = found.folder_patients.get(path.parent, set())
            owner = next(iter(owners)) if len(owners) == 1 else None
            # A folder without any readable header cannot be checked for names: withhold it.
            where = found.relpath(path) if owners else f"{path.name} (folder withheld)"
            run.fail(owner, "discover", f"corrupt file {where}: {reason}")
        series = {p: [s for s in found.series if s.patient_id == p] for p in patients}
        placed: dict[str, list[_Scan]] = {}
        for patient in patients:
            images = [s for s in series[patient] if s.kind == "image"]
            try:
                placed[patient] = _assign_timepoints(run, patient, images, table)
            except Exception as err:  # noqa: BLE001 - one patient must not stop the others
                run.fail(patient, "ingest", f"{type(err).__name__}: {err}")
                placed[patient] = []
        described = _described_modalities(placed)
        if described:
            run.info(
                f"several {'/'.join(sorted(described))} series at one timepoint: those series "
                "are named by their descriptions (channel column), in every patient"
            )
        cut = scrubber.cutter()
        ingested: dict[str, str] = {}
        for patient in patients:
            try:
                scans = _name_channels(run, patient, placed[patient], described, cut)
                new = _ingest_patient(run, patient, series[patient], scans, out)
            except Exception as err:  # noqa: BLE001 - one patient must not stop the others
                run.fail(patient, "ingest", f"{type(err).__name__}: {err}")
                new = []
            if new:
                ingested[patient] = run.pid(patient)
                run.info(f"patient {run.pid(patient)}: {len(new)} scan(s) ingested")
            rows += new
        if options.clinical:
            try:
                _clinical(run, options.clinical, ingested, out)
            except CohortError as err:
                run.fail(None, "clinical", str(err))
    samples = pd.DataFrame(rows, columns=SAMPLE_COLUMNS)
    failures = pd.DataFrame(run.failures, columns=FAILURE_COLUMNS)
    failures["error"] = [scrubber.scrub(str(e)) for e in failures["error"]]
    clean = [scrubber.scrub(line) for line in lines]
    io.write_table(samples, out / "samples.tsv")
    io.write_table(failures, out / "failures.tsv")
    io.write_text("\n".join(clean) + "\n", out / "logs" / "ingest_dicom.log")
    return IngestResult(samples, failures, clean)


def mask_dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap of two binary masks (1.0 when both are empty)."""
    a, b = a > 0, b > 0
    total = int(a.sum() + b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total
