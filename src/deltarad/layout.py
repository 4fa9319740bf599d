"""Names and paths the workflow needs while Snakemake parses the Snakefile, from the config alone.

Why a module of its own: every Snakemake invocation (a no-op rerun and a dry run included)
imports what the rule files import before it can build the DAG. Keeping these helpers on the
standard library means parsing does not pay for numpy, scipy, SimpleITK or matplotlib. The
modules that own the logic (:mod:`deltarad.synth`, :mod:`deltarad.segment.stage`,
:mod:`deltarad.segment.nnunet`, :mod:`deltarad.features.handcrafted`) use or re-export these,
and unit tests check they agree.

Example:
    >>> synthetic_patient_ids({"patients_per_center": 2, "centers": [{"name": "A"}]})
    ['A-001', 'A-002']
    >>> scan_paths(Path("results"), "A-001", "followup")[0].as_posix()
    'results/registered/A-001/followup.nii.gz'
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from deltarad.runlog import UserError

BASELINE = "baseline"
FOLLOWUP = "followup"
# The optional mid-treatment timepoint of the synthetic cohort (synthetic.mid_treatment_days).
MID = "mid"
# Timepoints of every synthetic patient without a mid-treatment scan.
SYNTHETIC_TIMEPOINTS = (BASELINE, FOLLOWUP)
# The DeltaRad folder (where config/ lives): relative parameter files are also looked up here.
REPO = Path(__file__).resolve().parents[2]
# The segmentation method name of the nnU-Net v2 backend.
NNUNET = "nnunet"
# nnU-Net's plans identifier, part of its model folder name.
NNUNET_PLANS = "nnUNetPlans"


# --- the synthetic cohort ------------------------------------------------------------------


def synthetic_patient_id(center: str, index: int) -> str:
    """``{centre}-{NNN}`` of the `index`-th (0-based) patient of a centre."""
    return f"{center}-{index + 1:03d}"


def synthetic_patient_ids(block: Mapping[str, Any]) -> list[str]:
    """IDs of the synthetic cohort of a config's ``synthetic`` block, in generation order
    (as :meth:`deltarad.synth.SynthConfig.patients`)."""
    per_center = int(block.get("patients_per_center", 15))
    centers = block.get("centers", [{"name": "C1"}])
    return [synthetic_patient_id(c["name"], i) for c in centers for i in range(per_center)]


def synthetic_timepoints(block: Mapping[str, Any] | None = None) -> tuple[str, ...]:
    """Timepoints of every synthetic patient, in time order: baseline, `mid` (when
    ``mid_treatment_days`` is set), followup."""
    if (block or {}).get("mid_treatment_days"):
        return (BASELINE, MID, FOLLOWUP)
    return SYNTHETIC_TIMEPOINTS


def channel_stem(timepoint: str, channel: str | None = None) -> str:
    """File stem of a scan's image: ``{timepoint}`` for the study's reference channel (`channel`
    None), ``{timepoint}__{channel}`` for another channel of the same timepoint."""
    return timepoint if channel is None else f"{timepoint}__{channel}"


def image_relpath(patient_id: str, timepoint: str, channel: str | None = None) -> str:
    """A synthetic scan's image (`channel`: None for the reference channel, else an extra one)."""
    return f"images/{patient_id}/{channel_stem(timepoint, channel)}.nii.gz"


def mask_relpath(patient_id: str, timepoint: str) -> str:
    return f"masks/{patient_id}/{timepoint}.nii.gz"


def transform_relpath(patient_id: str, timepoint: str = FOLLOWUP) -> tuple[str, str]:
    """(parameters JSON, deformation field) of the true later scan -> baseline transform."""
    return (
        f"truth/transforms/{patient_id}/{timepoint}.json",
        f"truth/transforms/{patient_id}/{timepoint}_deformation.nii.gz",
    )


def synthetic_patient_outputs(patient_id: str, block: Mapping[str, Any] | None = None) -> list[str]:
    """Every file the simulation of one patient (:func:`deltarad.synth.simulate_patient`)
    writes, relative to the cohort root (`block`: the config's ``synthetic`` block)."""
    timepoints = synthetic_timepoints(block)
    extra = synthetic_channels(block)[1:]
    files = []
    for tp in timepoints:
        files += [image_relpath(patient_id, tp), mask_relpath(patient_id, tp)]
        files += [image_relpath(patient_id, tp, ch) for ch, _ in extra]
        files.append(f"truth/masks/{patient_id}/{tp}.nii.gz")
    for tp in timepoints[1:]:
        files.append(f"truth/masks/{patient_id}/{tp}_in_baseline.nii.gz")
        files += transform_relpath(patient_id, tp)
    return files + [f"truth/patients/{patient_id}.json"]


# Modality (normalisation, body threshold) of each synthetic contrast.
SYNTHETIC_MODALITY = {"CT": "CT", "MR": "MR", "ADC": "MR", "PET": "PET"}


def synthetic_channels(block: Mapping[str, Any] | None = None) -> list[tuple[str, str]]:
    """(channel, contrast) of every synthetic scan of a timepoint, the reference first: the
    ``contrast`` channel (named after it), then ``extra_channels`` (co-registered with it)."""
    block = block or {}
    contrast = str(block.get("contrast", "CT"))
    extra = [(str(c["name"]), str(c["contrast"])) for c in block.get("extra_channels") or []]
    return [(contrast, contrast), *extra]


# --- channels of a study ---------------------------------------------------------------------


def study_channels(config: Mapping[str, Any]) -> list[str]:
    """The channels every timepoint of the study has, the registration reference first; empty
    for a single-channel study of the user's that does not list them (its one channel is
    whatever the sheet names)."""
    cohort = config.get("cohort") or {}
    if cohort.get("source", "synthetic") == "synthetic":
        return [name for name, _ in synthetic_channels(config.get("synthetic"))]
    listed = [str(c) for c in cohort.get("channels") or []]
    reference = cohort.get("reference_channel") or (listed[0] if listed else None)
    if reference is None:
        return []
    return [reference] + [c for c in listed if c != reference]


def extra_channels(config: Mapping[str, Any]) -> list[str]:
    """The study's channels other than the registration reference (carried with its transform)."""
    return study_channels(config)[1:]


# --- the results tree ----------------------------------------------------------------------


def scan_paths(
    results: Path, patient: str, timepoint: str, channel: str | None = None
) -> tuple[Path, Path]:
    """Image and given mask of a scan on the patient's baseline grid. `channel`: None for the
    reference channel (``{timepoint}.nii.gz``), else another channel of the timepoint
    (``{timepoint}__{channel}.nii.gz``); the mask is the timepoint's, whichever channel it was
    drawn on."""
    folder = results / ("preprocessed" if timepoint == BASELINE else "registered") / patient
    return (
        folder / f"{channel_stem(timepoint, channel)}.nii.gz",
        folder / f"{timepoint}_mask.nii.gz",
    )


def resolve_params(path: str | Path) -> Path:
    """A parameter file as given, else relative to the DeltaRad folder (where config/ lives)."""
    path = Path(path)
    if path.is_absolute() or path.exists():
        return path
    beside = REPO / path
    if beside.exists():
        return beside
    raise UserError(f"pyradiomics parameter file not found: {path}")


# --- nnU-Net's folder names ----------------------------------------------------------------


def nnunet_dataset_name(dataset_id: int, name: str) -> str:
    """nnU-Net's ``Dataset{id:03d}_{name}``."""
    if not 1 <= int(dataset_id) <= 999:
        raise UserError(f"nnU-Net dataset id must be 1..999, got {dataset_id}")
    if not re.fullmatch(r"[A-Za-z0-9]+", name):
        raise UserError(f"nnU-Net dataset name must be letters and digits, got {name!r}")
    return f"Dataset{int(dataset_id):03d}_{name}"


def nnunet_model_folder(
    root: Path,
    dataset_id: int,
    name: str,
    configuration: str = "3d_fullres",
    trainer: str = "nnUNetTrainer",
) -> Path:
    """Where nnU-Net training puts the model (``{Trainer}__{Plans}__{configuration}``),
    computed without importing nnU-Net, for declaring rule outputs (`root` kept as given)."""
    return (
        Path(root) / "results" / nnunet_dataset_name(dataset_id, name)
        / f"{trainer}__{NNUNET_PLANS}__{configuration}"
    )  # fmt: skip
