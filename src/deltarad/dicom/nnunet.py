"""`deltarad ingest-nnunet`: a user's nnU-Net raw dataset (imagesTr, labelsTr, dataset.json) as
DeltaRad sample sheets.

nnU-Net cases have no patients or timepoints, so a small case table maps them
(``case, patient_id, timepoint, days``, optional ``center``, ``modality``, ``channel``); without it
each case is its own patient's baseline. The sheet's channel is the modality, unless the dataset
has several channels of that modality (T2 and ADC): then it is derived from the nnU-Net channel
name as ``ingest-dicom`` derives it from a series description
(:func:`deltarad.dicom.channels.derive_channel`), so that the sheets of the channels, imported
one after the other, can be joined. Images are referenced where they lie (no copy); masks are
rewritten as binary label-1 masks of the tumour label chosen by a regex on the label names,
because DeltaRad's masks hold one tumour label.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from deltarad import io
from deltarad.cohort import SAMPLE_COLUMNS, read_sheet
from deltarad.dicom.channels import CHANNEL_PATTERN, derive_channel
from deltarad.dicom.ingest import FAILURE_COLUMNS
from deltarad.runlog import UserError

ID_PATTERN = re.compile(r"[A-Za-z0-9_-]+")


def _modality(channel_name: str) -> str:
    name = channel_name.strip().upper()
    if name == "CT":
        return "CT"
    if any(tag in name for tag in ("PET", "PT", "SUV")):
        return "PET"
    return "MR"


def _tumour_labels(labels: dict, roi_regex: str | None) -> list[int]:
    values = {name: value for name, value in labels.items() if name != "background"}
    if any(not isinstance(v, int) for v in values.values()):
        raise UserError("dataset.json uses region-based labels (lists): name one label instead")
    if roi_regex is None:
        if len(values) != 1:
            raise UserError(
                f"dataset.json has {len(values)} labels ({', '.join(values)}): "
                "choose the tumour with --roi REGEX"
            )
        return list(values.values())
    pattern = re.compile(roi_regex, re.IGNORECASE)
    chosen = [v for name, v in values.items() if pattern.search(name)]
    if not chosen:
        raise UserError(f"no label of dataset.json ({', '.join(values)}) matches {roi_regex!r}")
    return chosen


def _cases(dataset: Path, ending: str) -> list[str]:
    return sorted(p.name[: -len(ending)] for p in (dataset / "labelsTr").glob(f"*{ending}"))


def ingest_nnunet(
    dataset: Path,
    out: Path,
    roi_regex: str | None = None,
    channel: int = 0,
    cases_table: Path | None = None,
    center: str = "site1",
    modality: str | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Write samples.tsv, failures.tsv and binary masks under `out`; return both tables."""
    dataset, out = Path(dataset).resolve(), Path(out)
    meta_path = dataset / "dataset.json"
    if not meta_path.is_file():
        raise UserError(f"not an nnU-Net raw dataset (no dataset.json): {dataset}")
    meta = json.loads(meta_path.read_text())
    ending = str(meta.get("file_ending", ".nii.gz"))
    channels = meta.get("channel_names", meta.get("modality", {}))
    if str(channel) not in channels:
        raise UserError(f"channel {channel} not in dataset.json channel_names {channels}")
    name = str(channels[str(channel)])
    scan_modality = modality or _modality(name)
    several = sum(_modality(str(n)) == scan_modality for n in channels.values()) > 1
    scan_channel = derive_channel([name], scan_modality) if several else scan_modality
    tumour = _tumour_labels(meta.get("labels", {}), roi_regex)
    cases = _cases(dataset, ending)
    if cases_table is not None:
        table = read_sheet(cases_table, ["case", "patient_id", "timepoint", "days"]).fillna("")
        mapping = {str(r["case"]).strip(): r for r in table.to_dict("records")}
    else:
        mapping = {c: {"patient_id": c, "timepoint": "baseline", "days": "0"} for c in cases}
    rows, failures = [], []
    for case in cases:
        info = mapping.get(case)
        if info is None:
            message = f"{case}: not in the case table, skipped"
            failures.append({"patient_id": "unknown", "stage": "cases", "error": message})
            continue
        pid = str(info["patient_id"]).strip()
        tp = str(info["timepoint"]).strip()
        row_modality = str(info.get("modality") or scan_modality).strip()
        default = scan_channel if row_modality == scan_modality else row_modality
        row_channel = str(info.get("channel") or default).strip()
        who = pid if ID_PATTERN.fullmatch(pid) else "unknown"
        image = dataset / "imagesTr" / f"{case}_{channel:04d}{ending}"
        label = dataset / "labelsTr" / f"{case}{ending}"
        try:
            if not ID_PATTERN.fullmatch(pid) or not ID_PATTERN.fullmatch(tp):
                raise UserError(f"patient_id {pid!r} or timepoint {tp!r} is not [A-Za-z0-9_-]+")
            if not CHANNEL_PATTERN.fullmatch(row_channel):
                raise UserError(f"channel {row_channel!r} is not letters and digits only")
            if not image.is_file():
                raise UserError(f"image of channel {channel} missing: {image}")
            labels = io.read_image(label)
            array = sitk.GetArrayFromImage(labels)
            mask = sitk.GetImageFromArray(np.isin(array, tumour).astype(np.uint8))
            mask.CopyInformation(labels)
            mask_rel = f"masks/{pid}/{tp}_{row_channel}.nii.gz"
            io.write_image(mask, out / mask_rel)
        except UserError as err:
            failures.append({"patient_id": who, "stage": "nnunet", "error": f"{case}: {err}"})
            continue
        rows.append(
            {
                "patient_id": pid,
                "center": str(info.get("center") or center).strip(),
                "timepoint": tp,
                "days": int(str(info["days"]).strip() or 0),
                "modality": row_modality,
                "image": str(image),
                "mask": mask_rel,
                "channel": row_channel,
            }
        )
    samples = pd.DataFrame(rows, columns=SAMPLE_COLUMNS)
    failure_table = pd.DataFrame(failures, columns=FAILURE_COLUMNS)
    io.write_table(samples, out / "samples.tsv")
    io.write_table(failure_table, out / "failures.tsv")
    return samples, failure_table
