"""Inference with the longitudinal network: Gaussian-weighted sliding windows for the masks, one
pass over a tumour-centred window for the outcome heads; writes binary masks on the input grid."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk
import torch

from deltarad import io
from deltarad.runlog import UserError
from deltarad.segment.data import LoadedPair, PairCase, crop_at, load_pair, pad_to
from deltarad.segment.device import memory_layout, resolve_device
from deltarad.segment.network import LongitudinalNet
from deltarad.segment.plan import Preset, TopologyPlan


@dataclass
class PairPrediction:
    base_prob: np.ndarray | None  # (z, y, x) foreground probability
    follow_prob: np.ndarray | None
    response_probability: float
    risk_score: float


def load_model(
    folder: Path, device: torch.device, channels: Sequence[str] | None = None
) -> tuple[LongitudinalNet, TopologyPlan, Preset]:
    """Rebuild a trained network from its folder (plan.json + checkpoint_final.pt). `channels`:
    the study's (its registration reference first), checked against those the network reads
    (:meth:`TopologyPlan.check_channels`)."""
    plan_path, ckpt_path = folder / "plan.json", folder / "checkpoint_final.pt"
    for path in (plan_path, ckpt_path):
        if not path.exists():
            raise UserError(f"trained network folder {folder}: missing {path.name}")
    meta = json.loads(plan_path.read_text())
    plan = TopologyPlan.from_json(meta["topology"])
    if channels is not None:
        plan.check_channels(channels, folder)
    p = meta["preset"]
    preset = Preset(
        p["name"], tuple(p["heads"]), p["fusion"], p["outcome_scales"], p["loss_weights"]
    )
    net = LongitudinalNet(plan, preset, deep_supervision=1)
    state = torch.load(ckpt_path, map_location=device, weights_only=True)
    net.load_state_dict(state["model"])
    net.to(device, memory_format=memory_layout(device)).eval()
    return net, plan, preset


def _gaussian(patch: np.ndarray, sigma_scale: float = 0.125) -> torch.Tensor:
    grids = np.meshgrid(*[np.arange(p) - (p - 1) / 2 for p in patch], indexing="ij")
    sig = [max(p * sigma_scale, 1e-3) for p in patch]
    g = np.exp(-sum(gr**2 / (2 * s**2) for gr, s in zip(grids, sig, strict=False)))
    g = g / g.max()
    return torch.from_numpy(np.maximum(g, 1e-4).astype(np.float32))


def _windows(shape: np.ndarray, patch: np.ndarray, overlap: float) -> list[tuple[int, ...]]:
    starts = []
    for s, p in zip(shape, patch, strict=False):
        step = max(1, int(p * (1 - overlap)))
        n = max(1, math.ceil((s - p) / step) + 1)
        axis = sorted({min(i * step, s - p) for i in range(n)})
        starts.append(axis)
    return [(z, y, x) for z in starts[0] for y in starts[1] for x in starts[2]]


@torch.no_grad()
def sliding_window(
    predict: Callable[[torch.Tensor], torch.Tensor],
    volume: np.ndarray,
    patch: np.ndarray,
    device: torch.device,
    overlap: float = 0.5,
) -> np.ndarray:
    """Gaussian-weighted sliding-window prediction (nnU-Net's scheme) of any patch model.

    `volume`: (channels, z, y, x); `predict` maps a (1, channels, *patch) tensor to
    (1, outputs, *patch) values (e.g. probabilities). Returns (outputs, z, y, x) on the input grid
    (the volume is padded with each channel's minimum up to the patch, then cropped back).
    """
    padded, pads = zip(*(pad_to(c, patch, float(c.min())) for c in volume), strict=True)
    shape = np.asarray(padded[0].shape)
    x = torch.from_numpy(np.stack(padded))[None].to(device, memory_format=memory_layout(device))
    weight = _gaussian(patch).to(device)
    acc = norm = None
    for z, y, w in _windows(shape, patch, overlap):
        sl = (slice(z, z + patch[0]), slice(y, y + patch[1]), slice(w, w + patch[2]))
        out = predict(x[(..., *sl)])[0].float()
        if acc is None:
            acc = torch.zeros((out.shape[0], *shape), device=device)
            norm = torch.zeros(tuple(shape), device=device)
        acc[(slice(None), *sl)] += out * weight
        norm[sl] += weight
    prob = (acc / norm).cpu().numpy()
    unpad = tuple(slice(lo, s - hi) for (lo, hi), s in zip(pads[0], shape, strict=True))
    return prob[(slice(None), *unpad)]


@torch.no_grad()
def predict_pair(
    net: LongitudinalNet,
    plan: TopologyPlan,
    pair: LoadedPair,
    device: torch.device,
    overlap: float = 0.5,
    segment: bool = True,
    outcome: bool = True,
    centre: np.ndarray | None = None,
) -> PairPrediction:
    """Masks by Gaussian-weighted sliding windows; outcome from one pass over a patch-sized
    window centred on the tumour (`centre`, default `roi_centre` of the predicted masks)."""
    probs = None
    if net.decoder is not None and segment:
        n = len(pair.base)  # channels of a timepoint

        def both_timepoints(x: torch.Tensor) -> torch.Tensor:
            out = net(x[:, :n], x[:, n:], outcome=False, reconstruct=False)
            return torch.sigmoid(torch.cat([out.seg[0][0], out.seg[1][0]], dim=1))

        volume = np.concatenate([pair.base, pair.follow])
        prob = sliding_window(both_timepoints, volume, np.asarray(plan.patch_size), device, overlap)
        probs = (prob[0], prob[1])
    response = risk = math.nan
    if net.preset.outcome and outcome:
        cl = memory_layout(device)
        window = crop_at(
            {"base": pair.base, "follow": pair.follow},
            np.asarray(plan.patch_size),
            roi_centre(pair, probs) if centre is None else centre,
        )
        out = net(
            torch.from_numpy(window["base"])[None].to(device, memory_format=cl),
            torch.from_numpy(window["follow"])[None].to(device, memory_format=cl),
            segment=False,
            reconstruct=False,
        )
        logit, log_risk = out.outcome[0].float().cpu().tolist()
        if "response" in net.preset.heads:
            response = 1.0 / (1.0 + math.exp(-logit))
        if "survival" in net.preset.heads:
            risk = log_risk
    return PairPrediction(probs[0] if probs else None, probs[1] if probs else None, response, risk)


def roi_centre(pair: LoadedPair, probs: tuple[np.ndarray, np.ndarray] | None) -> np.ndarray:
    """Where the outcome heads look (the centre of a patch-sized window, as in training): the
    centroid of the predicted baseline tumour (else the follow-up's, else the most likely tumour
    voxel); for a network without segmentation head, the given baseline mask's centroid; else the
    image centre."""
    candidates = []
    if probs is not None:
        candidates = [probs[0] >= 0.5, probs[1] >= 0.5]
    elif pair.base_mask is not None:
        candidates = [pair.base_mask > 0]
    for mask in candidates:
        if mask.any():
            return np.round(np.argwhere(mask).mean(axis=0)).astype(int)
    if probs is not None:
        return np.array(np.unravel_index(int(np.argmax(probs[0])), probs[0].shape))
    return np.asarray(pair.base.shape[1:]) // 2


def outcome_centre(
    net: LongitudinalNet, plan: TopologyPlan, pair: LoadedPair, device: torch.device
) -> np.ndarray:
    """`roi_centre` of the pair, segmenting the follow-up only when the baseline shows no
    tumour (one scan instead of two for almost every patient)."""
    if net.decoder is None:
        return roi_centre(pair, None)
    base = segment_image(net, plan, pair.base, device)
    if (base >= 0.5).any():
        return roi_centre(pair, (base, base))
    return roi_centre(pair, (base, segment_image(net, plan, pair.follow, device)))


def mask_image(prob: np.ndarray, reference: sitk.Image, threshold: float = 0.5) -> sitk.Image:
    """Binary mask (uint8) on the reference grid; keeps only the largest connected component."""
    mask = sitk.GetImageFromArray((prob >= threshold).astype(np.uint8))
    mask.CopyInformation(reference)
    if sitk.GetArrayViewFromImage(mask).any():
        labels = sitk.RelabelComponent(sitk.ConnectedComponent(mask), sortByObjectSize=True)
        mask = sitk.Cast(labels == 1, sitk.sitkUInt8)
        mask.CopyInformation(reference)
    return mask


def predict_mask(
    model_folder: Path,
    case: PairCase,
    baseline: bool,
    out_mask: Path,
    device_name: str,
    overlap: float = 0.5,
    channels: Sequence[str] | None = None,
) -> Path:
    """Predict one pair; write the baseline's (`baseline`) or the later scan's mask atomically.
    `channels`: the study's, checked against the network's (:func:`load_model`)."""
    device = resolve_device(device_name)
    net, plan, preset = load_model(model_folder, device, channels)
    if not preset.segments:
        raise UserError(f"method {preset.name}: this network has no segmentation head")
    pair = load_pair(case, plan, need_masks=False)
    prob = segment_image(net, plan, pair.base if baseline else pair.follow, device, overlap)
    return io.write_image(mask_image(prob, pair.reference), out_mask)


def segment_image(
    net: LongitudinalNet,
    plan: TopologyPlan,
    image: np.ndarray,
    device: torch.device,
    overlap: float = 0.5,
) -> np.ndarray:
    """Foreground probability of one scan (`image`: its (channels, z, y, x) stack). A
    timepoint's mask depends on its own images only (the Siamese encoder and the decoder see
    each timepoint alone), so one scan costs half a pair."""

    def one_timepoint(x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(net.decoder(net.encoder(x))[0])

    patch = np.asarray(plan.patch_size)
    return sliding_window(one_timepoint, image, patch, device, overlap)[0]


def predict_outcomes(
    model_folder: Path,
    cases: list[PairCase],
    device_name: str,
    channels: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Response probability and risk score of each pair (one model load for all patients). A
    network without segmentation head looks at the window around the given baseline mask.
    `channels`: the study's, checked against the network's (:func:`load_model`)."""
    device = resolve_device(device_name)
    net, plan, preset = load_model(model_folder, device, channels)
    rows = []
    for case in cases:
        if preset.segments:  # the network finds the tumour itself; the given masks are not read
            case = replace(case, base_mask=None, follow_mask=None)
        pair = load_pair(case, plan, need_masks=False)
        # The outcome window is centred on the tumour: predicted by the network when it segments.
        centre = outcome_centre(net, plan, pair, device)
        pred = predict_pair(net, plan, pair, device, segment=False, centre=centre)
        rows.append([case.patient_id, pred.response_probability, pred.risk_score])
    return pd.DataFrame(rows, columns=["patient_id", "response_probability", "risk_score"])
