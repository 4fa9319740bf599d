"""Sample sheets: loading, schema and semantic validation, typed patient records.

Validation collects every problem before failing, so a user fixes a sheet in one pass; each
problem names the sheet line, the patient, the column and the file.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import jsonschema
import pandas as pd

from deltarad.config import known_centers, load_schema
from deltarad.layout import (
    BASELINE,
    NNUNET,
    study_channels,
    synthetic_patient_ids,
    synthetic_timepoints,
)
from deltarad.runlog import UserError

# The image modules (deltarad.io, deltarad.scanchecks: SimpleITK) are imported inside the
# functions that read or check files: the workflow imports this module while parsing.

# Required columns of a samples sheet; `mask` (where drawn) and `channel` (default: the modality)
# are optional. The validated table has all of SAMPLE_COLUMNS.
REQUIRED_SAMPLE_COLUMNS = ["patient_id", "center", "timepoint", "days", "modality", "image"]
SAMPLE_COLUMNS = [*REQUIRED_SAMPLE_COLUMNS, "mask", "channel"]
CLINICAL_COLUMNS = ["patient_id", "response", "time", "event"]


@dataclass(frozen=True)
class Problem:
    """One validation finding, located as precisely as the input allows."""

    message: str
    sheet: str | None = None
    line: int | None = None
    patient_id: str | None = None
    column: str | None = None
    # The scan a samples-sheet problem belongs to.
    timepoint: str | None = None
    modality: str | None = None
    channel: str | None = None

    def __str__(self) -> str:
        where = []
        if self.sheet:
            where.append(self.sheet + (f" line {self.line}" if self.line else ""))
        if self.patient_id:
            where.append(f"patient {self.patient_id}")
        if self.timepoint:
            where.append(f"timepoint {self.timepoint}")
        if self.channel:
            modality = self.modality and self.modality != self.channel
            where.append(f"channel {self.channel}" + (f" ({self.modality})" if modality else ""))
        elif self.modality:
            where.append(f"modality {self.modality}")
        if self.column:
            where.append(f"column '{self.column}'")
        return (", ".join(where) + ": " if where else "") + self.message


class CohortError(UserError):
    """The cohort failed validation; `problems` holds every finding."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        lines = "\n  ".join(str(p) for p in problems)
        super().__init__(f"{len(problems)} problem(s) in the input cohort:\n  {lines}")


@dataclass(frozen=True)
class ValidationSettings:
    mask_label: int = 1
    extra_mask_labels: tuple[int, ...] = ()
    spacing_rel: float = 1e-4
    origin_mm: float = 1e-3
    direction: float = 1e-4
    min_mask_voxels: int = 10
    centers: tuple[str, ...] = ()  # empty: any centre accepted
    # segmentation.masks: `given` needs a mask on every scan; otherwise a scan without one gets
    # a predicted mask, so some training-centre scan must have a mask unless a pretrained model
    # predicts them.
    masks: str = "given_else_predicted"
    pretrained_masks: bool = False
    external_centers: tuple[str, ...] = ()
    # cohort.channels, the registration reference first (layout.study_channels); empty: one
    # channel per timepoint, whatever the sheet names it.
    channels: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ValidationSettings:
        v = config["validation"]
        tol = v["geometry_tolerance"]
        return cls(
            mask_label=int(v["mask_label"]),
            extra_mask_labels=tuple(int(x) for x in v["extra_mask_labels"]),
            spacing_rel=float(tol["spacing_rel"]),
            origin_mm=float(tol["origin_mm"]),
            direction=float(tol["direction"]),
            min_mask_voxels=int(v["min_mask_voxels"]),
            centers=tuple(known_centers(config)),
            external_centers=tuple(config["study"]["external_centers"]),
            channels=tuple(study_channels(config)),
            **mask_policy(config),
        )


def mask_policy(config: dict[str, Any]) -> dict[str, Any]:
    """The :class:`ValidationSettings` fields that come from the segmentation block. The
    workflow's validation job reads them from the config rather than from its params, so that
    switching the mask policy or adding a pretrained model does not rerun validation (and with it
    every job); the input functions check the policy again when they build the plan."""
    seg = config.get("segmentation") or {}
    pretrained = bool((seg.get("nnunet") or {}).get("pretrained"))
    return {
        "masks": effective_mask_policy(config),
        "pretrained_masks": NNUNET in seg.get("methods", []) and pretrained,
    }


def effective_mask_policy(config: dict[str, Any]) -> str:
    """segmentation.masks, except that `given_else_predicted` without any segmentation method
    means `given` (nothing can predict the missing masks)."""
    seg = config.get("segmentation") or {}
    masks = str(seg.get("masks", "given"))
    if masks == "given_else_predicted" and not seg.get("methods"):
        return "given"
    return masks


@dataclass(frozen=True)
class Scan:
    patient_id: str
    center: str
    timepoint: str
    days: int
    modality: str
    image: Path
    mask: Path | None
    # The image channel (CT, PET, T2, ADC); the sheet's `channel`, else the modality.
    channel: str = ""


def read_sheet(path: str | Path, required: list[str]) -> pd.DataFrame:
    """Read a TSV sheet as text; a missing file or column is a CohortError naming it."""
    from deltarad import io

    path = Path(path)
    if not path.is_file():
        raise CohortError([Problem(f"sheet not found: {path}", sheet=str(path))])
    try:
        df = io.read_tsv(path)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as err:
        raise CohortError([Problem(f"not a readable TSV: {err}", sheet=str(path))]) from None
    # Excel's "UTF-8" TSV starts with a byte-order mark: it is not part of the first column name.
    df.columns = [c.strip().lstrip("\ufeff").strip() for c in df.columns]
    missing = [c for c in required if c not in df.columns]
    if missing and len(df.columns) == 1:
        for name, sep in (("comma", ","), ("semicolon", ";")):
            if sep in df.columns[0]:
                message = f"not tab-separated (the header is split by {name}s); save it as TSV"
                raise CohortError([Problem(message, sheet=path.name)])
    if missing:
        raise CohortError([Problem("missing column", sheet=path.name, column=c) for c in missing])
    return df


def resolve(value: str, sheet_dir: Path) -> Path:
    """A sheet path: absolute, or relative to the sheet's folder."""
    p = Path(value).expanduser()
    return p if p.is_absolute() else sheet_dir / p


def _schema_problems(df: pd.DataFrame, schema_name: str, sheet: str) -> list[Problem]:
    validator = jsonschema.Draft202012Validator(load_schema(schema_name))
    problems = []
    for i, row in enumerate(df.to_dict("records")):
        record = {k: (None if pd.isna(v) else str(v).strip()) for k, v in row.items()}
        for err in validator.iter_errors(record):
            column = err.absolute_path[0] if err.absolute_path else None
            value = record.get(column) if column else None
            if err.validator == "required":
                column = err.message.split("'")[1]
                message = "value is missing"
            elif err.validator in ("pattern", "enum", "type"):
                message = f"invalid value {value!r} ({_expectation(err)})"
            else:
                message = err.message
            problems.append(
                Problem(
                    message,
                    sheet=sheet,
                    line=i + 2,
                    patient_id=record.get("patient_id"),
                    column=column,
                )
            )
    return problems


def _expectation(err: jsonschema.ValidationError) -> str:
    if err.validator == "enum":
        allowed = ["NA" if v is None else v for v in err.validator_value]
        return "expected one of " + ", ".join(map(str, allowed))
    if err.validator == "type" and err.instance is None:
        return "value is missing"
    description = err.schema.get("description", "")
    return description.rstrip(".") if description else f"must match {err.validator_value}"


def _check_files(scan: Scan, s: ValidationSettings, sheet: str, line: int) -> list[Problem]:
    from deltarad.scanchecks import scan_findings

    where = _scan_where(scan, sheet, line)
    findings = scan_findings(scan.image, scan.mask, s, baseline=scan.timepoint == BASELINE)
    return [Problem(message, column=column, **where) for column, message in findings]


def _scan_where(scan: Scan, sheet: str, line: int) -> dict[str, Any]:
    """The location fields of a problem with one scan row."""
    return {
        "sheet": sheet,
        "line": line,
        "patient_id": scan.patient_id,
        "timepoint": scan.timepoint,
        "modality": scan.modality,
        "channel": scan.channel,
    }


def validate_samples(
    samples_path: str | Path, settings: ValidationSettings
) -> tuple[list[Scan], list[Problem]]:
    """Schema, uniqueness, baseline, centre and file/geometry/mask checks of a samples sheet."""
    samples_path = Path(samples_path)
    sheet = samples_path.name
    df = read_sheet(samples_path, REQUIRED_SAMPLE_COLUMNS)
    for optional in ("mask", "channel"):
        if optional not in df.columns:
            df[optional] = None
    if df.empty:
        raise CohortError([Problem("sheet has a header but no scan rows", sheet=sheet)])
    problems = _schema_problems(df[SAMPLE_COLUMNS], "samples", sheet)
    bad_lines = {p.line for p in problems}
    scans: list[tuple[int, Scan]] = []
    for i, row in enumerate(df.to_dict("records")):
        line = i + 2
        if line in bad_lines:
            continue
        mask, channel = row["mask"], row["channel"]
        modality = row["modality"].strip()
        scans.append(
            (
                line,
                Scan(
                    patient_id=row["patient_id"].strip(),
                    center=row["center"].strip(),
                    timepoint=row["timepoint"].strip(),
                    days=int(row["days"]),
                    modality=modality,
                    image=resolve(row["image"].strip(), samples_path.parent),
                    mask=None
                    if mask is None or pd.isna(mask) or not str(mask).strip()
                    else resolve(str(mask).strip(), samples_path.parent),
                    channel=modality
                    if channel is None or pd.isna(channel) or not str(channel).strip()
                    else str(channel).strip(),
                ),
            )
        )

    seen: dict[tuple[str, str, str], int] = {}
    centers: dict[str, str] = {}
    for line, scan in scans:
        where = _scan_where(scan, sheet, line)
        key = (scan.patient_id, scan.timepoint, scan.channel)
        other = next((ln for (p, t, _), ln in seen.items() if (p, t) == key[:2]), None)
        if key not in seen and other is not None and not settings.channels:
            problems.append(
                Problem(
                    f"a second scan at this timepoint (line {other} has another channel): list "
                    "the study's channels in the config (cohort.channels, e.g. [CT, PET]) and "
                    "name the registration reference (cohort.reference_channel)",
                    column="channel",
                    **where,
                )
            )
        if key in seen:
            problems.append(
                Problem(
                    f"duplicate scan: this timepoint and channel are already on line {seen[key]} "
                    "(two series of one modality need different `channel` names, e.g. T2 and ADC)",
                    column="channel",
                    **where,
                )
            )
        else:
            seen[key] = line
        if settings.channels and scan.channel not in settings.channels:
            problems.append(
                Problem(
                    f"channel '{scan.channel}' is not one of the study's channels "
                    f"({', '.join(settings.channels)}; config cohort.channels)",
                    column="channel",
                    **where,
                )
            )
        if settings.centers and scan.center not in settings.centers:
            problems.append(
                Problem(
                    f"unknown centre '{scan.center}' (known: {', '.join(settings.centers)}; "
                    "set study.centers in the config)",
                    column="center",
                    **where,
                )
            )
        first = centers.setdefault(scan.patient_id, scan.center)
        if first != scan.center:
            problems.append(
                Problem(
                    f"patient appears under centres '{first}' and '{scan.center}'",
                    column="center",
                    **where,
                )
            )
        if (
            scan.timepoint.split("-")[0] in ("delta", "reldelta")
            or scan.timepoint.endswith("_mask")
            or "__" in scan.timepoint
            or scan.timepoint.startswith("_")
            or scan.timepoint.endswith("_")
        ):
            problems.append(
                Problem(
                    f"timepoint name '{scan.timepoint}' is reserved: feature columns of changes "
                    "start with delta / reldelta, `{timepoint}_mask` names mask files, and `__` "
                    "separates the parts of file and column names (`{timepoint}__{channel}`); "
                    "rename the timepoint",
                    column="timepoint",
                    **where,
                )
            )
        if scan.timepoint == BASELINE and scan.days != 0:
            problems.append(
                Problem(
                    f"baseline scan must have days 0, found {scan.days}", column="days", **where
                )
            )
        if scan.timepoint != BASELINE and scan.days <= 0:
            problems.append(
                Problem(
                    f"follow-up scan must have days > 0 (after the baseline), found {scan.days}",
                    column="days",
                    **where,
                )
            )
        problems += _check_files(scan, settings, sheet, line)

    with_baseline = {s.patient_id for _, s in scans if s.timepoint == BASELINE}
    for pid in sorted({s.patient_id for _, s in scans} - with_baseline):
        problems.append(
            Problem(
                "patient has no baseline scan (timepoint 'baseline')",
                sheet=sheet,
                patient_id=pid,
                column="timepoint",
            )
        )
    with_followup = {s.patient_id for _, s in scans if s.timepoint != BASELINE}
    for pid in sorted(with_baseline - with_followup):
        problems.append(
            Problem(
                "patient has only a baseline scan: delta features need a follow-up (a later "
                "timepoint); add it or remove the patient from both sheets",
                sheet=sheet,
                patient_id=pid,
                column="timepoint",
            )
        )
    problems += _channel_problems(scans, settings, sheet)
    problems += _mask_policy_problems(scans, settings, sheet)
    return [s for _, s in scans], problems


def _channel_problems(
    scans: list[tuple[int, Scan]], settings: ValidationSettings, sheet: str
) -> list[Problem]:
    """Every timepoint of a multi-channel study has each listed channel (the registration
    reference above all); a later scan's channel has a baseline to be compared with; a timepoint
    has at most one drawn mask (its tumour, whichever channel it was drawn on)."""
    problems = []
    by_timepoint: dict[tuple[str, str], list[tuple[int, Scan]]] = {}
    for line, scan in scans:
        rows = by_timepoint.setdefault((scan.patient_id, scan.timepoint), [])
        if all(s.channel != scan.channel for _, s in rows):  # a duplicate is reported above
            rows.append((line, scan))
    for (pid, tp), rows in sorted(by_timepoint.items()):
        present = {s.channel for _, s in rows}
        masked = [(line, s) for line, s in rows if s.mask is not None]
        for line, scan in masked[1:]:
            problems.append(
                Problem(
                    f"a second mask at this timepoint (line {masked[0][0]}, channel "
                    f"{masked[0][1].channel}, has one): the tumour is drawn once per timepoint, "
                    "on any one of its channels (they are co-registered); keep one",
                    column="mask",
                    **_scan_where(scan, sheet, line),
                )
            )
        for channel in settings.channels:
            if channel in present:
                continue
            role = "the registration reference" if channel == settings.channels[0] else "a channel"
            problems.append(
                Problem(
                    f"no scan of channel {channel} ({role} of the study, config cohort.channels) "
                    "at this timepoint; add it, or remove the channel from cohort.channels",
                    sheet=sheet,
                    patient_id=pid,
                    timepoint=tp,
                    channel=channel,
                    column="channel",
                )
            )
        if tp == BASELINE:
            continue
        baseline = {s.channel for _, s in by_timepoint.get((pid, BASELINE), [])}
        for line, scan in rows:
            listed = not settings.channels or scan.channel in settings.channels
            if baseline and listed and scan.channel not in baseline:
                problems.append(
                    Problem(
                        f"channel {scan.channel} has no baseline scan of this patient (a later "
                        "scan is compared with the same channel at baseline)",
                        column="channel",
                        **_scan_where(scan, sheet, line),
                    )
                )
    return problems


def _mask_policy_problems(
    scans: list[tuple[int, Scan]], settings: ValidationSettings, sheet: str
) -> list[Problem]:
    """Scans without a mask are fine where the segmentation stage can provide one. A timepoint
    is masked when any of its channels has the mask; the others are reported on their first
    row."""
    masked = {(s.patient_id, s.timepoint) for _, s in scans if s.mask is not None}
    unmasked, reported = [], set()
    for line, s in scans:
        key = (s.patient_id, s.timepoint)
        if key not in masked and key not in reported:
            unmasked.append((line, s))
            reported.add(key)
    if not unmasked:
        return []
    if settings.masks == "given":
        return [
            Problem(
                "no mask, and segmentation.masks is 'given' (features need a drawn mask on every "
                "scan); draw one, or set segmentation.masks: given_else_predicted to segment it",
                column="mask",
                **_scan_where(s, sheet, line),
            )
            for line, s in unmasked
        ]
    training = [s for _, s in scans if s.center not in settings.external_centers]
    if settings.pretrained_masks or any(s.mask is not None for s in training):
        return []
    return [
        Problem(
            "no scan of the training centres has a mask and no pretrained model is configured "
            "(segmentation.nnunet.pretrained): there is nothing to train a segmentation network "
            "on and nothing to predict masks with; add masks to some training scans or give a "
            "pretrained model",
            sheet=sheet,
            column="mask",
        )
    ]


def validate_clinical(
    clinical_path: str | Path, patients: set[str] | None
) -> tuple[pd.DataFrame, list[Problem]]:
    """Schema checks, time > 0, unique rows, and agreement with the patients that have scans.

    ``patients=None`` (the samples sheet could not be read) skips the agreement check, which
    would only repeat the samples sheet's problem once per clinical row.
    """
    clinical_path = Path(clinical_path)
    sheet = clinical_path.name
    df = read_sheet(clinical_path, CLINICAL_COLUMNS)
    problems = _schema_problems(df[CLINICAL_COLUMNS], "clinical", sheet)
    bad_lines = {p.line for p in problems}
    seen: dict[str, int] = {}
    for i, row in enumerate(df.to_dict("records")):
        line = i + 2
        pid = row["patient_id"]
        where = {"sheet": sheet, "line": line, "patient_id": pid}
        if line not in bad_lines and float(row["time"]) <= 0:
            problems.append(
                Problem(f"time must be > 0, found {row['time']}", column="time", **where)
            )
        if pid in seen:
            problems.append(
                Problem(
                    f"duplicate patient, first on line {seen[pid]}", column="patient_id", **where
                )
            )
        seen.setdefault(pid, line)
        if patients is not None and pid is not None and pid not in patients:
            problems.append(
                Problem(
                    "clinical row without any scan in the samples sheet",
                    column="patient_id",
                    **where,
                )
            )
    for pid in sorted((patients or set()) - set(seen)):
        problems.append(
            Problem(
                "patient has scans but no row in the clinical sheet",
                sheet=sheet,
                patient_id=pid,
                column="patient_id",
            )
        )
    return df, problems


def scans_table(scans: list[Scan], channels: tuple[str, ...] = ()) -> pd.DataFrame:
    """The validated samples table: baseline first, then by days, paths resolved; within a
    timepoint the registration reference channel (the first of `channels`) first, so the
    first row of a timepoint is its reference scan."""
    from deltarad.scanchecks import display_path

    rows = [
        {
            "patient_id": s.patient_id,
            "center": s.center,
            "timepoint": s.timepoint,
            "days": s.days,
            "modality": s.modality,
            "image": display_path(s.image),
            "mask": display_path(s.mask) if s.mask else None,
            "channel": s.channel,
        }
        for s in scans
    ]
    df = pd.DataFrame(rows, columns=SAMPLE_COLUMNS)
    df["_order"] = (df["timepoint"] != BASELINE).astype(int)
    rank = {c: i for i, c in enumerate(channels)}
    df["_channel"] = df["channel"].map(lambda c: rank.get(c, len(rank)))
    df = df.sort_values(["patient_id", "_order", "days", "timepoint", "_channel", "channel"])
    return df.drop(columns=["_order", "_channel"]).reset_index(drop=True)


def validate_cohort(
    samples_path: str | Path, clinical_path: str | Path, settings: ValidationSettings
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Validate both sheets; return (samples, clinical) tables or raise with every problem."""
    problems: list[Problem] = []
    scans: list[Scan] = []
    patients: set[str] | None = None
    try:
        scans, problems = validate_samples(samples_path, settings)
        patients = {s.patient_id for s in scans}
    except CohortError as err:
        problems += err.problems
    clinical = pd.DataFrame()
    try:
        clinical, clinical_problems = validate_clinical(clinical_path, patients)
        problems += clinical_problems
    except CohortError as err:
        problems += err.problems
    if problems:
        raise CohortError(problems)
    clinical = clinical.sort_values("patient_id").reset_index(drop=True)
    return scans_table(scans, settings.channels), clinical


def write_validated(
    samples: pd.DataFrame,
    clinical: pd.DataFrame,
    samples_out: str | Path,
    clinical_out: str | Path,
) -> None:
    from deltarad import io

    io.write_table(samples, samples_out)
    io.write_table(clinical, clinical_out)


def validate_and_write(
    samples_path: str | Path,
    clinical_path: str | Path,
    settings: ValidationSettings,
    samples_out: str | Path,
    clinical_out: str | Path,
) -> None:
    """The workflow's validation step: raise CohortError, or write both validated tables."""
    samples, clinical = validate_cohort(samples_path, clinical_path, settings)
    write_validated(samples, clinical, samples_out, clinical_out)
    print(f"valid: {samples['patient_id'].nunique()} patients, {len(samples)} scans")


def planned_scans(config: dict[str, Any]) -> pd.DataFrame:
    """(patient_id, timepoint) pairs the workflow will process, known before validation.

    The synthetic cohort's come from its config; a user's from the raw samples sheet, read
    leniently: rows whose ID or timepoint is malformed are left out here and reported by the
    validation job, which every analysis job waits for.
    """
    columns = ["patient_id", "timepoint"]
    if config["cohort"]["source"] == "synthetic":
        ids = synthetic_patient_ids(config["synthetic"])
        tps = synthetic_timepoints(config["synthetic"])
        rows = [(pid, tp) for pid in ids for tp in tps]
        return pd.DataFrame(rows, columns=columns)
    try:
        df = read_sheet(config["cohort"]["samples"], columns)
    except CohortError:
        return pd.DataFrame(columns=columns)
    ok = pd.Series(True, index=df.index)
    for column in columns:
        ok &= df[column].fillna("").str.strip().str.fullmatch(r"[A-Za-z0-9_-]+")
    df = df.loc[ok, columns].apply(lambda col: col.str.strip())
    return df.drop_duplicates().sort_values(columns).reset_index(drop=True)


def timepoints_by_patient(planned: pd.DataFrame) -> dict[str, list[str]]:
    """Each patient's timepoints in the order of `planned` (:func:`planned_scans`), for input
    functions that look them up once per job."""
    out: dict[str, list[str]] = {}
    for pid, tp in planned[["patient_id", "timepoint"]].itertuples(index=False):
        out.setdefault(pid, []).append(tp)
    return out


# The workflow's input functions read the validated samples table once per job: hundreds of
# times for a large cohort, on every run (a no-op rerun included). Each version of the file
# (path, modification time, size) is parsed once.


def read_validated_samples(path: str | Path) -> pd.DataFrame:
    """The validated samples table as the input functions read it (text columns, `NA`/empty as
    missing); each caller gets its own copy."""
    return _read_validated_samples(*_file_version(path)).copy()


def validated_scan_rows(path: str | Path) -> Mapping[tuple, Mapping[str, Any]]:
    """Rows of the validated samples table (read-only), a lookup instead of a table scan per
    job: (patient_id, timepoint) -> the reference channel's row (the timepoint's first),
    (patient_id, timepoint, channel) -> that channel's row."""
    return _validated_scan_rows(*_file_version(path))


def validated_masks(path: str | Path) -> Mapping[tuple[str, str], str | None]:
    """(patient_id, timepoint) -> the timepoint's drawn mask (on whichever channel's row it is),
    or None."""
    return _validated_masks(*_file_version(path))


def _file_version(path: str | Path) -> tuple[str, int, int]:
    path = os.path.abspath(path)
    stat = os.stat(path)
    return path, stat.st_mtime_ns, stat.st_size


@functools.lru_cache(maxsize=4)
def _read_validated_samples(path: str, mtime_ns: int, size: int) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", dtype=str)


@functools.lru_cache(maxsize=4)
def _validated_scan_rows(
    path: str, mtime_ns: int, size: int
) -> Mapping[tuple[str, str], Mapping[str, Any]]:
    rows: dict[tuple, Mapping[str, Any]] = {}
    for record in _read_validated_samples(path, mtime_ns, size).to_dict("records"):
        row = MappingProxyType(record)
        rows.setdefault((record["patient_id"], record["timepoint"]), row)
        channel = record.get("channel")
        rows[(record["patient_id"], record["timepoint"], channel)] = row
    return MappingProxyType(rows)


@functools.lru_cache(maxsize=4)
def _validated_masks(path: str, mtime_ns: int, size: int) -> Mapping[tuple[str, str], str | None]:
    masks: dict[tuple[str, str], str | None] = {}
    for record in _read_validated_samples(path, mtime_ns, size).to_dict("records"):
        key = (record["patient_id"], record["timepoint"])
        mask = record["mask"] if isinstance(record["mask"], str) else None
        masks[key] = masks.get(key) or mask
    return MappingProxyType(masks)
