"""Benchmark: how far two runs of segmentation training and inference differ, CPU or GPU.

Run by hand:

    .venv/bin/python bench/bench_determinism.py --device cpu          # this machine
    python3 bench/bench_determinism.py --device cuda --patients 10    # a GPU machine

Same data, same seed, same code: the network (`--preset`, default rpnet: segmentation, response
and survival heads) is trained `--repeats` times with `segmentation.training.deterministic` false
(the default) and true, each training in a fresh process, as a pipeline job is. Each trained
network then predicts the held-out pairs in another fresh process with default kernels, as the
pipeline's predict jobs do, twice in a row (inference-only repeatability). Compared with the first
run of the same setting:

- weights: max |difference| and the number of tensors not bit-identical;
- training log: max |difference| of the per-epoch losses;
- held-out pairs: max |difference| of the foreground probabilities, voxels whose 0.5-thresholded
  mask flips, the Dice between the two runs' masks (and each run's Dice against the truth, for
  scale), and the response probability and risk score differences.

Training settings are the defaults of config/config.yaml (mixed precision on CUDA included), with
`--epochs` x `--iterations` batches. Data: synthetic pairs of noisy spheres whose follow-up shrinks
(`--size`³ voxels of 1.5 mm); response = shrinkage below 0.7, survival times from the volume.
Results, with the machine, torch, CUDA and cuDNN versions, go to
bench/results/determinism_<device>.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
import yaml

from deltarad import io
from deltarad.qc import dice
from deltarad.segment.data import PairCase, load_pair
from deltarad.segment.plan import preset_for

REPO = Path(__file__).resolve().parents[1]
SETTINGS = {"default": False, "deterministic": True}
INTERNAL = ("child", "data", "run", "deterministic", "out")


def write_pair(folder: Path, pid: str, rng: np.random.Generator, size: int) -> dict:
    """One patient: baseline sphere and its shrunken follow-up, with masks and outcomes."""
    zz, yy, xx = np.mgrid[:size, :size, :size].astype(np.float32)
    centre = rng.uniform(size / 3, 2 * size / 3, 3)
    radius = rng.uniform(size / 10, size / 6)
    shrink = rng.uniform(0.4, 1.0)
    distance = np.sqrt((zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2)
    files = {}
    for tp, r in (("baseline", radius), ("followup", radius * shrink)):
        inside = distance <= r
        voxels = 100.0 + 80.0 * inside + rng.normal(0, 20, inside.shape)
        image = sitk.GetImageFromArray(voxels.astype(np.float32))
        image.SetSpacing((1.5, 1.5, 1.5))
        mask = sitk.GetImageFromArray(inside.astype(np.uint8))
        mask.CopyInformation(image)
        files[f"{tp}_image"] = str(io.write_image(image, folder / f"{pid}_{tp}.nii.gz"))
        files[f"{tp}_mask"] = str(io.write_image(mask, folder / f"{pid}_{tp}_mask.nii.gz"))
    months = float(rng.exponential(24.0 * math.exp(-2.0 * (radius / size))))
    return {
        "patient_id": pid,
        **files,
        "response": float(shrink < 0.7),
        "time": round(months + 1.0, 2),
        "event": float(rng.uniform() < 0.7),
    }


def cases(records: list[dict]) -> list[PairCase]:
    return [
        PairCase(r["patient_id"], "followup", Path(r["baseline_image"]),
                 Path(r["followup_image"]), Path(r["baseline_mask"]), Path(r["followup_mask"]),
                 r["response"], r["time"], r["event"])
        for r in records
    ]  # fmt: skip


def settings_for(args: argparse.Namespace, deterministic: bool) -> dict:
    # The YAML itself, not deltarad.config.load_config: the GPU machine has no jsonschema.
    seg = yaml.safe_load((REPO / "config/config.yaml").read_text())["segmentation"]
    seg["training"].update(
        epochs=args.epochs, iterations_per_epoch=args.iterations, deterministic=deterministic
    )
    return seg


def child_train(args: argparse.Namespace, data: dict, out: Path) -> None:
    """One training run (fresh process): writes the network folder and the wall time."""
    from deltarad.segment.train import train_network

    seg = settings_for(args, args.deterministic)
    preset = preset_for(args.preset, seg)
    start = time.perf_counter()
    train_network(cases(data["train"]), cases(data["val"]), preset, "MR", seg, out,
                  args.device, args.seed, threads=args.threads)  # fmt: skip
    io.write_json({"train_s": round(time.perf_counter() - start, 2)}, out / "timing.json")


def child_predict(args: argparse.Namespace, data: dict, model: Path, out: Path) -> None:
    """Predict the test pairs twice (fresh process, default kernels, as a predict job)."""
    from deltarad.segment.infer import load_model, predict_pair, resolve_device

    device = resolve_device(args.device)
    torch.set_num_threads(args.threads)
    net, plan, _ = load_model(model, device)
    arrays, outcomes = {}, []
    for case in cases(data["test"]):
        pair = load_pair(case, plan, need_masks=False)
        for attempt in (0, 1):
            pred = predict_pair(net, plan, pair, device)
            arrays[f"{case.patient_id}_{attempt}_base"] = pred.base_prob.astype(np.float32)
            arrays[f"{case.patient_id}_{attempt}_follow"] = pred.follow_prob.astype(np.float32)
            outcomes.append([case.patient_id, attempt, pred.response_probability, pred.risk_score])
    np.savez_compressed(out / "probs.npz", **arrays)
    io.write_json({"outcomes": outcomes}, out / "outcomes.json")


def probabilities(run: Path) -> dict[str, np.ndarray]:
    """The run's predicted probabilities, decompressed once (an NpzFile re-reads per access)."""
    with np.load(run / "probs.npz") as npz:
        return {k: npz[k] for k in npz.files}


def max_abs(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))))


def compare(first: Path, other: Path, truth: dict[str, np.ndarray]) -> dict:
    """How run `other` differs from run `first` (same setting)."""
    w1 = torch.load(first / "checkpoint_final.pt", map_location="cpu", weights_only=True)["model"]
    w2 = torch.load(other / "checkpoint_final.pt", map_location="cpu", weights_only=True)["model"]
    weight_diff = [max_abs(w1[k].float(), w2[k].float()) for k in w1 if w1[k].numel()]
    scale = max(float(w.float().abs().max()) for w in w1.values() if w.numel())
    log1 = io.read_tsv(first / "training_log.tsv")
    log2 = io.read_tsv(other / "training_log.tsv")
    loss_cols = [c for c in log1.columns if c not in ("epoch", "lr", "seconds")]
    p1, p2 = probabilities(first), probabilities(other)
    o1 = json.loads((first / "outcomes.json").read_text())["outcomes"]
    o2 = json.loads((other / "outcomes.json").read_text())["outcomes"]
    keys = [k for k in p1 if "_0_" in k]
    flips = {k: int(((p1[k] >= 0.5) != (p2[k] >= 0.5)).sum()) for k in keys}
    return {
        "weights_bit_identical": all(torch.equal(w1[k], w2[k]) for k in w1),
        "weights_max_abs_diff": max(weight_diff),
        "weights_max_abs_diff_relative_to_largest_weight": max(weight_diff) / scale,
        "tensors_differing": sum(d > 0 for d in weight_diff),
        "tensors": len(weight_diff),
        "training_loss_max_abs_diff": max_abs(log1[loss_cols].values, log2[loss_cols].values),
        "probability_max_abs_diff": max(max_abs(p1[k], p2[k]) for k in keys),
        "mask_voxels_flipped": flips,
        "mask_voxels_flipped_share": sum(flips.values()) / sum(p1[k].size for k in keys),
        # NaN where both runs' masks are empty (qc.dice): nothing to disagree on.
        "mask_dice_between_runs_min": float(
            np.nanmin([dice(p1[k] >= 0.5, p2[k] >= 0.5) for k in keys])
        ),
        "dice_vs_truth": {
            k: [round(dice(p[k] >= 0.5, truth[k]), 4) for p in (p1, p2)] for k in keys
        },
        "response_probability_max_abs_diff": max_abs([r[2] for r in o1], [r[2] for r in o2]),
        "risk_score_max_abs_diff": max_abs([r[3] for r in o1], [r[3] for r in o2]),
    }


def inference_repeat(run: Path) -> dict:
    """Two predictions with the same weights in one process."""
    probs = probabilities(run)
    pairs = [(k, k.replace("_0_", "_1_")) for k in probs if "_0_" in k]
    outcomes = json.loads((run / "outcomes.json").read_text())["outcomes"]
    first = [r for r in outcomes if r[1] == 0]
    second = [r for r in outcomes if r[1] == 1]
    return {
        "probability_max_abs_diff": max(max_abs(probs[a], probs[b]) for a, b in pairs),
        "mask_voxels_flipped": sum(
            int(((probs[a] >= 0.5) != (probs[b] >= 0.5)).sum()) for a, b in pairs
        ),
        "response_probability_max_abs_diff": max_abs([r[2] for r in first], [r[2] for r in second]),
        "risk_score_max_abs_diff": max_abs([r[3] for r in first], [r[3] for r in second]),
    }


def machine(device: str) -> dict:
    info = {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": device,
        "load_average": os.getloadavg(),
    }
    if device == "cuda":
        info.update(
            gpu=torch.cuda.get_device_name(0),
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
        )
    return info


def run_child(args: argparse.Namespace, *extra: str) -> None:
    cmd = [sys.executable, __file__, "--device", args.device, "--preset", args.preset,
           "--epochs", str(args.epochs), "--iterations", str(args.iterations),
           "--seed", str(args.seed), "--threads", str(args.threads), *extra]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(extra)} failed:\n{proc.stderr[-3000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--preset", default="rpnet")
    parser.add_argument("--patients", type=int, default=6, help="training patients")
    parser.add_argument("--test", type=int, default=3, help="held-out pairs to predict")
    parser.add_argument("--size", type=int, default=48, help="voxels per side")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=20261125)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=None)
    # Internal: one child step.
    parser.add_argument("--child", choices=["train", "predict"], help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--run", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--deterministic", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.child:
        data = json.loads(args.data.read_text())
        if args.child == "train":
            child_train(args, data, args.run)
        else:
            child_predict(args, data, args.run, args.run)
        return

    out = args.out or REPO / f"bench/results/determinism_{args.device}.json"
    with tempfile.TemporaryDirectory(prefix="deltarad-determinism-") as tmp:
        root = Path(tmp)
        rng = np.random.default_rng(args.seed)
        n_val = max(1, args.patients // 4)
        records = [
            write_pair(root / "data", f"P{i:03d}", rng, args.size)
            for i in range(args.patients + n_val + args.test)
        ]
        data = {
            "train": records[: args.patients],
            "val": records[args.patients : args.patients + n_val],
            "test": records[args.patients + n_val :],
        }
        (root / "data.json").write_text(json.dumps(data))
        truth = {}
        for r in data["test"]:
            for tp, key in (("baseline", "base"), ("followup", "follow")):
                mask = sitk.GetArrayFromImage(io.read_image(r[f"{tp}_mask"])) > 0
                truth[f"{r['patient_id']}_0_{key}"] = mask
        report: dict = {
            "benchmark": "run-to-run differences of segmentation training and inference",
            "date": time.strftime("%Y-%m-%d %H:%M"),
            "machine": machine(args.device),
            "args": {k: v for k, v in vars(args).items() if k not in INTERNAL},
            "mixed_precision": args.device == "cuda"
            and settings_for(args, False)["training"]["mixed_precision"],
            "settings": {},
        }
        for name, deterministic in SETTINGS.items():
            runs, entry = [], {}
            try:
                for k in range(args.repeats):
                    run = root / f"{name}_{k}"
                    where = ["--data", str(root / "data.json"), "--run", str(run)]
                    run_child(args, "--child", "train", *where,
                              "--deterministic", str(int(deterministic)))  # fmt: skip
                    run_child(args, "--child", "predict", *where)
                    runs.append(run)
            except RuntimeError as err:
                entry["error"] = str(err)
            entry["train_s"] = [
                json.loads((r / "timing.json").read_text())["train_s"] for r in runs
            ]
            entry["inference_repeat"] = [inference_repeat(r) for r in runs]
            entry["versus_first_run"] = [compare(runs[0], r, truth) for r in runs[1:]]
            report["settings"][name] = entry
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_name(f".{out.name}.tmp")
    tmp_out.write_text(json.dumps(report, indent=2) + "\n")
    tmp_out.replace(out)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
