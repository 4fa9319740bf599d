"""The nnU-Net v2 backend: export, plan and preprocess, train and predict with explicit folders.

nnU-Net finds its data through the ``nnUNet_raw``, ``nnUNet_preprocessed`` and ``nnUNet_results``
environment variables. Users never set them: :func:`configure_paths` points them at folders under
the results tree inside this process, before any nnunetv2 module that reads them is imported
(those imports are kept inside the functions for that reason).

nnU-Net's planning, preprocessing, training and validation start workers with ``spawn``, which
re-imports ``__main__``: a script calling :func:`plan_and_preprocess` or :func:`train` must do
so under ``if __name__ == "__main__":``. :func:`predict` uses no workers and is safe anywhere.
Order: export_dataset + write_patient_splits → plan_and_preprocess → train → predict.

A study with several channels per timepoint gives nnU-Net several input channels, as its own
datasets do: ``{case}_0000`` is the registration reference channel's image, ``{case}_0001``, ...
the study's other channels (co-registered, on the same grid) in its order.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import tempfile
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import SimpleITK as sitk

from deltarad import io
from deltarad.layout import NNUNET_PLANS as PLANS
from deltarad.layout import nnunet_dataset_name as dataset_name
from deltarad.runlog import UserError
from deltarad.segment.device import resolve_device

log = logging.getLogger(__name__)
# PLANS and dataset_name come from deltarad.layout, as does nnunet_model_folder (where train
# puts the model): the workflow computes these folder names while parsing, without numpy.
ID_PATTERN = re.compile(r"[A-Za-z0-9_-]+")
FILE_ENDING = ".nii.gz"
# nnU-Net's own (lower-case) environment variable names.
N_PROC_VAR, N_PROC_DA_VAR, RESULTS_VAR = "nnUNet_def_n_proc", "nnUNet_n_proc_DA", "nnUNet_results"


class NnunetCase(NamedTuple):
    """One scan: `case_id` (``{patient}__{timepoint}``) names its files in the nnU-Net dataset;
    `image` is its reference channel's image, `extra_images` its other channels' (in order)."""

    case_id: str
    patient_id: str
    image: Path
    mask: Path | None = None
    extra_images: tuple[Path, ...] = ()

    @property
    def images(self) -> list[Path]:
        """The images of nnU-Net's input channels 0, 1, ..."""
        return [self.image, *self.extra_images]


def case_id(patient_id: str, timepoint: str) -> str:
    """The nnU-Net identifier of one scan; ``__`` keeps patient and timepoint recoverable."""
    return f"{patient_id}__{timepoint}"


def cases_from_inputs(
    named: dict[str, Any], extra_channels: Sequence[str] = ()
) -> list[NnunetCase]:
    """Cases from a rule's named inputs: ``{patient}__{timepoint}`` (the reference channel's
    image), ``{patient}__{timepoint}__{channel}`` (the image of each of `extra_channels`) and
    ``{patient}__{timepoint}_mask`` (its mask, optional); other names are ignored."""
    images = {
        k: Path(str(v))
        for k, v in named.items()
        if len(k.split("__")) == 2 and not k.endswith("_mask")
    }
    cases = []
    for cid, image in sorted(images.items()):
        missing = [ch for ch in extra_channels if f"{cid}__{ch}" not in named]
        if missing:
            raise UserError(f"nnU-Net case {cid}: no image of channel(s) {missing}")
        cases.append(
            NnunetCase(
                cid,
                cid.split("__", 1)[0],
                image,
                Path(str(named[f"{cid}_mask"])) if f"{cid}_mask" in named else None,
                tuple(Path(str(named[f"{cid}__{ch}"])) for ch in extra_channels),
            )
        )
    return cases


def configure_paths(root: Path, n_proc: int = 2) -> dict[str, Path]:
    """Create ``root/{raw,preprocessed,results}`` and point nnU-Net's variables at them.

    Also caps nnU-Net's worker pools (``nnUNet_def_n_proc``, ``nnUNet_n_proc_DA``; its defaults
    are 8 and 12, far more than a small machine has). Must run before nnunetv2 is imported,
    because ``nnunetv2.configuration`` reads ``nnUNet_def_n_proc`` at import.
    """
    root = Path(root).resolve()
    paths = {name: root / name for name in ("raw", "preprocessed", "results")}
    for key, path in paths.items():
        path.mkdir(parents=True, exist_ok=True)
        os.environ[f"nnUNet_{key}"] = str(path)
    os.environ[N_PROC_VAR] = os.environ[N_PROC_DA_VAR] = str(int(n_proc))
    return paths


def dataset_folder(root: Path, dataset_id: int, stage: str = "raw") -> Path:
    """The existing ``Dataset{id:03d}_*`` folder of `stage` (raw, preprocessed or results)."""
    base = Path(root).resolve() / stage
    found = sorted(p for p in base.glob(f"Dataset{int(dataset_id):03d}_*") if p.is_dir())
    if len(found) != 1:
        what = "none" if not found else ", ".join(p.name for p in found)
        raise UserError(f"expected one nnU-Net dataset {dataset_id} in {base}, found {what}")
    return found[0]


def _check_cases(cases: Sequence[NnunetCase]) -> None:
    seen: set[str] = set()
    for case in cases:
        if not ID_PATTERN.fullmatch(case.case_id) or not ID_PATTERN.fullmatch(case.patient_id):
            raise UserError(
                f"case {case.case_id!r} (patient {case.patient_id!r}): ids must be [A-Za-z0-9_-]+"
            )
        if case.case_id in seen:
            raise UserError(f"case {case.case_id!r} appears twice in the nnU-Net export")
        seen.add(case.case_id)


def channel_file(case_id: str, channel: int) -> str:
    """nnU-Net's file name of input `channel` (0: the reference) of a case."""
    return f"{case_id}_{channel:04d}{FILE_ENDING}"


def _write_case(case: NnunetCase, folder: Path, label: int = 1) -> None:
    geometry, _, components = io.read_header(case.image)
    if components != 1 or len(geometry.size) != 3:
        raise UserError(f"{case.case_id}: nnU-Net export needs a scalar 3-D image: {case.image}")
    sub = "imagesTr" if case.mask is not None else "imagesTs"
    for channel, image in enumerate(case.images):
        target = folder / sub / channel_file(case.case_id, channel)
        own, _, components = io.read_header(image)
        if components != 1:
            raise UserError(f"{case.case_id}: nnU-Net export needs scalar images: {image}")
        bad = geometry.mismatches(own)
        if bad:
            raise UserError(
                f"{case.case_id}: channel image {image} differs from {case.image} in "
                f"{', '.join(bad)}; a scan's channels must share one grid"
            )
        if own == geometry and str(image).endswith(FILE_ENDING):
            shutil.copyfile(image, target)
        else:  # another format, or the grid within our tolerance: exactly the reference's
            data = io.read_image(image)
            data.SetSpacing(geometry.spacing)
            data.SetOrigin(geometry.origin)
            data.SetDirection(geometry.direction)
            sitk.WriteImage(data, str(target), useCompression=True)
    if case.mask is None:
        return
    mask = io.read_image(case.mask)
    bad = geometry.mismatches(io.Geometry.of(mask))
    if bad:
        raise UserError(
            f"{case.case_id}: mask {case.mask} differs from its image in {', '.join(bad)}"
        )
    # Only the tumour label counts: masks may also hold other structures
    # (validation.extra_mask_labels), which are background to nnU-Net.
    # Exactly the image's grid: nnU-Net's own integrity check has tighter tolerances than ours.
    binary = _on_grid(sitk.GetArrayFromImage(mask) == label, geometry)
    sitk.WriteImage(binary, str(folder / "labelsTr" / f"{case.case_id}{FILE_ENDING}"), True)


def _on_grid(array: np.ndarray, geometry: io.Geometry) -> sitk.Image:
    """A uint8 image of `array` (0/1) with the given grid."""
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.SetSpacing(geometry.spacing)
    image.SetOrigin(geometry.origin)
    image.SetDirection(geometry.direction)
    return image


def export_dataset(
    cases: Sequence[NnunetCase],
    root: Path,
    dataset_id: int,
    name: str,
    channel_names: str | Sequence[str],
    labels: dict[str, int] | None = None,
    mask_label: int = 1,
) -> Path:
    """Write the nnU-Net raw dataset ``root/raw/Dataset{id}_{name}`` and return its folder.

    Cases with a mask go to imagesTr/labelsTr (voxels ``== mask_label`` become label 1, every
    other value background), the others to imagesTs. The dataset is built in a hidden folder
    and renamed into place at the end, so an interrupted export never looks complete.
    `channel_names`: nnU-Net's name of each input channel (one name: a single channel), the
    reference first. They matter: ``CT`` selects nnU-Net's CT intensity normalisation, anything
    else per-image z-scoring.
    """
    cases = list(cases)
    _check_cases(cases)
    names = [channel_names] if isinstance(channel_names, str) else list(channel_names)
    for case in cases:
        if len(case.images) != len(names):
            raise UserError(
                f"nnU-Net export: case {case.case_id} has {len(case.images)} channel image(s) "
                f"but the dataset's channels are {names}"
            )
    labels = labels or {"background": 0, "tumor": 1}
    if sorted(labels.values()) != [0, 1]:
        raise UserError(f"nnU-Net labels must be background 0 and one tumour label 1: {labels}")
    n_train = sum(c.mask is not None for c in cases)
    if n_train == 0:
        raise UserError("nnU-Net export: no case has a mask to train on")
    paths = configure_paths(root, int(os.environ.get(N_PROC_VAR, 2)))
    final = paths["raw"] / dataset_name(dataset_id, name)
    others = [p for p in paths["raw"].glob(f"Dataset{int(dataset_id):03d}_*") if p != final]
    if others:
        raise UserError(
            f"nnU-Net dataset id {dataset_id} is already used by {others[0]}; remove it or "
            "choose another id"
        )
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=paths["raw"]))
    try:
        for sub in ("imagesTr", "labelsTr", "imagesTs"):
            (tmp / sub).mkdir()
        for case in cases:
            _write_case(case, tmp, mask_label)
        meta = {
            "channel_names": {str(i): n for i, n in enumerate(names)},
            "labels": labels,
            "numTraining": n_train,
            "file_ending": FILE_ENDING,
            # Our masks are written with SimpleITK; read them the same way (axis order, geometry).
            "overwrite_image_reader_writer": "SimpleITKIO",
            "name": name,
        }
        (tmp / "dataset.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        if final.exists():
            old = final.with_name(f".{final.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            shutil.rmtree(old)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def write_patient_splits(
    cases: Sequence[NnunetCase], n_folds: int, seed: int, preprocessed_dir: Path
) -> Path:
    """Write ``splits_final.json``: folds of patients, so a patient's scans never straddle folds.

    nnU-Net would otherwise split by case and put a patient's baseline and follow-up on both
    sides of a fold. Only cases with a mask take part. Every fold needs at least 2 validation
    patients (one patient gives a meaningless validation Dice).
    """
    if n_folds < 2:
        raise UserError(f"nnU-Net folds must be >= 2 (use fold 'all' for no split), got {n_folds}")
    by_patient: dict[str, list[str]] = {}
    for case in cases:
        if case.mask is not None:
            by_patient.setdefault(case.patient_id, []).append(case.case_id)
    patients = sorted(by_patient)
    if len(patients) < n_folds:
        raise UserError(
            f"nnU-Net splits: {len(patients)} training patients cannot fill {n_folds} folds"
        )
    if len(patients) < 2 * n_folds:
        raise UserError(
            f"nnU-Net splits: {len(patients)} training patients give fewer than 2 per fold for "
            f"{n_folds} folds (need >= {2 * n_folds}); lower the number of folds"
        )
    order = np.random.default_rng(seed).permutation(len(patients))
    shuffled = [patients[i] for i in order]
    splits = []
    for fold in range(n_folds):
        val_patients = set(shuffled[fold::n_folds])
        val = sorted(c for p in val_patients for c in by_patient[p])
        train = sorted(c for p in patients if p not in val_patients for c in by_patient[p])
        splits.append({"train": train, "val": val})
    out = Path(preprocessed_dir) / "splits_final.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    return io.write_json(splits, out)


def export_training_set(
    named_inputs: dict[str, Any],
    root: Path,
    dataset_id: int,
    name: str,
    channel_names: str | Sequence[str],
    n_folds: int,
    seed: int,
    mask_label: int = 1,
    extra_channels: Sequence[str] = (),
    excluded: Collection[str] = (),
) -> dict[str, Path]:
    """The export rule's one call: the raw dataset and its patient-level splits.

    The splits are checked first, so a cohort too small for `n_folds` fails before any copying.
    `channel_names`: nnU-Net's name of each input channel (:func:`export_dataset`);
    `extra_channels`: the study's channels besides the reference, whose images are named inputs
    too (:func:`cases_from_inputs`); `excluded`: patients the registration QC gate dropped (their
    later scans are not in baseline space), left out like from every later stage.
    """
    cases = [
        c for c in cases_from_inputs(named_inputs, extra_channels) if c.patient_id not in excluded
    ]
    if excluded:
        log.info("nnU-Net export: %d patient(s) left out by the registration gate", len(excluded))
    final_name = dataset_name(dataset_id, name)
    preprocessed = Path(root).resolve() / "preprocessed" / final_name
    with tempfile.TemporaryDirectory() as scratch:
        write_patient_splits(cases, n_folds, seed, Path(scratch))
    raw = export_dataset(cases, root, dataset_id, name, channel_names, mask_label=mask_label)
    splits = write_patient_splits(cases, n_folds, seed, preprocessed)
    return {"dataset_json": raw / "dataset.json", "splits": splits}


def plan_and_preprocess(
    root: Path,
    dataset_id: int,
    configuration: str = "3d_fullres",
    n_proc: int = 2,
    plans_out: Path | None = None,
    fingerprint_out: Path | None = None,
    fingerprint_samples: int | None = None,
    check_integrity: bool = True,
) -> dict[str, Path]:
    """Fingerprint, plan and preprocess one configuration; return the JSON files' paths.

    Runs nnU-Net's own steps; only `configuration` is preprocessed. `plans_out` /
    `fingerprint_out`, when given, receive copies, for rules that want these outputs at fixed
    paths. `fingerprint_samples` caps the foreground voxels nnU-Net samples for its intensity
    statistics (its default, 1e8 over the dataset, dominates the time on small datasets; 1e6
    changed the 0.5th percentile by < 0.5 % on the test data). `check_integrity` runs nnU-Net's
    dataset check (one more worker pool, a few seconds).
    """
    configure_paths(root, n_proc)
    raw = dataset_folder(root, dataset_id, "raw")
    from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import (
        DatasetFingerprintExtractor,
    )
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        plan_experiment_dataset,
        preprocess_dataset,
    )
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    if check_integrity:
        verify_dataset_integrity(str(raw), n_proc)
    extractor = DatasetFingerprintExtractor(int(dataset_id), n_proc, verbose=False)
    if fingerprint_samples is not None:
        extractor.num_foreground_voxels_for_intensitystats = int(fingerprint_samples)
    extractor.run(overwrite_existing=True)
    plan_experiment_dataset(int(dataset_id))
    folder = dataset_folder(root, dataset_id, "preprocessed")
    result = {
        "preprocessed": folder,
        "plans": folder / f"{PLANS}.json",
        "fingerprint": folder / "dataset_fingerprint.json",
        "dataset_json": folder / "dataset.json",
    }
    planned = json.loads(result["plans"].read_text())["configurations"]
    if configuration not in planned:
        raise UserError(
            f"nnU-Net planned no {configuration!r} for {raw.name}; available: {', '.join(planned)}"
        )
    preprocess_dataset(int(dataset_id), PLANS, (configuration,), [n_proc])
    for key, target in (("plans", plans_out), ("fingerprint", fingerprint_out)):
        if target is not None:
            io.write_text(result[key].read_text(), target)
            result[key] = Path(target)
    return result


def _trainer_class(name: str) -> type:
    """The trainer class; the default is imported directly (no scan of nnU-Net's modules)."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    if name == "nnUNetTrainer":
        return nnUNetTrainer
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    try:
        return recursive_find_trainer_class_by_name(name)
    except RuntimeError:
        raise UserError(f"nnU-Net has no trainer class named {name!r}") from None


def _parse_fold(fold: int | str) -> int | str:
    if str(fold) == "all":
        return "all"
    try:
        return int(fold)
    except ValueError:
        raise UserError(f"nnU-Net fold must be an integer or 'all', got {fold!r}") from None


def train(
    root: Path,
    dataset_id: int,
    configuration: str = "3d_fullres",
    fold: int | str = 0,
    trainer: str = "nnUNetTrainer",
    epochs: int = 1000,
    iterations_per_epoch: int = 250,
    val_iterations: int = 50,
    device: str = "auto",
    seed: int = 0,
    n_proc: int = 2,
    validate: bool = True,
) -> Path:
    """Train one fold with nnU-Net's trainer and a given budget; return the model folder.

    The model folder is nnU-Net's ``{Trainer}__{Plans}__{configuration}``, with ``fold_X/``
    checkpoints in nnU-Net's format, so nnU-Net's own tools read it. The budget (epochs,
    iterations) is set on the trainer instance rather than through a renamed subclass: the
    checkpoint records the trainer's class name, and nnU-Net's predictor looks that name up in
    its own package to rebuild the network, so the name must stay one nnU-Net knows.
    A checkpoint is written every epoch; an interrupted run resumes from the latest one, and a
    finished one (``checkpoint_final.pth`` with >= `epochs` epochs) is not retrained.
    `validate` runs nnU-Net's validation of the fold (``fold_X/validation/summary.json``).
    """
    configure_paths(root, n_proc)
    torch_device = resolve_device(device)
    fold = _parse_fold(fold)
    pre = dataset_folder(root, dataset_id, "preprocessed")
    plans_file, meta_file = pre / f"{PLANS}.json", pre / "dataset.json"
    for needed in (plans_file, meta_file):
        if not needed.is_file():
            raise UserError(f"nnU-Net training needs {needed}: run plan_and_preprocess first")
    plans = json.loads(plans_file.read_text())
    if configuration not in plans["configurations"]:
        raise UserError(
            f"{plans_file} has no configuration {configuration!r}; available: "
            + ", ".join(plans["configurations"])
        )
    if fold != "all":
        splits_file = pre / "splits_final.json"
        if not splits_file.is_file():
            raise UserError(f"{splits_file} is missing: write the patient-level splits first")
        n_splits = len(json.loads(splits_file.read_text()))
        if fold >= n_splits:
            raise UserError(f"nnU-Net fold {fold} requested but {splits_file} has {n_splits}")

    import torch

    torch.set_num_threads(max(1, n_proc))
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 - nnU-Net's augmentation draws from the global state
    torch.manual_seed(seed)
    cls = _trainer_class(trainer)
    results = Path(os.environ[RESULTS_VAR]) / pre.name
    model = results / f"{cls.__name__}__{plans['plans_name']}__{configuration}"
    fold_dir = model / f"fold_{fold}"
    final, latest = fold_dir / "checkpoint_final.pth", fold_dir / "checkpoint_latest.pth"
    resume = final if final.is_file() else latest if latest.is_file() else None
    plans["continue_training"] = resume is not None
    net = cls(
        plans=plans,
        configuration=configuration,
        fold=fold,
        dataset_json=json.loads(meta_file.read_text()),
        device=torch_device,
    )
    net.num_epochs = int(epochs)
    net.num_iterations_per_epoch = int(iterations_per_epoch)
    net.num_val_iterations_per_epoch = int(val_iterations)
    net.save_every = 1
    if resume is not None:
        print(f"resuming nnU-Net training from {resume}")
        net.load_checkpoint(str(resume))
    trained = resume != final or net.current_epoch < net.num_epochs
    if trained:
        net.run_training()
    if validate and (trained or not (fold_dir / "validation" / "summary.json").is_file()):
        net.perform_actual_validation(False)
    return Path(net.output_folder_base)


def check_model_folder(
    model_folder: Path, folds: Sequence[int | str] | str, checkpoint: str, n_channels: int = 1
) -> list[int | str]:
    """Validate a (possibly user-supplied) trained model folder before loading it: its files,
    and that it reads `n_channels` input channels (the images DeltaRad gives per scan)."""
    model_folder = Path(model_folder)
    if not model_folder.is_dir():
        raise UserError(f"nnU-Net model folder not found: {model_folder}")
    for name in ("dataset.json", "plans.json"):
        if not (model_folder / name).is_file():
            raise UserError(f"nnU-Net model folder {model_folder} lacks {name}")
    wanted = [_parse_fold(f) for f in ([folds] if isinstance(folds, str | int) else folds)]
    if not wanted:
        raise UserError("nnU-Net prediction needs at least one fold")
    for fold in wanted:
        path = model_folder / f"fold_{fold}" / checkpoint
        if not path.is_file():
            raise UserError(f"nnU-Net model folder {model_folder} lacks fold {fold}: {path}")
    meta = json.loads((model_folder / "dataset.json").read_text())
    channels = meta.get("channel_names", meta.get("modality", {}))
    if len(channels) != n_channels:
        raise UserError(
            f"nnU-Net model {model_folder} expects {len(channels)} input channel(s) "
            f"({channels}); the study gives {n_channels} image(s) per scan (its registration "
            "reference, then its other channels)"
        )
    return wanted


def predict(
    model_folder: Path,
    cases: Sequence[tuple[str, Path | Sequence[Path]]],
    out_dir: Path,
    device: str = "auto",
    folds: Sequence[int | str] | str = ("0",),
    checkpoint: str = "checkpoint_final.pth",
    labels: Sequence[int] | None = None,
    use_mirroring: bool = True,
    n_proc: int = 2,
    out_paths: Sequence[Path] | None = None,
) -> list[Path]:
    """Predict ``out_dir/{case_id}.nii.gz`` binary masks on each input image's grid.

    Each case is its id and its image, or its channels' images (the registration reference
    first, then the others in the order the model was trained on; the mask lies on the first's
    grid). Works on our models and on a user's pretrained nnU-Net model folder alike. Runs in this
    process (nnU-Net's sequential predictor: no worker processes, so no ``__main__`` guard
    needed). nnU-Net writes its label map with its own writer (which knows the model's reader
    and axis order); we keep `labels` (default: every foreground label) as 1, check the grid
    against the input image and write the mask atomically. `use_mirroring=False` skips the
    mirrored test-time passes (8x fewer forward passes in 3-D; a little less accurate).
    `out_paths`, when given, replaces ``out_dir/{case_id}.nii.gz`` (one path per case).
    """
    inputs = [
        (cid, [Path(image)] if isinstance(image, str | Path) else [Path(p) for p in image])
        for cid, image in cases
    ]
    counts = sorted({len(images) for _, images in inputs})
    if len(counts) > 1:
        raise UserError(f"nnU-Net prediction: cases with {counts} channel images; give each all")
    wanted = check_model_folder(model_folder, folds, checkpoint, counts[0] if counts else 1)
    torch_device = resolve_device(device)
    os.environ[N_PROC_VAR] = str(int(n_proc))
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    torch.set_num_threads(max(1, n_proc))
    for cid, images in inputs:
        if not ID_PATTERN.fullmatch(cid):
            raise UserError(f"case id {cid!r} must be [A-Za-z0-9_-]+")
        for image in images:
            if not image.is_file():
                raise UserError(f"{cid}: image not found: {image}")
    predictor = nnUNetPredictor(
        tile_step_size=0.5,
        use_gaussian=True,
        use_mirroring=use_mirroring,
        perform_everything_on_device=torch_device.type == "cuda",
        device=torch_device,
        verbose=False,
        allow_tqdm=False,
    )
    try:
        predictor.initialize_from_trained_model_folder(str(model_folder), wanted, checkpoint)
    except (RuntimeError, KeyError) as err:  # unreadable checkpoint, trainer nnU-Net cannot find
        raise UserError(f"cannot load nnU-Net model {model_folder}: {err}") from None
    ending = predictor.dataset_json["file_ending"]
    out_dir = Path(out_dir)
    targets = (
        [Path(p) for p in out_paths]
        if out_paths is not None
        else [out_dir / f"{cid}{FILE_ENDING}" for cid, _ in inputs]
    )
    if len(targets) != len(inputs):
        raise UserError(f"{len(inputs)} cases to predict but {len(targets)} output paths")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    with tempfile.TemporaryDirectory(prefix=".nnunet_predict.", dir=out_dir) as scratch:
        stems = [str(Path(scratch) / cid) for cid, _ in inputs]
        predictor.predict_from_files_sequential(
            [[str(p.resolve()) for p in images] for _, images in inputs], stems, False, True
        )
        for (_, images), stem, target in zip(inputs, stems, targets, strict=True):
            written.append(_binary_mask(Path(stem + ending), images[0], labels, target))
    return written


def _binary_mask(raw: Path, image: Path, labels: Sequence[int] | None, target: Path) -> Path:
    prediction = io.read_image(raw)
    reference = io.read_header(image)[0]
    bad = reference.mismatches(io.Geometry.of(prediction))
    if bad:
        raise UserError(f"nnU-Net prediction for {image} differs from it in {', '.join(bad)}")
    array = sitk.GetArrayFromImage(prediction)
    keep = array > 0 if labels is None else np.isin(array, list(labels))
    return io.write_image(_on_grid(keep, reference), target)
