"""Inference with the longitudinal network: Gaussian-weighted sliding windows for the masks, one
whole-image pass for the outcome heads; writes binary masks on the input grid."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk
import torch

from deltarad import io
from deltarad.runlog import UserError
from deltarad.segment.data import LoadedPair, PairCase, load_pair, pad_to
from deltarad.segment.device import resolve_device
from deltarad.segment.network import LongitudinalNet
from deltarad.segment.plan import Preset, TopologyPlan


@dataclass
class PairPrediction:
    base_prob: np.ndarray | None  # (z, y, x) foreground probability
    follow_prob: np.ndarray | None
    response_probability: float
    risk_score: float


def load_model(folder: Path, device: torch.device) -> tuple[LongitudinalNet, TopologyPlan, Preset]:
    """Rebuild a trained network from its folder (plan.json + checkpoint_final.pt)."""
    plan_path, ckpt_path = folder / "plan.json", folder / "checkpoint_final.pt"
    for path in (plan_path, ckpt_path):
        if not path.exists():
            raise UserError(f"trained network folder {folder}: missing {path.name}")
    meta = json.loads(plan_path.read_text())
    plan = TopologyPlan.from_json(meta["topology"])
    p = meta["preset"]
    preset = Preset(
        p["name"], tuple(p["heads"]), p["fusion"], p["outcome_scales"], p["loss_weights"]
    )
    net = LongitudinalNet(plan, preset, deep_supervision=1)
    state = torch.load(ckpt_path, map_location=device, weights_only=True)
    net.load_state_dict(state["model"])
    net.to(device, memory_format=inference_layout(device)).eval()
    return net, plan, preset


def inference_layout(device: torch.device) -> torch.memory_format:
    """Channels-last speeds up CPU training (backward) ~4x but slows CPU inference 10-30 %
    (measured in bench/bench_segmentation.py); on CUDA it helps both."""
    return torch.channels_last_3d if device.type == "cuda" else torch.contiguous_format


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
    x = torch.from_numpy(np.stack(padded))[None].to(device, memory_format=inference_layout(device))
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
) -> PairPrediction:
    """Masks by Gaussian-weighted sliding windows; outcome from one pass over the whole image."""
    probs = None
    if net.decoder is not None and segment:

        def both_timepoints(x: torch.Tensor) -> torch.Tensor:
            out = net(x[:, :1], x[:, 1:], outcome=False, reconstruct=False)
            return torch.sigmoid(torch.cat([out.seg[0][0], out.seg[1][0]], dim=1))

        volume = np.stack([pair.base, pair.follow])
        prob = sliding_window(both_timepoints, volume, np.asarray(plan.patch_size), device, overlap)
        probs = (prob[0], prob[1])
    response = risk = math.nan
    if net.preset.outcome and outcome:
        cl = inference_layout(device)
        target = np.ceil(np.asarray(pair.base.shape) / plan.divisor) * plan.divisor
        bb, _ = pad_to(pair.base, target, float(pair.base.min()))
        ff, _ = pad_to(pair.follow, target, float(pair.follow.min()))
        out = net(
            torch.from_numpy(bb)[None, None].to(device, memory_format=cl),
            torch.from_numpy(ff)[None, None].to(device, memory_format=cl),
            segment=False,
            reconstruct=False,
        )
        logit, log_risk = out.outcome[0].float().cpu().tolist()
        if "response" in net.preset.heads:
            response = 1.0 / (1.0 + math.exp(-logit))
        if "survival" in net.preset.heads:
            risk = log_risk
    return PairPrediction(probs[0] if probs else None, probs[1] if probs else None, response, risk)


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
) -> Path:
    """Predict one pair; write the baseline's (`baseline`) or the later scan's mask atomically."""
    device = resolve_device(device_name)
    net, plan, preset = load_model(model_folder, device)
    if not preset.segments:
        raise UserError(f"method {preset.name}: this network has no segmentation head")
    pair = load_pair(case, plan, need_masks=False)
    pred = predict_pair(net, plan, pair, device, overlap=overlap, outcome=False)
    prob = pred.base_prob if baseline else pred.follow_prob
    return io.write_image(mask_image(prob, pair.reference), out_mask)


def predict_outcomes(model_folder: Path, cases: list[PairCase], device_name: str) -> pd.DataFrame:
    """Response probability and risk score of each pair (one model load for all patients)."""
    device = resolve_device(device_name)
    net, plan, _ = load_model(model_folder, device)
    rows = []
    for case in cases:
        pair = load_pair(case, plan, need_masks=False)
        pred = predict_pair(net, plan, pair, device, segment=False)
        rows.append([case.patient_id, pred.response_probability, pred.risk_score])
    return pd.DataFrame(rows, columns=["patient_id", "response_probability", "risk_score"])
