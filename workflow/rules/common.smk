# Config validation, sheet locations and input functions shared by all rule files.
# Every run, a no-op rerun or a dry run included, imports what the rule files import before it
# builds the DAG: import only light modules here (deltarad.layout, deltarad.cohort, ...), never
# the image, network or plotting modules (SimpleITK, scipy, torch, matplotlib).
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from dataclasses import asdict

from deltarad.cohort import (
    ValidationSettings,
    effective_mask_policy,
    mask_policy,
    planned_scans,
    read_validated_samples,
    timepoints_by_patient,
    validated_masks,
    validated_scan_rows,
)
from deltarad.config import check_config, check_results_dir, schema_path
from deltarad.layout import BASELINE, extra_channels, scan_paths
from deltarad.layout import synthetic_patient_outputs as patient_outputs

validate(config, schema=str(schema_path("config")))
_problems = check_config(config) + check_results_dir(config)
if _problems:
    raise WorkflowError("invalid configuration:\n  " + "\n  ".join(_problems))

RESULTS = Path(config["results"])
# Without the mask policy (validate_cohort reads it from the config: changing it reruns nothing).
VALIDATION_SETTINGS = {
    k: v
    for k, v in asdict(ValidationSettings.from_config(config)).items()
    if k not in mask_policy(config)
}
# Registration jobs see everything but the gate: re-tuning the gate reruns only the QC table.
REGISTRATION_SETTINGS = {k: v for k, v in config["registration"].items() if k != "gate"}
REGISTRATION_SETTINGS["body_threshold"] = config["preprocess"]["body_threshold"]
LOGS = RESULTS / "logs"
COHORT = RESULTS / "cohort"
SYNTHETIC = config["cohort"]["source"] == "synthetic"
PLANNED = planned_scans(config)
PATIENTS = sorted(PLANNED["patient_id"].unique())
PLANNED_TIMEPOINTS = timepoints_by_patient(PLANNED)
# (patient, timepoint) of every scan after the baseline: registered to it, compared with it.
LATER = PLANNED[PLANNED["timepoint"] != BASELINE]
# Channels of every timepoint besides the registration reference (cohort.channels /
# synthetic.extra_channels): carried onto the baseline grid with the reference's transform.
EXTRA_CHANNELS = extra_channels(config)
REPO = Path(workflow.basedir)
ENVS = REPO / "envs"


def scaled_mem(base_mb):
    """A memory request that grows with each retry (out-of-memory on a cluster is retried)."""

    def request(wildcards, attempt):
        return base_mb * attempt

    return request


# A timepoint never ends in `_mask` (`{timepoint}_mask.nii.gz` names a scan's mask file) and
# has no `__` (`{timepoint}__{channel}.nii.gz` names another channel's image). (A lookbehind at
# the wildcard's end, so that the text after it in a path does not count.)
TIMEPOINT = r"[A-Za-z0-9-]+(?:_[A-Za-z0-9-]+)*(?<!_mask)"


wildcard_constraints:
    patient=r"[A-Za-z0-9_-]+",
    timepoint=TIMEPOINT,
    channel=r"[A-Za-z0-9]+",


def samples_sheet():
    """The samples sheet the cohort comes from: generated, or the user's."""
    return COHORT / "samples.tsv" if SYNTHETIC else config["cohort"]["samples"]


def clinical_sheet():
    return COHORT / "clinical.tsv" if SYNTHETIC else config["cohort"]["clinical"]


def synthetic_patient_outputs(pattern):
    """Files of one synthetic patient (pattern `{patient}`) under the cohort folder."""
    return [COHORT / f for f in patient_outputs(pattern, config["synthetic"])]


def validated_table():
    """The validated samples table (available once the validation checkpoint has run)."""
    return read_validated_samples(checkpoints.validate_cohort.get().output.samples)


def validated_row(wildcards):
    """The validated sheet's row of one scan (wildcards patient, timepoint, and channel where
    the scan is not the reference channel's)."""
    rows = validated_scan_rows(checkpoints.validate_cohort.get().output.samples)
    key = (wildcards.patient, wildcards.timepoint)
    if "channel" in wildcards.keys():
        key = (*key, wildcards.channel)
    return rows[key]


def validated_scan(wildcards):
    """Image and mask of one scan (wildcards patient, timepoint) as validated."""
    row = validated_row(wildcards)
    scan = {"image": row["image"]}
    if isinstance(row["mask"], str):
        scan["mask"] = row["mask"]
    return scan


def given_mask(patient, timepoint):
    """The sheet's mask of a timepoint (drawn on any of its channels), or None."""
    masks = validated_masks(checkpoints.validate_cohort.get().output.samples)
    return masks[(patient, timepoint)]


def mask_source(patient, timepoint):
    """Where the features' mask of a scan comes from: `given`, or the method that predicts it
    (segmentation.masks)."""
    if FEATURE_MASK_METHOD is None:
        if given_mask(patient, timepoint) is None:
            raise WorkflowError(
                f"patient {patient}, timepoint {timepoint}: no mask in the samples sheet, and "
                f"segmentation.masks is '{MASK_POLICY}' (features need a drawn mask on every "
                "scan); draw one, or set segmentation.masks: given_else_predicted with a "
                "segmentation method to segment it"
            )
        return "given"
    if MASK_POLICY == "given_else_predicted" and given_mask(patient, timepoint):
        return "given"
    return FEATURE_MASK_METHOD


def validated_scan_files(wildcards):
    """Every image and mask of the validated sheet (known once validation has run)."""
    table = validated_table()
    return sorted(set(table["image"].dropna()) | set(table["mask"].dropna()))


def feature_timepoints(wildcards):
    """A patient's timepoints, baseline first (as planned at parse time)."""
    tps = PLANNED_TIMEPOINTS.get(wildcards.patient, [])
    return [BASELINE] + [tp for tp in tps if tp != BASELINE]


def feature_scans(wildcards):
    """Image (every channel's) and mask per timepoint for features, all on the preprocessed
    baseline grid: the preprocessed baseline and later scans as registered onto it; each scan's
    mask given or predicted (:func:`mask_source`)."""
    files = {}
    for tp in feature_timepoints(wildcards):
        image, mask = scan_paths(RESULTS, wildcards.patient, tp)
        for channel in EXTRA_CHANNELS:
            files[f"{tp}__{channel}_image"] = scan_paths(
                RESULTS, wildcards.patient, tp, channel
            )[0]
        source = mask_source(wildcards.patient, tp)
        if source != "given":
            mask = (
                RESULTS / "segmentation" / source / wildcards.patient / f"{tp}.nii.gz"
            )
        files[f"{tp}_image"], files[f"{tp}_mask"] = image, mask
    return files


def feature_mask_sources(wildcards):
    """Timepoint -> `given` or the predicting method, for the feature table's provenance."""
    return {
        tp: mask_source(wildcards.patient, tp) for tp in feature_timepoints(wildcards)
    }


def deep_model_inputs(wildcards):
    """The trained network whose encoder gives deep features (features.deep.method): our
    network's plan and checkpoint, or the checkpoint of nnU-Net's first configured fold (trained
    here, or in the pretrained model folder)."""
    method = config["features"]["deep"]["method"]
    if method == NNUNET:
        return {"checkpoint": NNUNET_CHECKPOINTS[0]}
    folder = RESULTS / "models/segmentation" / method
    return {"plan": folder / "plan.json", "checkpoint": folder / "checkpoint_final.pt"}


# masks: predicted / given_else_predicted -> features use this segmentation method's masks
# (for every scan, or where the sheet has none); with no segmentation method, only drawn masks.
MASK_POLICY = effective_mask_policy(config)
FEATURE_MASK_METHOD = (
    config["segmentation"]["feature_method"]
    or next(iter(config["segmentation"]["methods"]), "(none)")
    if MASK_POLICY != "given"
    else None
)


# A timepoint other than the baseline (registration targets).
LATER_TIMEPOINT = rf"{TIMEPOINT}(?<!/{BASELINE})"
# Failure tables of the QC gates, merged into tables/failures.tsv.
FAILURE_TABLES = [
    RESULTS / "qc/failures_registration.tsv",
    RESULTS / "qc/failures_features.tsv",
]


def scan_modality(wildcards):
    """Modality of one validated scan (selects per-modality preprocessing)."""
    return validated_row(wildcards)["modality"]


def preprocess_inputs(wildcards):
    """The validated image of a scan, plus the fingerprint when spacing is auto."""
    scan = {"image": validated_row(wildcards)["image"]}
    if config["preprocess"]["spacing"] == "auto":
        scan["fingerprint"] = RESULTS / "preprocess/fingerprint.json"
    return scan


def channel_inputs(wildcards):
    """Another channel's original image, the preprocessed baseline (reference channel) whose
    grid it goes onto, and for a later timepoint the reference channel's registration, which
    carries it (the channels of a timepoint are co-registered)."""
    files = {
        "original": validated_row(wildcards)["image"],
        "fixed": RESULTS / f"preprocessed/{wildcards.patient}/{BASELINE}.nii.gz",
    }
    if wildcards.timepoint != BASELINE:
        files["transform"] = (
            RESULTS / f"registered/{wildcards.patient}/{wildcards.timepoint}.tfm"
        )
    return files


def drawn_mask(wildcards):
    """The sheet's mask of a scan; asked for only where one was drawn."""
    mask = given_mask(wildcards.patient, wildcards.timepoint)
    if mask is None:
        raise WorkflowError(
            f"patient {wildcards.patient}, {wildcards.timepoint}: no mask in the samples sheet, "
            "but a job asked for the drawn mask (a bug: please report it)"
        )
    return mask


def registration_inputs(wildcards):
    """The later scan as validated and preprocessed (resampled once, straight from the original
    onto the baseline grid), the drawn masks where they exist (QC only), and on the synthetic
    cohort the truth to score."""
    pid, tp = wildcards.patient, wildcards.timepoint
    files = {
        "moving_original": validated_row(wildcards)["image"],
        "moving_record": RESULTS / f"preprocessed/{pid}/{tp}.json",
    }
    if given_mask(pid, BASELINE):
        files["fixed_mask"] = RESULTS / f"preprocessed/{pid}/{BASELINE}_mask.nii.gz"
    if given_mask(pid, tp):
        files["moving_mask"] = given_mask(pid, tp)
    if SYNTHETIC:
        truth = COHORT / "truth"
        files["truth_mask"] = truth / f"masks/{pid}/{tp}_in_baseline.nii.gz"
        files["truth_transform"] = truth / f"transforms/{pid}/{tp}.json"
    return files


def model_inputs(wildcards):
    """Features, sheets, and (synthetic) the truth for the oracle; end-to-end network
    predictions when segmentation methods are configured."""
    files = {
        "features": RESULTS / "features/features.parquet",
        "clinical": RESULTS / "tables/clinical.validated.tsv",
        "samples": RESULTS / "tables/samples.validated.tsv",
    }
    if SYNTHETIC:
        files["latent"] = COHORT / "truth/latent.tsv"
    if (config.get("segmentation") or {}).get("methods"):
        files["network"] = RESULTS / "tables/network_predictions.tsv"
    return files


# ---- segmentation (workflow/rules/segment.smk) ----


def training_settings(wildcards):
    """What one method's training depends on. Device, masks and the other presets are left out:
    changing them must not retrain."""
    seg = config["segmentation"]
    keys = ("seed", "validation_fraction", "training", "network", "augmentation")
    preset = {wildcards.method: seg["presets"][wildcards.method]}
    label = config["validation"]["mask_label"]  # the tumour label of the given masks
    return {**{k: seg[k] for k in keys}, "presets": preset, "mask_label": label}


def segmentation_scans(patients, masks=True):
    """Images (and, where drawn, masks) of `patients` on their baseline grids, by scan."""
    table = validated_table()
    files = {}
    scans = table[table["patient_id"].isin(patients)][["patient_id", "timepoint"]]
    for pid, tp in scans.drop_duplicates().itertuples(index=False):
        image, mask = scan_paths(RESULTS, pid, tp)
        files[f"{pid}__{tp}"] = image
        for channel in EXTRA_CHANNELS:
            files[f"{pid}__{tp}__{channel}"] = scan_paths(RESULTS, pid, tp, channel)[0]
        if masks and given_mask(pid, tp):
            files[f"{pid}__{tp}_mask"] = mask
    return files


def network_training_inputs(wildcards):
    """Scans of the training centres' patients (all but the external centres), after validation."""
    table = validated_table()
    external = config["study"]["external_centers"]
    return segmentation_scans(table.loc[~table["center"].isin(external), "patient_id"])


def training_modality(wildcards):
    """The training centres' modality of the reference channel (nnU-Net's name of input channel
    0; `CT` selects its CT scheme)."""
    table = validated_table()
    external = config["study"]["external_centers"]
    reference = ~table["channel"].isin(EXTRA_CHANNELS)
    return (
        table.loc[reference & ~table["center"].isin(external), "modality"]
        .mode()
        .iloc[0]
    )


def nnunet_prediction_inputs(wildcards):
    """Every scan on its baseline grid, named `{patient}__{timepoint}` like the outputs."""
    return segmentation_scans(PATIENTS, masks=False)


def network_prediction_inputs(wildcards):
    files = segmentation_scans([wildcards.patient], masks=False)
    folder = RESULTS / "models/segmentation" / wildcards.method
    files["plan"] = folder / "plan.json"
    files["checkpoint"] = folder / "checkpoint_final.pt"
    return files


def network_outcome_inputs(wildcards):
    """Every patient's scans and the trained networks with outcome heads; the given masks too
    when a network has no segmentation head (its outcome window is centred on them)."""
    outcome_only = any(not preset_for(m, SEGMENT).segments for m in OUTCOME_METHODS)
    files = segmentation_scans(PATIENTS, masks=outcome_only)
    for method in OUTCOME_METHODS:
        files[f"plan__{method}"] = RESULTS / f"models/segmentation/{method}/plan.json"
        files[f"checkpoint__{method}"] = (
            RESULTS / f"models/segmentation/{method}/checkpoint_final.pt"
        )
        files[f"splits__{method}"] = (
            RESULTS / f"models/segmentation/{method}/splits.json"
        )
    return files


def segmentation_qc_inputs(wildcards):
    """Predicted masks of every method and scan with their references (drawn masks on the
    baseline grid, where drawn; the synthetic cohort's true-geometry masks of later scans).
    """
    files = {}
    for method in MASK_METHODS:
        for pid, tp in PLANNED[["patient_id", "timepoint"]].itertuples(index=False):
            files[f"pred__{method}__{pid}__{tp}"] = (
                RESULTS / f"segmentation/{method}/{pid}/{tp}.nii.gz"
            )
    for pid, tp in PLANNED[["patient_id", "timepoint"]].itertuples(index=False):
        if given_mask(pid, tp):
            files[f"ref__{pid}__{tp}"] = reference_mask(pid, tp)
        if true_geometry_mask(pid, tp) is not None:
            files[f"true__{pid}__{tp}"] = true_geometry_mask(pid, tp)
    return files


def reference_mask(pid, tp):
    """The reference of a predicted mask: the drawn (on the synthetic cohort: true) mask on the
    grid the network segmented, i.e. preprocessed at baseline and through our registration at a
    later scan, so segmentation QC measures segmentation alone."""
    return scan_paths(RESULTS, pid, tp)[1]


def true_geometry_mask(pid, tp):
    """Synthetic later scans: the true tumour through the true transform (registration error
    included), or None."""
    if SYNTHETIC and tp != BASELINE:
        return COHORT / f"truth/masks/{pid}/{tp}_in_baseline.nii.gz"
    return None
