"""Deep features: the trained network's encoder activations pooled inside the tumour and each ring.

Each timepoint's image (on the baseline grid) goes through the Siamese encoder alone, so
baseline and follow-up features come from identical weights and their difference is meaningful.
At each chosen encoder level, a region's mask is averaged onto the level's coarser grid (the
share of each coarse voxel inside the region); a channel's feature is the mean activation
weighted by that share (and, optionally, the maximum over coarse voxels at least half inside).
Columns: ``{timepoint}__{region}__deep__l{level}_f{channel:03d}_{stat}``; deltas are added with
the handcrafted ones when the table is merged.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from deltarad import io
from deltarad.features.delta import SEP
from deltarad.features.handcrafted import read_scan
from deltarad.features.regions import build_regions
from deltarad.runlog import UserError

SOURCE = "deep"
log = logging.getLogger(__name__)


def pool_regions(
    activations: Sequence[torch.Tensor],
    regions: Mapping[str, np.ndarray],
    levels: Sequence[int],
    stats: Sequence[str] = ("mean",),
) -> dict[str, dict[str, float]]:
    """Pool activations (per level: (channels, z, y, x)) inside each full-resolution region mask."""
    out: dict[str, dict[str, float]] = {}
    for name, region in regions.items():
        mask = torch.from_numpy(region.astype(np.float32))[None, None]
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


def patient_deep_features(
    patient_id: str,
    model_folder: str | Path,
    scans: Mapping[str, tuple[str | Path, str | Path]],
    rings_mm: Sequence[tuple[float, float]],
    body_threshold: float | None,
    levels: Sequence[int] | None,
    stats: Sequence[str] = ("mean",),
    device: str = "cpu",
) -> pd.DataFrame:
    """One row of deep features for a patient: every timepoint x region x level x channel."""
    from deltarad.segment.infer import inference_layout, load_model, resolve_device
    from deltarad.segment.plan import normalize

    dev = resolve_device(device)
    net, plan, _ = load_model(Path(model_folder), dev)
    n_levels = len(plan.features)
    chosen = list(levels) if levels else list(range(1, n_levels))
    bad = [lv for lv in chosen if not 0 <= lv < n_levels]
    if bad:
        raise UserError(
            f"features.deep.levels: {bad} outside the network's levels 0..{n_levels - 1}"
        )
    row: dict[str, Any] = {"patient_id": patient_id}
    for timepoint, (image_path, mask_path) in scans.items():
        image, mask = read_scan(image_path, mask_path, f"patient {patient_id}, {timepoint}")
        regions = {
            n: sitk.GetArrayFromImage(r) > 0
            for n, r in build_regions(image, mask, rings_mm, body_threshold).items()
        }
        array = normalize(sitk.GetArrayFromImage(image), plan)
        target = np.ceil(np.asarray(array.shape) / plan.divisor) * plan.divisor
        pads = [(0, int(t) - s) for s, t in zip(array.shape, target, strict=True)]
        padded = np.pad(array, pads, constant_values=float(array.min()))
        padded_regions = {n: np.pad(r, pads) for n, r in regions.items()}
        x = torch.from_numpy(padded)[None, None].to(dev, memory_format=inference_layout(dev))
        with torch.no_grad():
            acts = [a[0].cpu() for a in net.encode(x)]
        pooled = pool_regions(acts, padded_regions, chosen, stats)
        for region, feats in pooled.items():
            for name, value in feats.items():
                row[SEP.join([timepoint, region, SOURCE, name])] = value
    return pd.DataFrame([row])


def write_patient_deep(
    patient_id: str,
    model_folder: str | Path,
    scans: Mapping[str, tuple[str | Path, str | Path]],
    settings: Mapping[str, Any],
    modality: str | None,
    out_table: str | Path,
    device: str = "cpu",
) -> Path:
    """The per-patient deep-feature partial file (merged into features.parquet)."""
    from deltarad.features.regions import parse_rings

    threshold = (settings.get("body_threshold") or {}).get(modality or "", None)
    deep = settings["deep"]
    table = patient_deep_features(
        patient_id,
        model_folder,
        scans,
        parse_rings(settings["rings_mm"]),
        threshold,
        deep.get("levels"),
        deep.get("stats", ["mean"]),
        device,
    )
    log.info("%s: %d deep features", patient_id, table.shape[1] - 1)
    return io.write_table(table, out_table)
