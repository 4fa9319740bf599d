"""Training of the longitudinal multi-task network, nnU-Net style.

SGD with Nesterov momentum and a poly learning-rate schedule, Dice + CE with deep supervision,
foreground-oversampled patches, MONAI augmentation, gradient clipping, mixed precision on CUDA.
Every epoch writes `checkpoint_latest.pt`; a killed job resumes from it. Each epoch re-seeds its
random streams from (seed, epoch), so a resumed run equals an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from deltarad import io
from deltarad.qc import dice
from deltarad.runlog import UserError
from deltarad.segment.data import (
    LoadedPair,
    PairCase,
    augmentation,
    collate,
    load_pair,
    sample_patch,
    spacing_zyx,
)
from deltarad.segment.device import memory_layout
from deltarad.segment.infer import predict_pair, resolve_device
from deltarad.segment.losses import cox_loss, deep_supervision_loss, response_loss
from deltarad.segment.network import LongitudinalNet
from deltarad.segment.plan import Preset, TopologyPlan, plan_topology

log = logging.getLogger(__name__)


def make_plan(
    cases: list[PairCase],
    channels: Mapping[str, str],
    network: dict[str, Any],
    rng: np.random.Generator,
) -> TopologyPlan:
    """The topology plan from the training pairs' baseline images (shapes, spacing) and each input
    channel's foreground values (`channels`: name -> modality, the registration reference
    first)."""
    shapes, spacing = [], None
    foreground: list[list[np.ndarray]] = [[] for _ in channels]
    for case in cases:
        pair = load_pair(case, None, need_masks=True)
        shapes.append(pair.base.shape[1:])
        spacing = spacing_zyx(pair.reference)
        for stack, mask in ((pair.base, pair.base_mask), (pair.follow, pair.follow_mask)):
            for values_of_channel, img in zip(foreground, stack, strict=True):
                values = img[mask > 0]
                if values.size:
                    chosen = rng.choice(values, size=min(values.size, 2000), replace=False)
                    values_of_channel.append(chosen)
    return plan_topology(
        shapes,
        spacing,
        channels,
        [np.concatenate(f) if f else np.empty(0) for f in foreground],
        max_patch=tuple(network["max_patch"]),
        base_features=network["base_features"],
        max_features=network["max_features"],
        min_feature_map=network["min_feature_map"],
    )


def deterministic_kernels() -> None:
    """Bitwise-repeatable training on CUDA (same GPU model, driver and torch): deterministic
    cuDNN/cuBLAS kernels, no autotuning. Slower; a kernel without a deterministic version raises
    instead of silently differing. CPU training is deterministic without this."""
    import os

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True)


def make_optimizer(net: torch.nn.Module, tr: dict[str, Any]) -> torch.optim.Optimizer:
    """nnU-Net's SGD (Nesterov, momentum 0.99), or AdamW for short CPU budgets.

    Fused kernels (one pass over all parameters instead of a Python loop of small ops) where
    torch has them for the parameters' device: the same update rule, ~3x faster AdamW step on CPU.
    """
    device = next(net.parameters()).device
    fused = {"fused": True} if device.type in ("cpu", "cuda") else {}
    if tr["optimizer"] == "adamw":
        return torch.optim.AdamW(
            net.parameters(), lr=tr["learning_rate"], weight_decay=tr["weight_decay"], **fused
        )
    return torch.optim.SGD(
        net.parameters(), lr=tr["learning_rate"], momentum=tr["momentum"],
        weight_decay=tr["weight_decay"], nesterov=True, **fused,
    )  # fmt: skip


def poly_lr(initial: float, step: int, total: int) -> float:
    return initial * (1 - step / total) ** 0.9


def _case_fingerprint(case: PairCase) -> list[Any]:
    """What a checkpoint's validity depends on for one pair: its files (path, size, mtime) and
    its outcome labels, so changed data with the same IDs restarts training instead of resuming."""
    files = [*case.base_images, *case.follow_images, case.base_mask, case.follow_mask]
    stats = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files if p is not None]
    return [case.patient_id, case.timepoint, stats, case.response, case.time, case.event]


def _settings_hash(data: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def labelled_loss(
    outputs: list[torch.Tensor], target: torch.Tensor, labelled: torch.Tensor
) -> torch.Tensor | None:
    """Deep-supervision Dice + CE over the batch rows whose mask was drawn; None when no row
    of the batch has one (that timepoint then adds no segmentation loss)."""
    rows = labelled > 0
    if not bool(rows.any()):
        return None
    if bool(rows.all()):
        return deep_supervision_loss(outputs, target)
    return deep_supervision_loss([o[rows] for o in outputs], target[rows])


def _batch_loss(
    net: LongitudinalNet, batch: dict[str, torch.Tensor], preset: Preset
) -> tuple[torch.Tensor, dict[str, float]]:
    out = net(batch["base"], batch["follow"], outcome=preset.outcome)
    w = preset.loss_weights
    parts: dict[str, torch.Tensor] = {}
    if out.seg is not None:
        terms = [
            labelled_loss(out.seg[i], batch[f"{key}_seg"], batch[f"{key}_labelled"])
            for i, key in enumerate(("base", "follow"))
        ]
        terms = [t for t in terms if t is not None]
        parts["segmentation"] = sum(terms) / len(terms) if terms else out.seg[0][0].sum() * 0.0
    if out.outcome is not None:
        has = batch["carries_outcome"] > 0
        if "response" in preset.heads:
            label = torch.where(
                has, batch["response"], torch.full_like(batch["response"], math.nan)
            )
            parts["response"] = response_loss(out.outcome[:, 0].float(), label)
        if "survival" in preset.heads and has.any():
            parts["survival"] = cox_loss(
                out.outcome[has, 1].float(), batch["time"][has], batch["event"][has]
            )
    if out.recon is not None:
        parts["reconstruction"] = 0.5 * sum(
            torch.nn.functional.mse_loss(r.float(), x)
            for r, x in zip(out.recon, (batch["base"], batch["follow"]), strict=False)
        )
    total = sum(w.get(k, 1.0) * v for k, v in parts.items())
    return total, {k: float(v.detach()) for k, v in parts.items()}


def train_network(
    train_cases: list[PairCase],
    val_cases: list[PairCase],
    preset: Preset,
    modality: str | Mapping[str, str],
    settings: dict[str, Any],
    out_dir: Path,
    device_name: str = "auto",
    seed: int = 0,
    threads: int = 1,
    plan: TopologyPlan | None = None,
) -> dict[str, Any]:
    """Train one preset; write plan.json, checkpoint_final.pt and training_log.tsv to `out_dir`.

    `modality`: the input channels, name -> modality, the registration reference first, then
    the cases' `extra` channels in their order; a single modality stands for one channel named
    after it. `plan`: a given topology (e.g. converted from nnU-Net's plans) instead of planning
    one here.
    """
    channels = {modality: modality} if isinstance(modality, str) else dict(modality)
    for case in (*train_cases, *val_cases):
        extra = [e.channel for e in case.extra]
        if extra != list(channels)[1:]:
            raise UserError(
                f"segmentation ({preset.name}): patient {case.patient_id} has the channels "
                f"{extra} besides the reference; the network is trained on {list(channels)}"
            )
    if plan is not None:
        plan.check_channels(list(channels), "the given plan")
    with_masks = {
        c.patient_id for c in train_cases if c.base_mask is not None or c.follow_mask is not None
    }
    n_patients = len(with_masks if preset.segments else {c.patient_id for c in train_cases})
    if n_patients < 2:
        raise UserError(
            f"segmentation ({preset.name}): {n_patients} training patient(s) — need at least 2 "
            "training patients with masks in the training centres"
        )
    device = resolve_device(device_name)
    torch.set_num_threads(threads)
    tr, net_cfg, aug_cfg = settings["training"], settings["network"], settings["augmentation"]
    if tr["deterministic"]:
        deterministic_kernels()
    out_dir.mkdir(parents=True, exist_ok=True)
    if plan is None:
        plan = make_plan(train_cases, channels, net_cfg, np.random.default_rng(seed))
    pairs = [load_pair(c, plan, need_masks=True) for c in train_cases]
    val_pairs = [load_pair(c, plan, need_masks=True) for c in val_cases]
    torch.manual_seed(seed)
    net = LongitudinalNet(plan, preset, deep_supervision=net_cfg["deep_supervision"])
    net = net.to(device, memory_format=memory_layout(device))
    opt = make_optimizer(net, tr)
    use_amp = device.type == "cuda" and tr["mixed_precision"]
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    epochs, iters = tr["epochs"], tr["iterations_per_epoch"]
    fingerprint = _settings_hash(
        {"settings": settings, "preset": preset.__dict__, "seed": seed, "plan": plan.to_json(),
         "train": [_case_fingerprint(c) for c in train_cases]}
    )  # fmt: skip
    latest = out_dir / "checkpoint_latest.pt"
    history: list[dict[str, Any]] = []
    start_epoch = 0
    if latest.exists():
        state = torch.load(latest, map_location=device, weights_only=False)
        if state.get("fingerprint") == fingerprint:
            net.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            scaler.load_state_dict(state["scaler"])
            start_epoch, history = state["epoch"] + 1, state["history"]
            log.info("resuming %s from epoch %d (%s)", preset.name, start_epoch, latest)
        else:
            log.info("ignoring %s: written with other settings or data", latest)
    patch = np.asarray(plan.patch_size)
    val_patches = validation_patches(val_pairs, patch, seed) if preset.segments else []
    log.info(
        "%s: %d training pairs, %d validation pairs, patch %s, features %s, %d parameters, %s",
        preset.name, len(pairs), len(val_pairs), plan.patch_size, plan.features,
        sum(p.numel() for p in net.parameters()), device,
    )  # fmt: skip
    for epoch in range(start_epoch, epochs):
        rng = np.random.default_rng([seed, epoch])
        torch.manual_seed(seed * 10_000 + epoch)
        aug = augmentation(aug_cfg, seed=(seed + epoch) % 2**31, with_masks=True)
        net.train()
        t0, sums = time.perf_counter(), {}
        bar = tqdm(range(iters), desc=f"{preset.name} epoch {epoch + 1}/{epochs}", mininterval=5)
        for it in bar:
            step = epoch * iters + it
            for group in opt.param_groups:
                group["lr"] = poly_lr(tr["learning_rate"], step, epochs * iters)
            chosen = rng.choice(
                len(pairs), size=tr["batch_size"], replace=len(pairs) < tr["batch_size"]
            )
            batch = _make_batch(
                [pairs[i] for i in chosen], patch, rng, tr["foreground_oversampling"], aug, device
            )
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                loss, parts = _batch_loss(net, batch, preset)
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(net.parameters(), 12.0)
            scaler.step(opt)
            scaler.update()
            value = float(loss.detach())
            for k, v in {"loss": value, **parts}.items():
                sums[k] = sums.get(k, 0.0) + v
            bar.set_postfix(loss=f"{value:.3f}")
        row = {"epoch": epoch + 1, **{k: v / iters for k, v in sums.items()}}
        row["val_dice"] = validation_dice(net, val_patches, device) if preset.segments else math.nan
        row["lr"] = opt.param_groups[0]["lr"]
        row["seconds"] = round(time.perf_counter() - t0, 2)
        history.append(row)
        log.info(
            "epoch %d/%d loss %.4f val_dice %.4f (%.1f s)",
            epoch + 1,
            epochs,
            row["loss"],
            row["val_dice"],
            row["seconds"],
        )
        with io.atomic_path(latest) as tmp:
            state = {"model": net.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch}
            state.update(scaler=scaler.state_dict(), history=history, fingerprint=fingerprint)
            torch.save(state, tmp)
    final_dice = scan_dice(net, plan, val_pairs, device) if preset.segments else math.nan
    log.info("validation scans: median Dice %.4f", final_dice)
    return _finish(
        net, plan, preset, settings, seed, history, train_cases, val_cases, out_dir, final_dice
    )


def _make_batch(
    chosen: list[LoadedPair], patch: np.ndarray, rng: np.random.Generator, fg: float, aug, device
) -> dict[str, torch.Tensor]:
    drawn = [sample_patch(p, patch, rng, fg) for p in chosen]
    samples = [aug(sample) for sample, _ in drawn]
    arrays = collate([{k: np.asarray(v) for k, v in s.items()} for s in samples])
    layout = memory_layout(device)
    batch = {k: torch.from_numpy(v).to(device, memory_format=layout) for k, v in arrays.items()}
    for key in ("base_seg", "follow_seg"):
        batch[key] = (batch[key] > 0.5).float()
    for i, key in enumerate(("base_labelled", "follow_labelled")):
        batch[key] = torch.tensor(
            [float(p.labelled[i]) for p in chosen], dtype=torch.float32, device=device
        )
    for key in ("response", "time", "event"):
        batch[key] = torch.tensor(
            [getattr(p.case, key) for p in chosen], dtype=torch.float32, device=device
        )
    # The outcome heads learn only from tumour-centred windows, the view they get at inference.
    outcome_rows = [
        p.case.carries_outcome and centred for p, (_, centred) in zip(chosen, drawn, strict=True)
    ]
    batch["carries_outcome"] = torch.tensor(outcome_rows, dtype=torch.float32, device=device)
    return batch


def validation_patches(
    pairs: list[LoadedPair], patch: np.ndarray, seed: int
) -> list[dict[str, np.ndarray]]:
    """Fixed validation patches, as nnU-Net's online evaluation: per validation pair one patch
    centred on the tumour and one drawn anywhere (seeded, drawn once, so epochs compare)."""
    rng = np.random.default_rng([seed, 99])
    return [
        {**sample_patch(p, patch, rng, fg)[0], "labelled": np.asarray(p.labelled, np.float32)}
        for p in pairs
        for fg in (1.0, 0.0)
    ]


@torch.no_grad()
def validation_dice(
    net: LongitudinalNet, patches: list[dict[str, np.ndarray]], device: torch.device
) -> float:
    """Pseudo-Dice over the fixed validation patches, both timepoints: 2TP / (2TP + FP + FN)
    summed over all patches (NaN without validation pairs). Cheap enough for every epoch; the
    sliding-window Dice of whole validation scans is computed once, after training."""
    if not patches:
        return math.nan
    net.eval()
    tp = fp_fn = 0.0
    for sample in patches:
        x = {k: torch.from_numpy(v[None]).to(device) for k, v in sample.items()}
        out = net(x["base"], x["follow"], outcome=False, reconstruct=False)
        pairs = ((out.seg[0][0], x["base_seg"]), (out.seg[1][0], x["follow_seg"]))
        for (logits, truth), labelled in zip(pairs, sample["labelled"], strict=True):
            if not labelled:  # no drawn mask: nothing to score against
                continue
            pred, ref = logits > 0, truth > 0.5
            tp += float((pred & ref).sum())
            fp_fn += float((pred ^ ref).sum())
    net.train()
    return 2 * tp / (2 * tp + fp_fn) if tp + fp_fn else 1.0


def scan_dice(net: LongitudinalNet, plan: TopologyPlan, pairs: list[LoadedPair], device) -> float:
    """Median Dice of whole validation scans (sliding windows, both timepoints)."""
    if not pairs:
        return math.nan
    net.eval()
    scores = []
    for pair in pairs:
        pred = predict_pair(net, plan, pair, device, outcome=False)
        probs = (pred.base_prob, pred.follow_prob)
        masks = (pair.base_mask, pair.follow_mask)
        scores += [
            dice(prob >= 0.5, mask)
            for prob, mask, labelled in zip(probs, masks, pair.labelled, strict=True)
            if labelled
        ]
    if not scores:
        return math.nan
    return float(np.nanmedian(scores)) if not np.isnan(scores).all() else math.nan


def _finish(
    net, plan, preset, settings, seed, history, train_cases, val_cases, out_dir, final_dice
) -> dict[str, Any]:
    with io.atomic_path(out_dir / "checkpoint_final.pt") as tmp:
        torch.save({"model": net.state_dict()}, tmp)
    meta = {
        "topology": plan.to_json(),
        "preset": {"name": preset.name, "heads": list(preset.heads), "fusion": preset.fusion,
                   "outcome_scales": preset.outcome_scales, "loss_weights": preset.loss_weights},
        "settings": settings,
        "seed": seed,
        "train_patients": sorted({c.patient_id for c in train_cases}),
        "validation_patients": sorted({c.patient_id for c in val_cases}),
        "validation_scan_dice": None if math.isnan(final_dice) else round(final_dice, 4),
        "torch": torch.__version__,
    }  # fmt: skip
    io.write_json(meta, out_dir / "plan.json")
    io.write_table(pd.DataFrame(history), out_dir / "training_log.tsv")
    return meta
