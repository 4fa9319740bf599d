"""Network settings, presets and an nnU-Net-style topology plan computed from the dataset.

nnU-Net derives the patch size, pooling steps, kernel sizes and feature widths of its U-Net from
the dataset fingerprint (median shape and spacing). We follow the same rules (patch from the median
shape capped by a budget, pool an axis only while its spacing stays within 2x the finest one and
its feature map stays >= 4 voxels, 3-voxel kernels except on axes much coarser than the finest,
widths doubling up to a cap) and save the result as JSON, so a trained model is fully described
by files on disk.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deltarad.layout import NNUNET
from deltarad.runlog import UserError

HEADS = ("segmentation", "response", "survival", "reconstruction")
FUSIONS = ("difference", "concat", "both")


@dataclass(frozen=True)
class Preset:
    """One network variant: which heads it trains, how timepoints are fused, loss weights."""

    name: str
    heads: tuple[str, ...]
    fusion: str = "both"
    # How many of the deepest encoder levels feed the outcome heads (multi-scale when > 1).
    outcome_scales: int = 3
    loss_weights: dict[str, float] = field(default_factory=dict)

    @property
    def segments(self) -> bool:
        return "segmentation" in self.heads

    @property
    def outcome(self) -> bool:
        return "response" in self.heads or "survival" in self.heads

    @classmethod
    def from_config(cls, name: str, block: dict[str, Any]) -> Preset:
        heads = tuple(block["heads"])
        unknown = sorted(set(heads) - set(HEADS))
        if unknown or not heads:
            raise UserError(
                f"segmentation.presets.{name}.heads: {unknown or heads} — choose from {list(HEADS)}"
            )
        if heads == ("reconstruction",):
            raise UserError(f"segmentation.presets.{name}: reconstruction cannot be the only head")
        fusion = block.get("fusion", "both")
        if fusion not in FUSIONS:
            raise UserError(
                f"segmentation.presets.{name}.fusion: '{fusion}' — choose from {list(FUSIONS)}"
            )
        weights = {h: float(block.get("loss_weights", {}).get(h, 1.0)) for h in heads}
        return cls(name, heads, fusion, int(block.get("outcome_scales", 3)), weights)


def wants_gpu(device: str) -> bool:
    """Whether segmentation jobs should ask the scheduler for a GPU: `cuda`, or `auto` on a machine
    with an NVIDIA device node (checked without importing torch, to keep DAG building fast)."""
    if device == "cuda":
        return True
    return device == "auto" and Path("/dev/nvidia0").exists()


def preset_for(method: str, config_block: dict[str, Any]) -> Preset:
    """The preset named `method` in the `segmentation.presets` config block."""
    presets = config_block.get("presets", {})
    if method not in presets:
        raise UserError(
            f"segmentation.methods: unknown preset '{method}' — defined presets: "
            f"{sorted(presets)} (or '{NNUNET}' for the nnU-Net backend)"
        )
    return Preset.from_config(method, presets[method])


@dataclass(frozen=True)
class TopologyPlan:
    """Everything needed to rebuild the network and feed it like it was trained."""

    patch_size: list[int]
    spacing: list[float]
    strides: list[list[int]]  # per stage (first is all ones)
    kernels: list[list[int]]
    features: list[int]
    median_shape: list[int]
    # Per input channel, the registration reference first, then the study's other channels in
    # its order: the channel's name, modality and intensity normalisation (CT clips to
    # foreground percentiles then z-scores with dataset statistics, as nnU-Net; MR and PET are
    # z-scored per image).
    channels: list[str]
    modalities: list[str]
    normalizations: list[dict[str, float | str]]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TopologyPlan:
        """The plan of a plan.json's ``topology``. One written before channels existed (one
        ``modality`` and ``normalization``) is a single channel named after its modality."""
        if "channels" not in data:
            data = dict(data)
            modality, normalization = data.pop("modality"), data.pop("normalization")
            data.update(channels=[modality], modalities=[modality], normalizations=[normalization])
        return cls(**data)

    @property
    def divisor(self) -> np.ndarray:
        """Each axis of an input must be a multiple of this (product of the strides)."""
        return np.prod(np.asarray(self.strides), axis=0)

    def check_channels(self, channels: Sequence[str], where: str | Path) -> None:
        """A UserError (about `where`: the model folder) unless a study's `channels` (its
        reference first, then the others) feed this network: the same other channels in the
        same order. Input 0 is the registration reference whatever its name, so a
        single-channel network reads any single-channel study, as before channels existed."""
        if list(channels[1:]) != self.channels[1:]:
            raise UserError(
                f"{where}: the network reads the channels {self.channels} (the registration "
                f"reference first) but the study has {list(channels)}; train it on the "
                "study's channels"
            )


def channel_normalization(modality: str, foreground: np.ndarray) -> dict[str, float | str]:
    """A channel's intensity normalisation: CT clips to the 0.5-99.5th percentiles of the
    foreground values and z-scores with their statistics (nnU-Net's CT scheme); any other
    modality (or CT without foreground) is z-scored per image."""
    if modality != "CT" or not foreground.size:
        return {"scheme": "zscore"}
    lo, hi = np.percentile(foreground, [0.5, 99.5])
    clipped = np.clip(foreground, lo, hi)
    return {
        "scheme": "ct",
        "clip_low": float(lo),
        "clip_high": float(hi),
        "mean": float(clipped.mean()),
        "std": float(max(clipped.std(), 1e-6)),
    }


def plan_topology(
    shapes: list[tuple[int, int, int]],
    spacing: tuple[float, float, float],
    channels: Mapping[str, str],
    foreground: Sequence[np.ndarray],
    max_patch: tuple[int, int, int] = (96, 96, 96),
    base_features: int = 16,
    max_features: int = 256,
    min_feature_map: int = 4,
    max_stages: int = 6,
) -> TopologyPlan:
    """nnU-Net-like plan from the training images' shapes (z, y, x order), the input `channels`
    (name -> modality, the registration reference first) and each channel's foreground values."""
    if len(foreground) != len(channels):
        raise UserError(
            f"segmentation: foreground values of {len(foreground)} channels for the input "
            f"channels {list(channels)}"
        )
    if not shapes:
        raise UserError("segmentation: no training images to plan the network from")
    median = np.median(np.asarray(shapes), axis=0).astype(int)
    patch = np.minimum(median, np.asarray(max_patch, dtype=int))
    sp = np.asarray(spacing, dtype=float)
    strides: list[list[int]] = [[1, 1, 1]]
    kernels: list[list[int]] = [[3 if s <= 2 * sp.min() else 1 for s in sp]]
    current_sp, current_size = sp.copy(), patch.astype(float)
    for _ in range(max_stages - 1):
        finest = current_sp.min()
        pool = [
            int(current_sp[a] <= 2 * finest and current_size[a] / 2 >= min_feature_map)
            for a in range(3)
        ]
        if not any(pool):
            break
        stride = [2 if p else 1 for p in pool]
        current_sp = current_sp * np.asarray(stride)
        current_size = current_size / np.asarray(stride)
        strides.append(stride)
        kernels.append([3 if s <= 2 * current_sp.min() else 1 for s in current_sp])
    divisor = np.prod(np.asarray(strides), axis=0)
    patch = (np.ceil(patch / divisor) * divisor).astype(int)
    features = [min(base_features * 2**i, max_features) for i in range(len(strides))]
    return TopologyPlan(
        patch_size=patch.tolist(),
        spacing=[float(s) for s in sp],
        strides=strides,
        kernels=kernels,
        features=features,
        median_shape=median.tolist(),
        channels=list(channels),
        modalities=list(channels.values()),
        normalizations=[
            channel_normalization(m, f) for m, f in zip(channels.values(), foreground, strict=True)
        ],
    )


def normalize(array: np.ndarray, plan: TopologyPlan, channel: int = 0) -> np.ndarray:
    """Intensity normalisation of one (z, y, x) image of input `channel` (its index), as the plan
    records it (the same at training and inference)."""
    norm = plan.normalizations[channel]
    array = array.astype(np.float32)
    if norm["scheme"] == "ct":
        clipped = np.clip(array, norm["clip_low"], norm["clip_high"])
        return ((clipped - norm["mean"]) / norm["std"]).astype(np.float32)
    return ((array - array.mean()) / max(float(array.std()), 1e-6)).astype(np.float32)


def topology_from_nnunet_plans(
    plans: dict[str, Any],
    configuration: str = "3d_fullres",
    intensity_properties: dict[str, Any] | None = None,
    channels: Sequence[str] | None = None,
) -> TopologyPlan:
    """Our topology from an nnU-Net v2 plans dict (``nnUNetPlans.json`` / a model's plans.json).

    Lets our network be trained on exactly nnU-Net's plan (patch, strides, kernels, widths,
    normalisation), e.g. to compare the two trainers on equal footing. nnU-Net stores per-axis
    values after its ``transpose_forward``; they are put back into the images' (z, y, x) order.
    `intensity_properties`: a dataset fingerprint, or its
    ``foreground_intensity_properties_per_channel`` block (default: the copy inside `plans`);
    needed for CT normalisation. Each input channel's modality is CT for ``CTNormalization``,
    else MR; `channels` names them (the dataset's ``channel_names`` in order, the registration
    reference first; default: their modalities).
    Only what our network can express is accepted: 3-D, two convolutions per stage, and CT or
    per-image z-score normalisation without nnU-Net's nonzero mask.
    """
    where = f"nnU-Net plans {plans.get('plans_name', '?')} / {configuration}"
    configs = plans.get("configurations", {})
    if configuration not in configs:
        raise UserError(f"{where}: no such configuration; available: {sorted(configs)}")
    config, seen = dict(configs[configuration]), [configuration]
    while "inherits_from" in config:  # nnU-Net's configuration inheritance (child keys win)
        parent = config.pop("inherits_from")
        if parent in seen or parent not in configs:
            raise UserError(f"{where}: broken 'inherits_from' chain {seen + [parent]}")
        seen.append(parent)
        config = {**configs[parent], **config}
    arch = config.get("architecture", {}).get("arch_kwargs")
    if arch is None:
        raise UserError(f"{where}: no architecture.arch_kwargs (plans from nnU-Net < 2.4?)")
    kernels, strides = arch["kernel_sizes"], arch["strides"]
    if len(config["patch_size"]) != 3 or any(len(k) != 3 for k in kernels):
        raise UserError(f"{where}: only 3-D configurations can be converted")
    for key in ("n_conv_per_stage", "n_conv_per_stage_decoder"):
        if any(int(n) != 2 for n in arch.get(key, [2])):
            raise UserError(f"{where}: {key}={arch[key]}; our network has 2 convs per stage")
    schemes, masked = config["normalization_schemes"], config.get("use_mask_for_norm", [False])
    if channels is not None and len(channels) != len(schemes):
        raise UserError(
            f"{where}: {len(schemes)} input channels but {len(channels)} names {list(channels)}"
        )
    if any(masked):
        raise UserError(f"{where}: use_mask_for_norm is set; we z-score the whole image")
    back = np.argsort(plans.get("transpose_forward", [0, 1, 2]))

    def zyx(values: list) -> list:
        return [values[int(b)] for b in back]

    props = intensity_properties or plans.get("foreground_intensity_properties_per_channel")
    props = (props or {}).get("foreground_intensity_properties_per_channel", props) or {}
    normalizations: list[dict[str, float | str]] = []
    for index, scheme in enumerate(schemes):
        if scheme == "CTNormalization":
            channel = props.get(str(index), props)
            try:
                normalizations.append({
                    "scheme": "ct",
                    "clip_low": float(channel["percentile_00_5"]),
                    "clip_high": float(channel["percentile_99_5"]),
                    "mean": float(channel["mean"]),
                    "std": float(max(channel["std"], 1e-8)),
                })  # fmt: skip
            except KeyError as err:
                raise UserError(
                    f"{where}: CT normalisation of channel {index} needs intensity property {err}"
                ) from None
        elif scheme == "ZScoreNormalization":
            normalizations.append({"scheme": "zscore"})
        else:
            raise UserError(f"{where}: normalisation {scheme} is not supported (CT or z-score)")
    modalities = ["CT" if scheme == "CTNormalization" else "MR" for scheme in schemes]
    return TopologyPlan(
        patch_size=[int(p) for p in zyx(config["patch_size"])],
        spacing=[float(s) for s in zyx(config["spacing"])],
        strides=[[int(s) for s in zyx(list(st))] for st in strides],
        kernels=[[int(k) for k in zyx(list(kn))] for kn in kernels],
        features=[int(f) for f in arch["features_per_stage"]],
        median_shape=[int(m) for m in zyx(config["median_image_size_in_voxels"])],
        channels=list(channels) if channels is not None else modalities,
        modalities=modalities,
        normalizations=normalizations,
    )
