"""Deep features: a trained network's encoder activations pooled inside the tumour and each ring.

Each timepoint's images (on the baseline grid: the registration reference channel's, then the
study's other channels', stacked as the network's input channels) go through the encoder alone,
so baseline and follow-up features come from identical weights and their difference is
meaningful. Two encoders:

- DeltaRad's own network (``features.deep.method`` a preset): the Siamese encoder over the whole
  image in one pass (the image padded to the network's divisor), each channel normalised as its
  plan says.
- nnU-Net (``method: nnunet``): one fold of the trained or pretrained model; ``network.encoder``
  returns the feature maps of every stage. The scan is prepared as nnU-Net's predictor prepares
  it (its normalisation from the plans, axes transposed as the plans say, resampled to the plans'
  spacing where that differs) and encoded in windows of the plans' patch size, as nnU-Net
  predicts: the network never sees more context than it was trained on. Windows start on
  multiples of the total stride, so each stage's maps are stitched on that stage's own coarse
  grid (Gaussian-weighted, like nnU-Net's sliding window) and nothing is upsampled: memory is
  the coarse maps only.

Regions come from the reference channel (its mask and body threshold), as for the handcrafted
features. At each chosen encoder level, a region's mask is averaged onto the level's coarser
grid (the share of each coarse voxel inside the region); a feature map's feature is its mean
activation weighted by that share (and, optionally, the maximum over coarse voxels at least half
inside).

Columns (:func:`deltarad.features.naming.column`):
``{timepoint}__{channels}__{region}__deep__l{level}_f{map:03d}_{stat}``, where ``{channels}`` is
every channel the encoder reads joined by ``+``, the reference first (``CT``, ``CT+PET``,
``T2+ADC``): each feature map mixes all of them. Deltas are added with the handcrafted ones when
the table is merged.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from deltarad import io
from deltarad.features import naming
from deltarad.features.table import FeatureSettings, series_scans
from deltarad.runlog import UserError

SOURCE = "deep"
NNUNET = "nnunet"
# Deep jobs never read pyradiomics' parameter file; FeatureSettings wants a name for it.
NO_PARAMS = "(not used by deep features)"
log = logging.getLogger(__name__)

Activations = list[torch.Tensor | None]  # per level: (maps, z, y, x); None where not chosen
EncodeFn = Callable[
    [Sequence[sitk.Image], Mapping[str, np.ndarray], Sequence[int]],
    tuple[Activations, dict[str, np.ndarray]],
]


@dataclasses.dataclass(frozen=True)
class DeepEncoder:
    """A loaded encoder: its number of levels, and `encode(images, regions, levels)` (`images`:
    one scan's channels on one grid, the reference first), which returns the chosen levels'
    activations and the region masks on the grid those activations cover."""

    n_levels: int
    encode: EncodeFn


def pool_regions(
    activations: Sequence[torch.Tensor | None],
    regions: Mapping[str, np.ndarray],
    levels: Sequence[int],
    stats: Sequence[str] = ("mean",),
) -> dict[str, dict[str, float]]:
    """Pool activations (per level: (maps, z, y, x)) inside each full-resolution region mask
    (boolean, or weights in [0, 1] where a region was resampled)."""
    out: dict[str, dict[str, float]] = {}
    for name, region in regions.items():
        mask = torch.from_numpy(np.asarray(region, dtype=np.float32))[None, None]
        feats: dict[str, float] = {}
        for level in levels:
            act = activations[level].float()
            share = F.adaptive_avg_pool3d(mask, act.shape[1:])[0, 0]
            total = float(share.sum())
            for stat in stats:
                if stat == "mean":
                    values = (act * share).sum(dim=(1, 2, 3)) / total if total > 0 else None
                else:  # max over coarse voxels mostly inside the region
                    inside = share >= 0.5
                    values = act[:, inside].max(dim=1).values if inside.any() else None
                for c in range(act.shape[0]):
                    key = f"l{level}_f{c:03d}_{stat}"
                    feats[key] = float(values[c]) if values is not None else math.nan
        out[name] = feats
    return out


def own_encoder(
    model_folder: str | Path, device: str = "cpu", channels: Sequence[str] | None = None
) -> DeepEncoder:
    """DeltaRad's trained network (plan.json + checkpoint_final.pt): whole image, one pass.
    `channels`: the study's, checked against those the network reads."""
    from deltarad.segment.device import memory_layout
    from deltarad.segment.infer import load_model, resolve_device
    from deltarad.segment.plan import normalize

    dev = resolve_device(device)
    net, plan, _ = load_model(Path(model_folder), dev, channels)

    def encode(
        images: Sequence[sitk.Image], regions: Mapping[str, np.ndarray], levels: Sequence[int]
    ) -> tuple[Activations, dict[str, np.ndarray]]:
        array = np.stack(
            [normalize(sitk.GetArrayFromImage(im), plan, c) for c, im in enumerate(images)]
        )
        target = np.ceil(np.asarray(array.shape[1:]) / plan.divisor) * plan.divisor
        pads = [(0, int(t) - s) for s, t in zip(array.shape[1:], target, strict=True)]
        padded = np.stack([np.pad(a, pads, constant_values=float(a.min())) for a in array])
        x = torch.from_numpy(padded)[None].to(dev, memory_format=memory_layout(dev))
        with torch.no_grad():
            acts: Activations = [a[0].cpu() for a in net.encode(x)]
        return acts, {n: np.pad(r, pads) for n, r in regions.items()}

    return DeepEncoder(len(plan.features), encode)


def _gaussian(shape: Sequence[int], sigma_scale: float = 0.125) -> torch.Tensor:
    """nnU-Net's window weight (sigma = 1/8 of the window), floored so no voxel weighs 0."""
    grids = np.meshgrid(*[np.arange(s) - (s - 1) / 2 for s in shape], indexing="ij")
    sig = [max(s * sigma_scale, 1e-3) for s in shape]
    g = np.exp(-sum(gr**2 / (2 * si**2) for gr, si in zip(grids, sig, strict=True)))
    return torch.from_numpy(np.maximum(g / g.max(), 1e-4).astype(np.float32))


def _starts(size: int, patch: int, unit: int, overlap: float) -> list[int]:
    """Window starts along one axis: multiples of `unit` (so every stage's grid lines up), the
    last flush with the end (`size` and `patch` are multiples of `unit`)."""
    step = max(unit, int(patch * (1 - overlap)) // unit * unit)
    return sorted({*range(0, size - patch, step), size - patch})


def stage_strides(model: Any) -> np.ndarray:
    """(stages, 3) cumulative stride of each nnU-Net encoder stage, from the plans."""
    kwargs = model.configuration_manager.network_arch_init_kwargs
    if "strides" not in kwargs:
        raise UserError(
            "nnU-Net plans: the architecture has no 'strides'; cannot place encoder windows"
        )
    per_stage = [np.broadcast_to(np.asarray(s, dtype=int), (3,)) for s in kwargs["strides"]]
    return np.cumprod(np.stack(per_stage), axis=0)


@torch.no_grad()
def encode_windows(
    model: Any, volume: np.ndarray, strides: np.ndarray, levels: Sequence[int], overlap: float
) -> Activations:
    """Stitch each chosen stage's maps over windows of the plans' patch size (`volume`: prepared
    (channels, z, y, x), a multiple of the total stride and at least one patch)."""
    patch = np.asarray(model.configuration_manager.patch_size, dtype=int)
    shape = np.asarray(volume.shape[1:])
    unit = strides[-1]
    dev = model.device
    x = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))[None].to(dev)
    acc: dict[int, torch.Tensor] = {}
    norm: dict[int, torch.Tensor] = {}
    weight = {lv: _gaussian(patch // strides[lv]).to(dev) for lv in levels}
    axes = [
        _starts(int(s), int(p), int(u), overlap) for s, p, u in zip(shape, patch, unit, strict=True)
    ]
    for start in itertools.product(*axes):
        window = tuple(slice(o, o + p) for o, p in zip(start, patch, strict=True))
        maps = model.network.encoder(x[(..., *window)])
        for lv in levels:
            out, st = maps[lv][0].float(), strides[lv]
            if tuple(out.shape[1:]) != tuple(patch // st):
                raise UserError(
                    f"nnU-Net encoder stage {lv}: maps {tuple(out.shape[1:])} for a patch "
                    f"{tuple(patch)}, expected stride {tuple(st)} from the plans"
                )
            if lv not in acc:
                acc[lv] = torch.zeros((out.shape[0], *(shape // st)), device=dev)
                norm[lv] = torch.zeros(tuple(shape // st), device=dev)
            coarse = tuple(
                slice(o // s, o // s + p // s) for o, s, p in zip(start, st, patch, strict=True)
            )
            acc[lv][(slice(None), *coarse)] += out * weight[lv]
            norm[lv][coarse] += weight[lv]
    return [(acc[lv] / norm[lv]).cpu() if lv in acc else None for lv in range(len(strides))]


def nnunet_encoder(
    model_folder: str | Path,
    device: str = "cpu",
    fold: int | str = 0,
    checkpoint: str = "checkpoint_final.pth",
    overlap: float = 0.5,
    n_channels: int = 1,
) -> DeepEncoder:
    """One fold of a trained nnU-Net model, applied as nnU-Net's predictor would apply it
    (`n_channels`: the images given per scan, which the model must read).

    Memory is one window's forward pass plus the chosen stages' stitched maps: with nnU-Net's
    default 3-D encoder (32-320 channels, 128³ windows) a 160x160x128 scan peaked at 2.2 GB RSS
    for levels 1-5 (2.6 GB with level 0) and took ~9 s per window on 2 CPU cores.
    """
    from nnunetv2.preprocessing.resampling.default_resampling import compute_new_shape

    from deltarad.segment.nnunet_network import load_network, normalize_for_network

    model = load_network(Path(model_folder), fold, checkpoint, device, n_channels)
    strides = stage_strides(model)
    config, order = model.configuration_manager, list(model.plans_manager.transpose_forward)
    patch = np.asarray(config.patch_size, dtype=int)
    if np.any(patch % strides[-1]):
        raise UserError(
            f"nnU-Net model {model_folder}: patch {tuple(patch)} is not a multiple of the total "
            f"stride {tuple(strides[-1])}"
        )

    def encode(
        images: Sequence[sitk.Image], regions: Mapping[str, np.ndarray], levels: Sequence[int]
    ) -> tuple[Activations, dict[str, np.ndarray]]:
        stack = np.stack([sitk.GetArrayFromImage(im) for im in images])
        array = normalize_for_network(stack, model).transpose([0, *(a + 1 for a in order)])
        masks = {n: np.asarray(r).transpose(order) for n, r in regions.items()}
        spacing = np.asarray(images[0].GetSpacing()[::-1], dtype=float)[order]
        target = np.asarray(config.spacing, dtype=float)
        if not np.allclose(spacing, target, rtol=1e-3):
            # The filters were learnt at the plans' spacing, so, like nnU-Net's predictor, we
            # resample the (normalised) scan to it with nnU-Net's own resampling. The regions
            # are resampled by linear interpolation of their indicators: each new voxel's share
            # inside the region, which pool_regions uses as a weight. Scans already at the
            # plans' spacing (our preprocess.spacing = the spacing nnU-Net planned from) skip this.
            new_shape = [int(s) for s in compute_new_shape(array.shape[1:], spacing, target)]
            array = config.resampling_fn_data(array, new_shape, spacing, target)
            masks = {
                n: F.interpolate(
                    torch.from_numpy(m.astype(np.float32))[None, None],
                    size=new_shape,
                    mode="trilinear",
                    align_corners=False,
                )[0, 0].numpy()
                for n, m in masks.items()
            }
        unit = strides[-1]
        full = np.maximum(np.ceil(np.asarray(array.shape[1:]) / unit) * unit, patch).astype(int)
        pads = [(0, int(t) - s) for s, t in zip(array.shape[1:], full, strict=True)]
        # 0 is nnU-Net's padding value (in normalised intensities).
        volume = np.pad(array.astype(np.float32), [(0, 0), *pads])
        acts = encode_windows(model, volume, strides, levels, overlap)
        return acts, {n: np.pad(m, pads) for n, m in masks.items()}

    return DeepEncoder(len(strides), encode)


def chosen_levels(levels: Sequence[int] | None, n_levels: int) -> list[int]:
    """The configured levels (default: all but full resolution), checked against the encoder."""
    chosen = list(levels) if levels else list(range(1, n_levels))
    bad = [lv for lv in chosen if not 0 <= lv < n_levels]
    if bad:
        raise UserError(
            f"features.deep.levels: {bad} outside the network's levels 0..{n_levels - 1}"
        )
    return chosen


def scan_images(image: sitk.Image, extra: Sequence[str | Path], what: str) -> list[sitk.Image]:
    """A scan's reference channel image and its other channels' (read from `extra`), which must
    share its grid."""
    images = [image]
    grid = io.Geometry.of(image)
    for path in extra:
        other = io.read_image(path)
        bad = grid.mismatches(io.Geometry.of(other))
        if bad:
            raise UserError(
                f"{what}: channel image {path} differs from the reference channel's grid in "
                f"{', '.join(bad)}"
            )
        images.append(other)
    return images


def patient_deep_features(
    patient_id: str,
    encoder: DeepEncoder,
    scans: Mapping[str, tuple[str | Path, str | Path]],
    channels: Sequence[str],
    settings: FeatureSettings,
    levels: Sequence[int] | None = None,
    stats: Sequence[str] = ("mean",),
    modality: str | None = None,
    mask_sources: Mapping[str, str] | None = None,
    extra_images: Mapping[str, Sequence[str | Path]] | None = None,
) -> pd.DataFrame:
    """One row of deep features for a patient: every timepoint x region x level x feature map.

    `scans`: timepoint -> (reference channel image, mask); `channels`: the channels the encoder
    reads, the reference first (the columns' channel part); `extra_images`: timepoint -> the
    images of ``channels[1:]``, on the reference's grid (needed when there are any).
    Regions are those of the handcrafted features (same rings, body threshold, tumour labels,
    and rings around the tumour bed where the tumour vanished; its tumour features are NA).
    """
    chosen = chosen_levels(levels, encoder.n_levels)
    channel = naming.deep_channel(channels)
    row: dict[str, Any] = {"patient_id": patient_id}
    for timepoint, image, built, _ in series_scans(
        patient_id, scans, settings, modality, mask_sources
    ):
        extra = (extra_images or {}).get(timepoint, [])
        if len(extra) != len(channels) - 1:
            raise UserError(
                f"patient {patient_id}, {timepoint}: {len(extra)} image(s) besides the "
                f"reference for the channels {list(channels)}"
            )
        images = scan_images(image, extra, f"patient {patient_id}, {timepoint}")
        regions = {n: sitk.GetArrayFromImage(r) > 0 for n, r in built.items()}
        acts, on_grid = encoder.encode(images, regions, chosen)
        for region, feats in pool_regions(acts, on_grid, chosen, stats).items():
            for name, value in feats.items():
                row[naming.column(timepoint, channel, region, SOURCE, name)] = value
    return pd.DataFrame([row])


def load_encoder(
    method: str,
    model_folder: str | Path,
    channels: Sequence[str],
    device: str = "cpu",
    nnunet: Mapping[str, Any] | None = None,
) -> DeepEncoder:
    """The encoder of `method`: ``nnunet`` (with its ``fold``/``checkpoint``) or our network.
    `channels`: the study's, the reference first, checked against what the network reads."""
    if method == NNUNET:
        nn = nnunet or {}
        return nnunet_encoder(
            model_folder,
            device,
            nn.get("fold", 0),
            nn.get("checkpoint", "checkpoint_final.pth"),
            n_channels=len(channels),
        )
    return own_encoder(model_folder, device, channels)


def write_patient_deep(
    patient_id: str,
    model_folder: str | Path,
    scans: Mapping[str, tuple[str | Path, str | Path]],
    channels: Sequence[str],
    settings: Mapping[str, Any],
    modality: str | None,
    out_table: str | Path,
    device: str = "cpu",
    mask_sources: Mapping[str, str] | None = None,
    extra_images: Mapping[str, Sequence[str | Path]] | None = None,
) -> Path:
    """The per-patient deep-feature partial file (merged into features.parquet).

    `settings`: ``rings_mm``, ``body_threshold``, ``deep`` (``method``, ``levels``, ``stats``),
    ``mask_label`` (the tumour label of the masks features read) and, for nnU-Net, ``nnunet``
    (``fold``, ``checkpoint``). `scans`, `channels`, `extra_images`: as
    :func:`patient_deep_features`.
    """
    regions = FeatureSettings.from_config(settings, params=NO_PARAMS)
    deep = settings["deep"]
    encoder = load_encoder(deep["method"], model_folder, channels, device, settings.get("nnunet"))
    table = patient_deep_features(
        patient_id,
        encoder,
        scans,
        channels,
        regions,
        deep.get("levels"),
        deep.get("stats", ["mean"]),
        modality,
        mask_sources,
        extra_images,
    )
    log.info("%s: %d deep features (%s)", patient_id, table.shape[1] - 1, deep["method"])
    return io.write_table(table, out_table)
