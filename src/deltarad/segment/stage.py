"""The segmentation stage as the workflow runs it: patient splits, training and prediction from the
results tree, segmentation QC (Dice, HD95) and the network-predictions table.

The validated samples table has one row per patient x timepoint x channel. A scan's row is its
registration reference channel's (the row whose channel is not one of the study's extra
channels); its other channels' images are found beside the reference's (layout.scan_paths)."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import SimpleITK as sitk
from scipy import ndimage

from deltarad import io
from deltarad.layout import BASELINE, scan_paths
from deltarad.qc import dice, failed_patients
from deltarad.runlog import UserError
from deltarad.segment.data import ExtraChannel, PairCase
from deltarad.segment.plan import preset_for

log = logging.getLogger(__name__)

SEGMENTATION_QC_COLUMNS = ["patient_id", "timepoint", "method", "dice", "hd95_mm"]
# Beyond the contract: synthetic later scans against the true tumour through the true transform.
TRUE_GEOMETRY_COLUMNS = ["dice_true_geometry", "hd95_true_geometry_mm"]
# Whether the scan had a drawn mask (False: its features use the predicted one).
MASK_GIVEN_COLUMN = "mask_given"
NETWORK_PREDICTION_COLUMNS = ["patient_id", "method", "response_probability", "risk_score", "split"]


def split_patients(
    samples: pd.DataFrame,
    external_centers: list[str],
    validation_fraction: float,
    seed: int,
    excluded: set[str] | frozenset[str] = frozenset(),
) -> dict[str, str]:
    """patient -> train / val / test / excluded. Test = external centres; validation patients
    are drawn per training centre (seeded), so every centre is represented; a patient's
    timepoints always share a split. `excluded`: patients a registration QC gate dropped; their
    follow-up is not in baseline space, so they are left out of training like every later stage."""
    centers = samples.drop_duplicates("patient_id").set_index("patient_id")["center"]
    split: dict[str, str] = {}
    rng = np.random.default_rng(seed)
    for center in sorted(centers.unique()):
        patients = sorted(centers.index[centers == center])
        if center in external_centers:
            split.update({p: "test" for p in patients})
            continue
        split.update({p: "excluded" for p in patients if p in excluded})
        usable = [p for p in patients if p not in excluded]
        n_val = int(round(validation_fraction * len(usable)))
        val = set(rng.permutation(usable)[:n_val].tolist()) if n_val else set()
        split.update({p: "val" if p in val else "train" for p in usable})
    n_train = sum(v == "train" for v in split.values())
    if n_train < 2:
        raise UserError(
            f"segmentation: {n_train} training patient(s) after removing external centres "
            f"{external_centers} and the validation share ({validation_fraction}); need at least 2"
        )
    return split


def reference_rows(samples: pd.DataFrame, extra_channels: Sequence[str]) -> pd.DataFrame:
    """One row per scan: its registration reference channel's (the rows whose channel is not an
    extra one), with its `channel` (a row without one, or a table validated before channels
    existed: its modality, as validation names it)."""
    channel = samples["channel"] if "channel" in samples.columns else samples["modality"]
    samples = samples.assign(channel=channel.fillna(samples["modality"]))
    return samples[~samples["channel"].isin(extra_channels)]


def _most_common(rows: pd.DataFrame, column: str, what: str) -> str:
    if rows.empty:
        raise UserError(f"segmentation: no scans of {what} in the samples table")
    return str(rows[column].mode().iloc[0])


def input_channels(
    samples: pd.DataFrame, extra_channels: Sequence[str], patients: Sequence[str] | None = None
) -> dict[str, str]:
    """A network's input channels, name -> modality, the registration reference first: the most
    common channel and modality of the reference rows of `patients` (default: all), then each
    extra channel with its most common modality."""
    if patients is not None:
        samples = samples[samples["patient_id"].isin(patients)]
    refs = reference_rows(samples, extra_channels)
    reference = _most_common(refs, "channel", "the reference channel")
    channels = {reference: _most_common(refs, "modality", "the reference channel")}
    for channel in extra_channels:
        rows = samples[samples["channel"] == channel]
        channels[channel] = _most_common(rows, "modality", f"channel {channel}")
    return channels


def patient_channels(
    samples: pd.DataFrame, patient: str, extra_channels: Sequence[str]
) -> list[str]:
    """A patient's channels, the reference first: the channel of its baseline's reference row
    (the sheet names a single-channel study's), then the extra ones."""
    refs = reference_rows(samples, extra_channels)
    rows = refs[(refs["patient_id"] == patient) & (refs["timepoint"] == BASELINE)]
    return [_most_common(rows, "channel", f"patient {patient}'s baseline"), *extra_channels]


def patient_timepoints(samples: pd.DataFrame, patient: str) -> list[str]:
    """A patient's timepoints in time order (baseline, then by days), from one row per scan
    (:func:`reference_rows`)."""
    rows = samples.loc[samples["patient_id"] == patient, ["timepoint", "days"]]
    later = rows[rows["timepoint"] != BASELINE]
    order = later.assign(d=pd.to_numeric(later["days"], errors="coerce")).sort_values(
        ["d", "timepoint"]
    )
    return [BASELINE] + order["timepoint"].tolist()


def pair_cases(
    results: Path,
    samples: pd.DataFrame,
    patients: list[str],
    clinical: pd.DataFrame | None,
    with_masks: bool = True,
    label: int = 1,
    extra_channels: Sequence[str] = (),
) -> list[PairCase]:
    """(baseline, later timepoint) pairs of `patients`; the last later one (the post-treatment
    scan) carries the outcome. Each timepoint reads its reference channel's image, then those of
    `extra_channels` (in that order).
    With `with_masks`, a scan's mask (on the baseline grid) is included where the sheet has a
    drawn one (on any of the scan's rows), None elsewhere."""
    cases = []
    clin = clinical.set_index("patient_id") if clinical is not None else None
    drawn = set()
    if with_masks and "mask" in samples.columns:
        has = samples["mask"].notna() & (samples["mask"].astype(str).str.strip() != "")
        drawn = set(
            samples.loc[has, ["patient_id", "timepoint"]].itertuples(index=False, name=None)
        )
    scans = reference_rows(samples, extra_channels)
    for pid in patients:
        tps = patient_timepoints(scans, pid)
        if len(tps) < 2:
            raise UserError(f"patient {pid}: the network needs a baseline and a later scan")
        base_img, base_mask = scan_paths(results, pid, BASELINE)
        base_extra = [scan_paths(results, pid, BASELINE, ch)[0] for ch in extra_channels]
        outcome = {"response": math.nan, "time": math.nan, "event": math.nan}
        if clin is not None and pid in clin.index:
            for key in outcome:
                value = pd.to_numeric(clin.loc[pid, key], errors="coerce")
                outcome[key] = float(value) if pd.notna(value) else math.nan
        for tp in tps[1:]:
            img, mask = scan_paths(results, pid, tp)
            extra = tuple(
                ExtraChannel(ch, base, scan_paths(results, pid, tp, ch)[0])
                for ch, base in zip(extra_channels, base_extra, strict=True)
            )
            cases.append(
                PairCase(
                    pid,
                    tp,
                    base_img,
                    img,
                    base_mask if (pid, BASELINE) in drawn else None,
                    mask if (pid, tp) in drawn else None,
                    carries_outcome=(tp == tps[-1]),
                    label=label,
                    extra=extra,
                    **outcome,
                )  # fmt: skip
            )
    return cases


def run_training(
    method: str,
    seg_config: dict[str, Any],
    results: Path,
    samples_path: Path,
    clinical_path: Path,
    external_centers: list[str],
    out_dir: Path,
    threads: int = 1,
    device: str = "auto",
    excluded_path: Path | None = None,
    extra_channels: Sequence[str] = (),
) -> dict[str, Any]:
    """Train preset `method` on the training centres' patients. `seg_config` holds what training
    depends on (seed, validation_fraction, training, network, augmentation, presets, and
    mask_label: the tumour label of the given masks, default 1). `excluded_path`: a failures
    table (patient_id, ...) of patients to leave out (the registration QC gate's).
    `extra_channels`: the study's channels besides the registration reference, input channels
    of the network after it (each normalised by its own modality)."""
    from deltarad.segment.train import train_network

    preset = preset_for(method, seg_config)
    label = int(seg_config.get("mask_label", 1))
    samples = io.read_tsv(samples_path)
    clinical = io.read_tsv(clinical_path)
    excluded = failed_patients(excluded_path)
    split = split_patients(
        samples, external_centers, seg_config["validation_fraction"], seg_config["seed"], excluded
    )
    train = sorted(p for p, s in split.items() if s == "train")
    val = sorted(p for p, s in split.items() if s == "val")
    meta = train_network(
        pair_cases(results, samples, train, clinical, label=label, extra_channels=extra_channels),
        pair_cases(results, samples, val, clinical, label=label, extra_channels=extra_channels),
        preset,
        input_channels(samples, extra_channels, train),
        seg_config,
        out_dir,
        device_name=device,
        seed=seg_config["seed"],
        threads=threads,
    )
    io.write_json(split, out_dir / "splits.json")
    return meta


def run_prediction(
    model_dir: Path,
    patient: str,
    timepoint: str,
    results: Path,
    samples_path: Path,
    out_mask: Path,
    overlap: float = 0.5,
    device: str = "auto",
    extra_channels: Sequence[str] = (),
) -> Path:
    """One scan's predicted mask on the baseline grid. A later scan is predicted from its pair with
    the baseline; the baseline from its pair with the first later scan. `extra_channels`: the
    study's channels besides the reference (a network trained on others is a UserError)."""
    from deltarad.segment.infer import predict_mask

    samples = io.read_tsv(samples_path)
    cases = pair_cases(
        results, samples, [patient], None, with_masks=False, extra_channels=extra_channels
    )
    case = cases[0] if timepoint == BASELINE else next(c for c in cases if c.timepoint == timepoint)
    return predict_mask(
        model_dir,
        case,
        timepoint == BASELINE,
        out_mask,
        device,
        overlap,
        patient_channels(samples, patient, extra_channels),
    )


def hd95(pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, ...]) -> float:
    """95th-percentile symmetric Hausdorff distance (mm) between mask surfaces, as MONAI computes
    it (the larger of the two directed 95th percentiles); NaN when either mask is empty."""
    if not pred.any() or not ref.any():
        return math.nan

    def surface(m: np.ndarray) -> np.ndarray:
        return m & ~ndimage.binary_erosion(m, border_value=0)

    sp, sr = surface(pred), surface(ref)
    to_ref = ndimage.distance_transform_edt(~sr, sampling=spacing)
    to_pred = ndimage.distance_transform_edt(~sp, sampling=spacing)
    return float(max(np.percentile(to_ref[sp], 95), np.percentile(to_pred[sr], 95)))


def compare_masks(pred_img: sitk.Image, ref_path: Path, label: int = 1) -> tuple[float, float]:
    """(Dice, HD95 mm) of a predicted mask against the `label` voxels of a reference resampled
    onto its grid."""
    ref_img = io.read_image(ref_path)
    ref_img = sitk.Resample(
        ref_img, pred_img, sitk.Transform(), sitk.sitkNearestNeighbor, 0, ref_img.GetPixelID()
    )
    pred = sitk.GetArrayFromImage(pred_img) > 0
    ref = sitk.GetArrayFromImage(ref_img) == label
    return dice(pred, ref), hd95(pred, ref, pred_img.GetSpacing()[::-1])


def qc_records(named_inputs: dict[str, str]) -> list[dict[str, Any]]:
    """Pair the QC rule's named inputs `pred__{method}__{patient}__{timepoint}` with
    `ref__{patient}__{timepoint}` (and `true__{patient}__{timepoint}` where given)."""
    records = []
    for name, path in named_inputs.items():
        if not name.startswith("pred__"):
            continue
        _, method, pid, tp = name.split("__")
        records.append(
            {"patient_id": pid, "timepoint": tp, "method": method, "prediction": path,
             "reference": named_inputs.get(f"ref__{pid}__{tp}"),
             "true_geometry": named_inputs.get(f"true__{pid}__{tp}")}
        )  # fmt: skip
    return records


def segmentation_qc(records: list[dict[str, Any]], label: int = 1) -> pd.DataFrame:
    """The QC table from records {patient_id, timepoint, method, prediction, reference,
    true_geometry}: Dice and HD95 against the drawn reference (`label` voxels; NA where the scan
    has no drawn mask), and against the true-geometry mask (label 1, synthetic truth) where there
    is one, else NA; `mask_given` says whether a drawn mask existed."""
    rows = []
    for r in records:
        pred = io.read_image(r["prediction"])  # once, for both references
        ref = r.get("reference")
        score, dist = compare_masks(pred, Path(ref), label) if ref else (math.nan,) * 2
        true = r.get("true_geometry")
        extra = compare_masks(pred, Path(true)) if true else (math.nan,) * 2
        rows.append([r["patient_id"], r["timepoint"], r["method"], score, dist, *extra, bool(ref)])
    columns = SEGMENTATION_QC_COLUMNS + TRUE_GEOMETRY_COLUMNS + [MASK_GIVEN_COLUMN]
    return pd.DataFrame(rows, columns=columns)


def network_predictions(
    methods: list[str],
    results: Path,
    samples_path: Path,
    device: str = "auto",
    mask_label: int = 1,
    extra_channels: Sequence[str] = (),
) -> pd.DataFrame:
    """One row per (patient, network method with outcome heads): the end-to-end response
    probability and risk score (NA for a head the preset lacks) and the patient's split.
    `extra_channels`: the study's channels besides the reference (a network trained on others
    is a UserError)."""
    from deltarad.segment.infer import predict_outcomes

    samples = io.read_tsv(samples_path)
    patients = sorted(samples["patient_id"].unique())
    cases = pair_cases(
        results, samples, patients, None, True, label=mask_label, extra_channels=extra_channels
    )
    cases = [c for c in cases if c.carries_outcome]
    refs = reference_rows(samples, extra_channels)
    channels = [_most_common(refs, "channel", "the reference channel"), *extra_channels]
    frames = []
    for method in methods:
        folder = results / "models/segmentation" / method
        split = json.loads((folder / "splits.json").read_text())
        df = predict_outcomes(folder, cases, device, channels)
        df.insert(1, "method", method)
        df["split"] = df["patient_id"].map(split)
        frames.append(df)
    if not frames:
        return pd.DataFrame(columns=NETWORK_PREDICTION_COLUMNS)
    out = pd.concat(frames, ignore_index=True)[NETWORK_PREDICTION_COLUMNS]
    return out.sort_values(["method", "patient_id"]).reset_index(drop=True)
