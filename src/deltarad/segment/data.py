"""Training data of the longitudinal network: (baseline, registered follow-up) pairs on the
baseline grid, each timepoint a stack of its channels' images (the registration reference first,
then the study's other channels), patch sampling with foreground oversampling, and nnU-Net-style
augmentation with MONAI."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import SimpleITK as sitk

from deltarad import io
from deltarad.runlog import UserError
from deltarad.segment.plan import TopologyPlan, normalize

# Keys of the image stacks (the masks are `{key}_seg`).
IMAGES = ("base", "follow")


class ExtraChannel(NamedTuple):
    """A channel of a pair besides the registration reference: its images on the baseline grid."""

    channel: str
    base_image: Path
    follow_image: Path


@dataclass(frozen=True)
class PairCase:
    """One patient's baseline and one later scan, both on the baseline's preprocessed grid:
    `base_image` / `follow_image` are the registration reference channel's images, `extra` the
    other channels' (the study's order)."""

    patient_id: str
    timepoint: str
    base_image: Path
    follow_image: Path
    base_mask: Path | None = None
    follow_mask: Path | None = None
    response: float = math.nan
    time: float = math.nan
    event: float = math.nan
    # Only one pair per patient carries its outcome (the last later timepoint: post-treatment).
    carries_outcome: bool = True
    # The tumour label of the masks (others, e.g. an organ, are background).
    label: int = 1
    extra: tuple[ExtraChannel, ...] = ()

    @property
    def base_images(self) -> list[Path]:
        """The baseline's images of every input channel, the reference first."""
        return [self.base_image, *(e.base_image for e in self.extra)]

    @property
    def follow_images(self) -> list[Path]:
        """The later scan's images of every input channel, the reference first."""
        return [self.follow_image, *(e.follow_image for e in self.extra)]


@dataclass
class LoadedPair:
    case: PairCase
    base: np.ndarray  # (channels, z, y, x) float32, normalised
    follow: np.ndarray
    base_mask: np.ndarray | None  # (z, y, x) float32 0/1
    follow_mask: np.ndarray | None
    reference: sitk.Image  # geometry of the baseline grid
    # Whether each timepoint's mask was drawn (False: an all-zero stand-in that trains nothing).
    labelled: tuple[bool, bool] = (True, True)


def read_array(path: Path) -> tuple[np.ndarray, sitk.Image]:
    image = io.read_image(path)
    return sitk.GetArrayFromImage(image), image


def load_pair(case: PairCase, plan: TopologyPlan | None, need_masks: bool) -> LoadedPair:
    """Read and normalise a pair (each channel as the plan says); masks become 1 at the tumour
    label, 0 elsewhere. Images and masks off the baseline grid are user errors.

    `need_masks` (training): a timepoint without a drawn mask gets an all-zero stand-in and
    ``labelled`` False for it, so it adds no segmentation loss (as nnU-Net's ignore label);
    otherwise missing masks stay None."""
    base, ref = read_array(case.base_image)
    stacks = [[base], []]
    for stack, paths in zip(stacks, (case.base_images[1:], case.follow_images), strict=True):
        for path in paths:
            array = read_array(path)[0]
            if array.shape != base.shape:
                raise UserError(
                    f"patient {case.patient_id}: {path} has shape {array.shape[::-1]} but the "
                    f"baseline grid {case.base_image} has {base.shape[::-1]}; the network needs "
                    "every channel of both scans on the baseline grid (later scans registered "
                    "onto it)"
                )
            stack.append(array)
    masks, labelled = [], []
    for path in (case.base_mask, case.follow_mask):
        labelled.append(path is not None)
        if path is None:
            masks.append(np.zeros(base.shape, np.float32) if need_masks else None)
            continue
        m, _ = read_array(path)
        if m.shape != base.shape:
            raise UserError(
                f"patient {case.patient_id}: mask {path} shape {m.shape[::-1]} differs from "
                f"image {case.base_image} shape {base.shape[::-1]}"
            )
        masks.append((m == case.label).astype(np.float32))
    if plan is not None:
        stacks = [[normalize(a, plan, c) for c, a in enumerate(arrays)] for arrays in stacks]
    base_stack, follow_stack = (np.stack(arrays) for arrays in stacks)
    return LoadedPair(
        case, base_stack, follow_stack, masks[0], masks[1], ref, (labelled[0], labelled[1])
    )


def spacing_zyx(image: sitk.Image) -> tuple[float, float, float]:
    return tuple(float(s) for s in image.GetSpacing()[::-1])  # type: ignore[return-value]


def pad_to(array: np.ndarray, shape: np.ndarray, value: float) -> tuple[np.ndarray, list[tuple]]:
    """Pad (z, y, x) symmetrically up to at least `shape`; return the padding for unpadding."""
    pads = []
    for size, target in zip(array.shape, shape, strict=False):
        extra = max(0, int(target) - size)
        pads.append((extra // 2, extra - extra // 2))
    return np.pad(array, pads, constant_values=value), pads


def crop_at(
    arrays: dict[str, np.ndarray],
    patch: np.ndarray,
    centre: np.ndarray | None,
    rng: np.random.Generator | None = None,
) -> dict[str, np.ndarray]:
    """The same `patch`-sized window of every (channels, z, y, x) array, centred on `centre`
    (voxel index on the unpadded grid) as far as the image allows; `centre` None: a random
    window (`rng`). Arrays smaller than the patch are padded (each channel of an image stack,
    `IMAGES`, with its own minimum; masks with 0). Returns (channels, *patch) arrays."""
    padded, pads = {}, None
    for key, arr in arrays.items():
        channels = []
        for channel in arr:
            value = float(channel.min()) if key in IMAGES else 0.0
            out, pads = pad_to(channel, patch, value)
            channels.append(out)
        padded[key] = np.stack(channels)
    shape = np.asarray(next(iter(padded.values())).shape[1:])
    if centre is None:
        start = np.array([rng.integers(0, s - p + 1) for s, p in zip(shape, patch, strict=False)])
    else:
        shifted = np.asarray(centre) + np.array([lo for lo, _ in pads])
        start = np.clip(shifted - patch // 2, 0, shape - patch)
    sl = tuple(slice(int(s), int(s + p)) for s, p in zip(start, patch, strict=False))
    return {k: v[(slice(None), *sl)].copy() for k, v in padded.items()}


def sample_patch(
    pair: LoadedPair, patch: np.ndarray, rng: np.random.Generator, fg_probability: float
) -> tuple[dict[str, np.ndarray], bool]:
    """A random patch (same place at both timepoints and in every channel); with probability
    `fg_probability` centred on a random tumour voxel of either timepoint (nnU-Net's foreground
    oversampling). Also returns whether the patch is centred on the tumour (the outcome heads
    learn from those only, as they see a tumour-centred window at inference)."""
    arrays = {"base": pair.base, "follow": pair.follow}
    if pair.base_mask is not None:
        arrays["base_seg"] = pair.base_mask[None]
        arrays["follow_seg"] = pair.follow_mask[None]
    centre = None
    if "base_seg" in arrays and rng.random() < fg_probability:
        fg = np.argwhere((pair.base_mask + pair.follow_mask) > 0)
        if len(fg):
            centre = fg[rng.integers(len(fg))]
    return crop_at(arrays, patch, centre, rng), centre is not None


def augmentation(settings: dict[str, Any], seed: int, with_masks: bool):
    """nnU-Net-style augmentation with MONAI: spatial transforms identical for both timepoints
    and all their channels; intensity scaling drawn per channel (noise is drawn per voxel, so per
    channel too), blur and simulated low resolution per timepoint."""
    from monai import transforms as T

    images = list(IMAGES)
    keys = images + (["base_seg", "follow_seg"] if with_masks else [])
    modes = ["bilinear"] * 2 + (["nearest"] * 2 if with_masks else [])
    rot = math.radians(settings["rotate_deg"])
    steps = [
        T.RandAffined(
            keys,
            prob=settings["affine_prob"],
            rotate_range=(rot, rot, rot),
            scale_range=(settings["scale"],) * 3,
            mode=modes,
            padding_mode="border",
        ),
        T.RandFlipd(keys, prob=settings["flip_prob"], spatial_axis=0),
        T.RandFlipd(keys, prob=settings["flip_prob"], spatial_axis=1),
        T.RandFlipd(keys, prob=settings["flip_prob"], spatial_axis=2),
        T.RandGaussianNoised(images, prob=settings["noise_prob"], std=settings["noise_std"]),
        T.RandScaleIntensityd(
            images,
            factors=settings["intensity_scale"],
            prob=settings["intensity_prob"],
            channel_wise=True,
        ),
        T.RandAdjustContrastd(images, prob=settings["gamma_prob"], gamma=(0.7, 1.5)),
    ]
    # Blur and simulated low resolution (nnU-Net's GaussianBlur and SimulateLowResolution), drawn
    # for each timepoint on its own: centres differ in slice thickness and sharpness, and the two
    # scans of a patient can come from different acquisitions.
    for key in images:
        steps += [
            T.RandGaussianSmoothd(
                [key], sigma_x=settings["blur_sigma"], sigma_y=settings["blur_sigma"],
                sigma_z=settings["blur_sigma"], prob=settings["blur_prob"],
            ),
            T.RandSimulateLowResolutiond(
                [key], prob=settings["lowres_prob"], zoom_range=settings["lowres_zoom"]
            ),
        ]  # fmt: skip
    compose = T.Compose(steps)
    compose.set_random_state(seed=seed)
    return compose


def collate(samples: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.stack([np.asarray(s[k], dtype=np.float32) for s in samples]) for k in samples[0]}
