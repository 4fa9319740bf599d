"""The feature table: one partial file per patient, merged into features/features.parquet.

Columns are ``{timepoint}__{channel}__{region}__{source}__{feature}``
(:mod:`deltarad.features.naming`, docs/output.md). A region that cannot be measured on a channel
(empty ring, tumour below the minimum voxel count, refused by pyradiomics' checks) gets NA
features, ``{timepoint}__{channel}__{region}__qc__failed = True`` and one failure row
``patient_id, stage, error`` — the patient stays in the table. Per scan,
``{timepoint}__{reference}__tumor__qc__mask`` says which mask the features came from (``given``
or the predicting method) and ``{timepoint}__{reference}__tumor__qc__absent`` marks a complete
response (``reference``: the registration reference channel).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import SimpleITK as sitk

from deltarad import io
from deltarad.body import Threshold, threshold_for
from deltarad.features.delta import add_deltas
from deltarad.features.handcrafted import (
    SOURCE,
    absent_tumor_features,
    extract_regions,
    make_extractor,
    read_scan,
)
from deltarad.features.naming import QC, SEP, column, parse
from deltarad.features.regions import TUMOR, parse_rings, region_name, series_regions
from deltarad.layout import BASELINE
from deltarad.qc import failed_patients
from deltarad.runlog import UserError

STAGE = "features"
FAILURE_COLUMNS = ["patient_id", "stage", "error"]
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FeatureSettings:
    """The ``features:`` block of the config (schema: config.schema.yaml)."""

    params: str
    rings_mm: tuple[tuple[float, float], ...] = ((0, 3), (3, 6), (6, 10))
    # preprocess.body_threshold (deltarad.body); None = its defaults.
    body_threshold: Mapping[str, Threshold] | None = None
    min_tumor_voxels: int = 10
    min_ring_voxels: int = 10
    rel_floor: float = 0.01
    abs_floor: float = 1e-9
    label: int = 1

    @classmethod
    def from_config(
        cls, block: Mapping[str, Any], params: str | Path | None = None
    ) -> FeatureSettings:
        return cls(
            params=str(params or block["params"]),
            rings_mm=tuple(parse_rings(block.get("rings_mm", [[0, 3], [3, 6], [6, 10]]))),
            body_threshold=block.get("body_threshold"),
            min_tumor_voxels=int(block.get("min_tumor_voxels", 10)),
            min_ring_voxels=int(block.get("min_ring_voxels", 10)),
            rel_floor=float(block.get("reldelta", {}).get("rel_floor", 0.01)),
            abs_floor=float(block.get("reldelta", {}).get("abs_floor", 1e-9)),
            # The masks' tumour label (validation.mask_label; 1 for predicted masks).
            label=int(block.get("mask_label", 1)),
        )

    @property
    def regions(self) -> list[str]:
        return [TUMOR] + [region_name(a, b) for a, b in self.rings_mm]

    def min_voxels(self) -> dict[str, int]:
        return {
            n: (self.min_tumor_voxels if n == TUMOR else self.min_ring_voxels) for n in self.regions
        }

    def threshold(self, modality: str | None) -> Threshold:
        return threshold_for(modality, self.body_threshold)


def series_scans(
    patient_id: str,
    scans: Mapping[str, tuple[str | Path, str | Path]],
    settings: FeatureSettings,
    modality: str | None = None,
    mask_sources: Mapping[str, str] | None = None,
) -> Iterator[tuple[str, sitk.Image, dict[str, sitk.Image], bool]]:
    """(timepoint, image, regions, tumour absent) of each scan of a patient, baseline first, all
    on the baseline grid; the regions of a complete response are drawn around the tumour bed
    (:func:`deltarad.features.regions.series_regions`). `mask_sources`: timepoint -> `given` (the
    drawn mask: tumour label ``settings.label``) or the method that predicted it (label 1)."""
    bed = None
    for timepoint, (image_path, mask_path) in scans.items():
        source = (mask_sources or {}).get(timepoint, "given")
        label = settings.label if source == "given" else 1
        image, mask = read_scan(image_path, mask_path, f"patient {patient_id}, {timepoint}")
        regions, absent = series_regions(
            image, mask, settings.rings_mm, settings.threshold(modality), label, bed
        )
        if bed is None:
            bed = sitk.GetArrayFromImage(regions[TUMOR]) > 0
        yield timepoint, image, regions, absent


def patient_features(
    patient_id: str,
    scans: Mapping[str, tuple[str | Path, str | Path]],
    settings: FeatureSettings,
    channels: Mapping[str, str | None],
    extractor: Any = None,
    mask_sources: Mapping[str, str] | None = None,
    extra_images: Mapping[str, Mapping[str, str | Path]] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One patient's row (every timepoint, channel and region) and its failure rows.

    `scans`: timepoint -> (reference channel's image, mask); `channels`: channel -> modality,
    the reference first; `extra_images`: timepoint -> {channel: image} for the other channels,
    on the same grid. The regions (tumour, rings) come from the mask and the reference image
    and are measured on every channel.

    A later scan whose tumour has vanished (complete response) gets the defined shape features
    (sizes 0, so deltas of size are exact: -100 %), NA intensity and texture, rings around the
    tumour bed, and ``{timepoint}__{reference}__tumor__qc__absent = True``; it is not a
    failure."""
    extractor = extractor or make_extractor(settings.params)
    names = list(channels)
    reference = names[0]
    row: dict[str, Any] = {"patient_id": patient_id}
    flags: dict[str, bool | str] = {}
    failures = []
    for timepoint, image, regions, absent in series_scans(
        patient_id, scans, settings, channels[reference], mask_sources
    ):
        if absent:
            regions = {n: r for n, r in regions.items() if n != TUMOR}
        flags[column(timepoint, reference, TUMOR, QC, "absent")] = absent
        flags[column(timepoint, reference, TUMOR, QC, "mask")] = (mask_sources or {}).get(
            timepoint, "given"
        )
        images = {reference: image}
        for channel in names[1:]:
            path = (extra_images or {}).get(timepoint, {}).get(channel)
            if path is None:
                raise UserError(f"patient {patient_id}, {timepoint}: no image of channel {channel}")
            images[channel] = io.read_image(path)
        for channel, channel_image in images.items():
            feats, errors = extract_regions(
                channel_image, regions, extractor, settings.min_voxels()
            )
            if absent:
                feats[TUMOR] = absent_tumor_features(extractor)
            for region in settings.regions:
                for name, value in feats.get(region, {}).items():
                    row[column(timepoint, channel, region, SOURCE, name)] = value
                flags[column(timepoint, channel, region, QC, "failed")] = region in errors
                if region in errors:
                    where = f"{timepoint} {channel}"
                    failures.append((patient_id, STAGE, f"{where}: {errors[region]}"))
                    log.warning("%s %s: %s", patient_id, where, errors[region])
    return pd.DataFrame([{**row, **flags}]), pd.DataFrame(failures, columns=FAILURE_COLUMNS)


def write_patient(
    patient_id: str,
    scans: Mapping[str, tuple[str | Path, str | Path]],
    settings: FeatureSettings,
    out_table: str | Path,
    out_failures: str | Path,
    channels: Mapping[str, str | None],
    mask_sources: Mapping[str, str] | None = None,
    extra_images: Mapping[str, Mapping[str, str | Path]] | None = None,
) -> None:
    """Per-patient partial files (so touching one patient recomputes one patient)."""
    start = time.perf_counter()
    row, failures = patient_features(
        patient_id,
        scans,
        settings,
        channels,
        mask_sources=mask_sources,
        extra_images=extra_images,
    )
    io.write_table(row, out_table)
    io.write_table(failures, out_failures)
    log.info(
        "%s: %d timepoints x %d channels x %d regions, %d values, %d failed regions, %.1f s",
        patient_id,
        len(scans),
        len(channels),
        len(settings.regions),
        row.shape[1] - 1,
        len(failures),
        time.perf_counter() - start,
    )


def patient_channels(samples: str | Path, patient_id: str) -> dict[str, str]:
    """channel -> modality of a patient's baseline scans in the validated sheet, the reference
    channel first (the validated sheet lists it first)."""
    table = io.read_tsv(samples)
    rows = table[(table["patient_id"] == patient_id) & (table["timepoint"] == BASELINE)]
    if "channel" not in rows.columns:  # a sheet validated before channels existed
        rows = rows.assign(channel=rows["modality"])
    channel = rows["channel"].fillna(rows["modality"])
    return dict(zip(channel.astype(str), rows["modality"].astype(str), strict=True))


def patient_modality(samples: str | Path, patient_id: str) -> str | None:
    """Modality of a patient's baseline reference scan in the validated sheet (chooses the body
    threshold)."""
    channels = patient_channels(samples, patient_id)
    return next(iter(channels.values()), None)


def _order(columns: Sequence[str], timepoints: Sequence[str]) -> list[str]:
    rank = {tp: i for i, tp in enumerate(timepoints)}

    def key(col: str) -> tuple:
        parts = parse(col)
        timepoint = parts.timepoint if parts else col
        return (bool(parts and parts.is_qc), rank.get(timepoint, len(rank)), timepoint)

    return sorted((c for c in columns if c != "patient_id"), key=key)


def chronological(timepoints: Sequence[str], samples: str | Path | None = None) -> list[str]:
    """Timepoints in time order: baseline first, then by median days in the validated sheet
    (without it, as given)."""
    order = {tp: float(i) for i, tp in enumerate(timepoints)}
    if samples is not None:
        table = io.read_tsv(samples)
        days = pd.to_numeric(table["days"], errors="coerce").groupby(table["timepoint"]).median()
        order = {tp: float(days.get(tp, len(timepoints) + order[tp])) for tp in timepoints}
    order[BASELINE] = -1.0
    return sorted(timepoints, key=lambda tp: (order[tp], tp))


def merge_features(
    partials: Iterable[str | Path],
    failure_partials: Iterable[str | Path],
    out_table: str | Path,
    out_failures: str | Path,
    excluded: str | Path | None = None,
    rel_floor: float = 0.01,
    abs_floor: float = 1e-9,
    samples: str | Path | None = None,
    previous: bool = False,
) -> pd.DataFrame:
    """features.parquet (one row per patient, deltas added) and the stage's failure table.

    Patients listed in ``excluded`` (a failures table of an earlier stage, e.g. registration)
    are left out of both. `samples` (the validated sheet) orders the timepoints in time (by
    their median days), which `previous` deltas (each timepoint against the one before) need.
    """
    drop = failed_patients(excluded)
    # Several partial files per patient (handcrafted, deep) are joined into one row.
    by_patient: dict[str, dict[str, Any]] = {}
    for path in partials:
        for record in pd.read_parquet(path).to_dict("records"):
            by_patient.setdefault(record["patient_id"], {}).update(record)
    table = pd.DataFrame(list(by_patient.values()), columns=None if by_patient else ["patient_id"])
    table = table[~table["patient_id"].isin(drop)]
    timepoints = []
    for col in table.columns:
        tp = col.split(SEP)[0]
        if col != "patient_id" and tp not in timepoints:
            timepoints.append(tp)
    timepoints = chronological(timepoints, samples)
    table = table[["patient_id", *_order(table.columns, timepoints)]]
    flags = [c for c in table.columns if c.endswith(f"{SEP}qc{SEP}failed")]
    table[flags] = table[flags].fillna(True).astype(bool)  # a missing timepoint failed
    absent = [c for c in table.columns if c.endswith(f"{SEP}qc{SEP}absent")]
    table[absent] = table[absent].fillna(False).astype(bool)
    table = add_deltas(table, timepoints, previous, rel_floor=rel_floor, abs_floor=abs_floor)
    qc = [c for c in table.columns if SEP + "qc" + SEP in c]
    table = table[[c for c in table.columns if c not in qc] + qc]
    table = table.sort_values("patient_id").reset_index(drop=True)
    fails = [io.read_tsv(p) for p in failure_partials]
    fails = [f for f in fails if len(f)]
    failures = (
        pd.concat(fails, ignore_index=True) if fails else pd.DataFrame(columns=FAILURE_COLUMNS)
    )
    failures = failures[~failures["patient_id"].isin(drop)][FAILURE_COLUMNS]
    io.write_table(table, out_table)
    io.write_table(failures, out_failures)
    log.info(
        "%d patients (%d excluded by an earlier stage), %d columns, %d failed regions",
        len(table),
        len(drop),
        table.shape[1],
        len(failures),
    )
    return table
