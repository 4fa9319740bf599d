"""Benchmark: our segmentation code vs nnU-Net v2 on the same trained model, plans and data.

Run by hand (a few minutes on 2 loaded CPU cores):

    .venv/bin/python bench/bench_segmentation.py --patients 6 --test 3 --size 32 --test-size 48 \
        --epochs 3 --iterations 8

One run, side by side:

(a) inference per case, same nnU-Net model (fold 0), same cases, no mirroring on either side,
    tile overlap 0.5 (nnU-Net `tile_step_size` 0.5), Gaussian weighting:
    - ours: `deltarad.segment.infer.sliding_window` driving the network nnU-Net trained (built
      with nnU-Net's `get_network_from_plans`, weights from `fold_0/checkpoint_final.pth`), on
      the image normalised by our `normalize` with the plan converted by
      `topology_from_nnunet_plans`; logits averaged, then argmax (as nnU-Net does);
    - nnU-Net in process: `nnUNetPredictor.predict_single_npy_array` (its preprocessing,
      sliding window and export), model loaded once, untimed; no process start-up;
    - nnU-Net CLI: one `nnUNetv2_predict_from_modelfolder --disable_tta` command over the cases
      (start-up, model load, workers, file I/O), divided by the number of cases.
    Mask agreement (Dice) between all three and against the synthetic truth, and for the first
    case the reasons of any difference (normalisation, tile positions, Gaussian, logits).
(b) training throughput on the same nnU-Net plans and preprocessed-equivalent data: nnU-Net's
    trainer (`deltarad.segment.nnunet.train`, timed inside its training loop, i.e. without
    validation and start-up; its log's epoch times are reported too) vs our `train_network`
    (seg_only preset, topology from the same plans, no validation; `training_log.tsv` seconds).
    Our network takes (baseline, follow-up) pairs: a batch of B/2 pairs is B volumes; the ratio
    is per volume. The first epoch of each (warm-up, worker start) is left out.

Threads: `--torch-threads` (default: all cores) applies to every in-process side, nnU-Net's trainer
included (set at each epoch start, since `nnunet.train` sets `n_proc`); the CLI keeps its own
(all cores). On an oversubscribed machine (load >> cores) 2 OpenMP threads made one training step
3-4x slower than 1 thread, so compare sides only at equal thread counts.

Data: synthetic noisy spheres from bench_nnunet_predict.py (training scans `--size`³, test scans
`--test-size`³ so the sliding window has several tiles). Results, with the machine and its load,
go to bench/results/segmentation.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk
import torch
import yaml
from bench_nnunet_predict import REPO, make_cases, run_cli

from deltarad import io
from deltarad.segment import infer, nnunet
from deltarad.segment.data import PairCase
from deltarad.segment.device import memory_layout
from deltarad.segment.infer import _gaussian, _windows, sliding_window
from deltarad.segment.plan import Preset, normalize, topology_from_nnunet_plans
from deltarad.segment.train import train_network

DATASET_ID, CONFIGURATION = 902, "3d_fullres"


def dice(a: np.ndarray, b: np.ndarray) -> float:
    denom = int(a.sum()) + int(b.sum())
    return round(2 * int((a & b).sum()) / denom, 4) if denom else 1.0


def machine(device: torch.device) -> dict:
    info = {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def load(tag: str, loads: dict) -> None:
    loads[tag] = [round(v, 2) for v in os.getloadavg()]


# ---------------------------------------------------------------- training (b)


def time_nnunet_training(root: Path, args, device: torch.device) -> tuple[Path, dict]:
    """Train nnU-Net; time each epoch's training loop from inside the trainer."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    spans: list[list[float]] = []
    threads: list[int] = []
    start, end = nnUNetTrainer.on_train_epoch_start, nnUNetTrainer.on_train_epoch_end

    def timed_start(self):
        start(self)
        torch.set_num_threads(args.torch_threads)  # nnunet.train set n_proc; same as ours
        threads.append(torch.get_num_threads())
        spans.append([time.perf_counter()])

    def timed_end(self, outputs):
        spans[-1].append(time.perf_counter())
        end(self, outputs)

    nnUNetTrainer.on_train_epoch_start, nnUNetTrainer.on_train_epoch_end = timed_start, timed_end
    try:
        t0 = time.perf_counter()
        model = nnunet.train(
            root, DATASET_ID, CONFIGURATION, 0, epochs=args.epochs,
            iterations_per_epoch=args.iterations, val_iterations=1, device=device.type,
            seed=args.seed, n_proc=args.n_proc, validate=False,
        )  # fmt: skip
        total = time.perf_counter() - t0
    finally:
        nnUNetTrainer.on_train_epoch_start, nnUNetTrainer.on_train_epoch_end = start, end
    ckpt = torch.load(model / "fold_0/checkpoint_final.pth", map_location="cpu", weights_only=False)
    log = ckpt["logging"]
    stamps = zip(log["epoch_start_timestamps"], log["epoch_end_timestamps"], strict=True)
    epoch_log = [e - s for s, e in stamps]
    train_s = [e - s for s, e in spans]
    timed = train_s[1:] or train_s
    plans = json.loads((model / "plans.json").read_text())
    batch = plans["configurations"][CONFIGURATION]["batch_size"]
    it_s = args.iterations * len(timed) / sum(timed)
    return model, {
        "batch_volumes": batch,
        "torch_threads_in_train_loop": threads,
        "train_loop_s_per_epoch": [round(s, 2) for s in train_s],
        "log_epoch_s_incl_validation": [round(s, 2) for s in epoch_log],
        "iterations_per_s": round(it_s, 3),
        "volumes_per_s": round(it_s * batch, 3),
        "total_s_incl_startup": round(total, 1),
        "final_train_loss": round(float(log["train_losses"][-1]), 4),
    }


def time_our_training(model: Path, cases: list, out: Path, args, device) -> dict:
    """Train our seg_only network on nnU-Net's plan (converted) with the same data."""
    plans = json.loads((model / "plans.json").read_text())
    plan = topology_from_nnunet_plans(plans, CONFIGURATION)
    batch_nn = plans["configurations"][CONFIGURATION]["batch_size"]
    settings = copy.deepcopy(yaml.safe_load((REPO / "config/config.yaml").read_text()))
    settings = settings["segmentation"]
    pairs_per_batch = max(1, math.ceil(batch_nn / 2))
    settings["training"].update(
        epochs=args.epochs, iterations_per_epoch=args.iterations, batch_size=pairs_per_batch
    )
    # nnU-Net supervises every decoder level but the deepest; do the same.
    settings["network"]["deep_supervision"] = len(plan.features) - 1
    by_patient: dict[str, dict] = {}
    for c in cases:
        by_patient.setdefault(c.patient_id, {})[c.case_id.split("__")[1]] = c
    pairs = [
        PairCase(pid, "followup", d["baseline"].image, d["followup"].image,
                 d["baseline"].mask, d["followup"].mask)
        for pid, d in sorted(by_patient.items())
    ]  # fmt: skip
    preset = Preset("seg_only", ("segmentation",), loss_weights={"segmentation": 1.0})
    t0 = time.perf_counter()
    train_network(pairs, [], preset, "MR", settings, out, device.type, args.seed,
                  threads=args.torch_threads, plan=plan)  # fmt: skip
    total = time.perf_counter() - t0
    history = pd.read_csv(out / "training_log.tsv", sep="\t")
    seconds = history["seconds"].tolist()
    timed = seconds[1:] or seconds
    it_s = args.iterations * len(timed) / sum(timed)
    return {
        "batch_pairs": pairs_per_batch,
        "batch_volumes": 2 * pairs_per_batch,
        "train_loop_s_per_epoch": [round(s, 2) for s in seconds],
        "iterations_per_s": round(it_s, 3),
        "volumes_per_s": round(it_s * 2 * pairs_per_batch, 3),
        "total_s_incl_startup": round(total, 1),
        "final_train_loss": round(float(history["loss"].iloc[-1]), 4),
        "deep_supervision_outputs": len(plan.features) - 1,
        "topology": plan.to_json(),
    }


def interleaved_steps(model: Path, reps: int, device: torch.device) -> dict:
    """One SGD step (forward, loss, backward, update) of each network on the same B volumes,
    round robin, so that the machine's load drifts alike for both: the network and loss cost
    without the data pipelines. nnU-Net: its network (contiguous, as its trainer) with its
    deep-supervised Dice+CE; ours: LongitudinalNet on B/2 pairs, in train.py's memory format
    (`memory_layout`). The same plain SGD on both sides: this compares the networks; train.py's
    fused optimizer is in the trainers' figures."""
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    from deltarad.segment.losses import deep_supervision_loss
    from deltarad.segment.network import LongitudinalNet

    plans = json.loads((model / "plans.json").read_text())
    config = plans["configurations"][CONFIGURATION]
    arch, batch = config["architecture"], config["batch_size"]
    plan = topology_from_nnunet_plans(plans, CONFIGURATION)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2 * math.ceil(batch / 2), 1, *config["patch_size"], generator=gen).to(device)
    y = (torch.rand(x.shape, generator=gen) > 0.9).float().to(device)
    theirs = get_network_from_plans(
        arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"], 1, 2,
        allow_init=True, deep_supervision=True,
    ).to(device)  # fmt: skip
    n_out = len(theirs.decoder.stages)
    weights = np.array([1 / 2**i for i in range(n_out)])
    weights[-1] = 0
    loss_nn = DeepSupervisionWrapper(
        DC_and_CE_loss({"batch_dice": False, "smooth": 1e-5, "do_bg": False, "ddp": False}, {},
                       weight_ce=1, weight_dice=1, dice_class=MemoryEfficientSoftDiceLoss),
        weights / weights.sum(),
    )  # fmt: skip
    targets = [y[:batch]] + [
        torch.nn.functional.max_pool3d(y[:batch], f, f)
        for f in np.cumprod(np.asarray(arch["arch_kwargs"]["strides"][1:n_out]), axis=0).tolist()
    ]
    ours = LongitudinalNet(plan, Preset("seg_only", ("segmentation",)), len(plan.features) - 1)
    layout = memory_layout(device)
    ours = ours.to(device, memory_format=layout)
    xc, yc = x.contiguous(memory_format=layout), y.contiguous(memory_format=layout)
    half = x.shape[0] // 2
    opts = {
        name: torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.99, nesterov=True)
        for name, net in (("nnunet", theirs), ("ours", ours))
    }

    def step_nnunet() -> None:
        opts["nnunet"].zero_grad(set_to_none=True)
        loss_nn(theirs(x[:batch]), targets).backward()
        torch.nn.utils.clip_grad_norm_(theirs.parameters(), 12)
        opts["nnunet"].step()

    def step_ours() -> None:
        opts["ours"].zero_grad(set_to_none=True)
        out = ours(xc[:half], xc[half:], outcome=False)
        loss = 0.5 * (deep_supervision_loss(out.seg[0], yc[:half])
                      + deep_supervision_loss(out.seg[1], yc[half:]))  # fmt: skip
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ours.parameters(), 12)
        opts["ours"].step()

    times: dict[str, list[float]] = {"nnunet": [], "ours": []}
    step_nnunet(), step_ours()  # warm-up
    for _ in range(reps):
        for name, step in (("nnunet", step_nnunet), ("ours", step_ours)):
            t0 = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "reps": reps,
        "volumes_nnunet": batch,
        "volumes_ours": 2 * half,
        "step_s": {k: [round(t, 2) for t in v] for k, v in times.items()},
        "median_step_s": {k: round(v, 3) for k, v in med.items()},
        "ratio_ours_over_nnunet_volumes_per_s": round(
            (2 * half / med["ours"]) / (batch / med["nnunet"]), 3
        ),
    }


# ---------------------------------------------------------------- inference (a)


def nnunet_network(model: Path, device: torch.device):
    """nnU-Net's network for the model folder, built by nnU-Net's helpers, fold-0 weights."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans_manager = PlansManager(json.loads((model / "plans.json").read_text()))
    config = plans_manager.get_configuration(CONFIGURATION)
    labels = plans_manager.get_label_manager(json.loads((model / "dataset.json").read_text()))
    net = get_network_from_plans(
        config.network_arch_class_name, config.network_arch_init_kwargs,
        config.network_arch_init_kwargs_req_import, 1, labels.num_segmentation_heads,
        allow_init=True, deep_supervision=False,
    )  # fmt: skip
    ckpt = torch.load(model / "fold_0/checkpoint_final.pth", map_location="cpu", weights_only=False)
    weights = {k.removeprefix("_orig_mod."): v for k, v in ckpt["network_weights"].items()}
    net.load_state_dict(weights)
    # As our load_model does (`memory_layout`: contiguous on CPU, channels-last on CUDA).
    net.to(device, memory_format=memory_layout(device)).eval()
    return net, plans_manager, config


def our_prediction(net, plan, tf: list[int], patch, image: np.ndarray, device, probs=False):
    """Our predictor on one (z, y, x) image: normalise, sliding window, argmax -> (mask, logits)."""
    x = normalize(image, plan).transpose(tf)[None]
    if probs:  # average softmax probabilities instead of logits (our predict_pair's way)
        out = sliding_window(lambda t: torch.softmax(net(t), 1), x, patch, device, 0.5)
    else:
        out = sliding_window(net, x, patch, device, 0.5)
    out = out.transpose([0, *[int(i) + 1 for i in np.argsort(tf)]])
    return out.argmax(0).astype(bool), out


def compare_inference(model: Path, tests: list, tmp: Path, args, device) -> dict:
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.inference.sliding_window_prediction import (
        compute_gaussian,
        compute_steps_for_sliding_window,
    )
    from nnunetv2.preprocessing.normalization import default_normalization_schemes as schemes

    plans = json.loads((model / "plans.json").read_text())
    plan = topology_from_nnunet_plans(plans, CONFIGURATION)
    t0 = time.perf_counter()
    net, plans_manager, config = nnunet_network(model, device)
    ours_load = time.perf_counter() - t0
    tf, patch = plans_manager.transpose_forward, np.asarray(config.patch_size)
    t0 = time.perf_counter()
    predictor = nnUNetPredictor(
        tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
        perform_everything_on_device=device.type == "cuda", device=device, verbose=False,
        allow_tqdm=False,
    )  # fmt: skip
    predictor.initialize_from_trained_model_folder(str(model), (0,), "checkpoint_final.pth")
    nn_load = time.perf_counter() - t0

    inputs = tmp / "cli_inputs"
    inputs.mkdir()
    rows, diagnostics, our_masks = [], {}, {}
    for i, case in enumerate(tests):
        shutil.copyfile(case.image, inputs / f"{case.case_id}_0000.nii.gz")
        data, props = SimpleITKIO().read_images([str(case.image)])
        truth = sitk.GetArrayFromImage(io.read_image(case.mask)) > 0
        spacing_ok = np.allclose(np.asarray(props["spacing"])[tf], config.spacing)
        t0 = time.perf_counter()
        ours, logits = our_prediction(net, plan, tf, patch, data[0], device)
        t_ours = time.perf_counter() - t0
        our_masks[case.case_id] = ours
        t0 = time.perf_counter()
        theirs = predictor.predict_single_npy_array(data.copy(), props, None, None, False) > 0
        t_nn = time.perf_counter() - t0
        rows.append({
            "case": case.case_id, "shape_zyx": list(data.shape[1:]),
            "ours_s": round(t_ours, 2), "nnunet_inprocess_s": round(t_nn, 2),
            "dice_ours_vs_nnunet": dice(ours, theirs),
            "voxels_differing": int((ours != theirs).sum()),
            "foreground_ours": int(ours.sum()), "foreground_nnunet": int(theirs.sum()),
            "dice_ours_vs_truth": dice(ours, truth), "dice_nnunet_vs_truth": dice(theirs, truth),
            "spacing_equals_plan_no_resampling": bool(spacing_ok),
        })  # fmt: skip
        if i == 0:  # why masks could differ: each ingredient compared on this case
            scheme = getattr(schemes, config.normalization_schemes[0])
            props0 = plans["foreground_intensity_properties_per_channel"]["0"]
            theirs_norm = scheme(use_mask_for_norm=False, intensityproperties=props0).run(
                data[0].copy()
            )
            x = normalize(data[0], plan).transpose(tf)
            nn_logits = predictor.predict_sliding_window_return_logits(
                torch.from_numpy(np.ascontiguousarray(x[None]))
            )
            nn_logits = np.asarray(nn_logits.float().cpu()).transpose(
                [0, *[int(j) + 1 for j in np.argsort(tf)]]
            )
            prob_mask, _ = our_prediction(net, plan, tf, patch, data[0], device, probs=True)
            g_nn = compute_gaussian(tuple(patch), 1 / 8, 10, torch.float32, torch.device("cpu"))
            real_gaussian = infer._gaussian
            infer._gaussian = lambda _patch, g=g_nn: (g / g.max()).to(torch.float32)
            try:  # our sliding window with nnU-Net's Gaussian (centred at p // 2, not (p - 1) / 2)
                nn_gauss_mask, nn_gauss_logits = our_prediction(
                    net, plan, tf, patch, data[0], device
                )
            finally:
                infer._gaussian = real_gaussian
            steps_ours = [sorted({w[a] for w in _windows(np.asarray(x.shape), patch, 0.5)})
                          for a in range(3)]  # fmt: skip
            norm_diff = np.abs(normalize(data[0], plan) - theirs_norm).max()
            diagnostics = {
                "case": case.case_id,
                "normalisation_max_abs_diff": float(norm_diff),
                "tile_starts_ours": steps_ours,
                "tile_starts_nnunet": compute_steps_for_sliding_window(x.shape, tuple(patch), 0.5),
                "gaussian_max_abs_diff_scaled_to_max_1": float(
                    (g_nn / g_nn.max() - _gaussian(patch)).abs().max()
                ),
                "logits_max_abs_diff_ours_vs_nnunet": float(np.abs(logits - nn_logits).max()),
                "dice_logit_argmax_vs_nnunet_logits_argmax": dice(ours, nn_logits.argmax(0) > 0),
                "dice_logit_average_vs_probability_average": dice(ours, prob_mask),
                "ours_with_nnunet_gaussian_dice_vs_nnunet": dice(nn_gauss_mask, theirs),
                "ours_with_nnunet_gaussian_voxels_differing": int((nn_gauss_mask != theirs).sum()),
                "ours_with_nnunet_gaussian_logits_max_abs_diff": float(
                    np.abs(nn_gauss_logits - nn_logits).max()
                ),
                "nnunet_accumulates_in": "float16 (its predicted_logits, n_predictions)",
            }  # fmt: skip
        print(json.dumps(rows[-1]))
    cli = run_cli(model, inputs, tmp / "cli_out", False, args.n_proc, device.type)
    for row, case in zip(rows, tests, strict=True):
        written = tmp / "cli_out" / f"{case.case_id}.nii.gz"
        cli_mask = sitk.GetArrayFromImage(io.read_image(written)) > 0
        truth = sitk.GetArrayFromImage(io.read_image(case.mask)) > 0
        row["dice_ours_vs_cli"] = dice(our_masks[case.case_id], cli_mask)
        row["dice_cli_vs_truth"] = dice(cli_mask, truth)
        row["foreground_cli"] = int(cli_mask.sum())
    n = len(tests)
    ours_pc = statistics.fmean(r["ours_s"] for r in rows)
    nn_pc = statistics.fmean(r["nnunet_inprocess_s"] for r in rows)
    return {
        "cases": n,
        "patch_size": patch.tolist(),
        "tiles_per_case": len(_windows(np.asarray(rows[0]["shape_zyx"])[tf], patch, 0.5)),
        "ours_model_load_s": round(ours_load, 2),
        "nnunet_predictor_init_s": round(nn_load, 2),
        "ours_s_per_case": round(ours_pc, 2),
        "nnunet_inprocess_s_per_case": round(nn_pc, 2),
        "nnunet_cli_total_s": round(cli, 2),
        "nnunet_cli_s_per_case": round(cli / n, 2),
        "ratio_ours_over_nnunet_inprocess": round(ours_pc / nn_pc, 3),
        "ratio_ours_over_nnunet_cli": round(ours_pc / (cli / n), 3),
        "rows": rows,
        "diagnostics_first_case": diagnostics,
    }


# ---------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--patients", type=int, default=6, help="training patients (2 scans)")
    parser.add_argument("--test", type=int, default=3, help="test scans to predict")
    parser.add_argument("--size", type=int, default=32, help="training scan edge (voxels)")
    parser.add_argument("--test-size", type=int, default=48, help="test scan edge (voxels)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs for both trainers")
    parser.add_argument("--iterations", type=int, default=8, help="iterations per epoch")
    parser.add_argument("--step-reps", type=int, default=10, help="interleaved SGD steps each")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--n-proc", type=int, default=os.cpu_count() or 2)
    parser.add_argument(
        "--torch-threads", type=int, default=os.cpu_count() or 2,
        help="torch intra-op threads for every in-process side (both trainers, our predictor, "
        "nnU-Net's in-process predictor); 1 is much faster on an oversubscribed machine",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO / "bench/results/segmentation.json")
    args = parser.parse_args()
    device = nnunet.resolve_device(args.device)
    torch.set_num_threads(args.torch_threads)
    loads: dict[str, list[float]] = {}
    load("start", loads)
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        cases = make_cases(tmp / "train", args.patients, 0, args.size)
        tests = [
            c._replace(case_id=f"T{c.case_id[1:]}", patient_id=f"T{c.patient_id[1:]}")
            for c in make_cases(tmp / "test", math.ceil(args.test / 2), 0, args.test_size)
        ][: args.test]
        root = tmp / "nn"
        raw = nnunet.export_dataset(cases, root, DATASET_ID, "SegBench", "MR")
        nnunet.write_patient_splits(cases, 2, args.seed, root / "preprocessed" / raw.name)
        nnunet.plan_and_preprocess(root, DATASET_ID, CONFIGURATION, args.n_proc,
                                   fingerprint_samples=10**6)  # fmt: skip
        load("before_nnunet_training", loads)
        model, nn_train = time_nnunet_training(root, args, device)
        load("before_our_training", loads)
        our_train = time_our_training(model, cases, tmp / "ours", args, device)
        load("before_interleaved_steps", loads)
        steps = interleaved_steps(model, args.step_reps, device)
        print(json.dumps(steps))
        load("before_inference", loads)
        inference = compare_inference(model, tests, tmp, args, device)
        plans = json.loads((model / "plans.json").read_text())
    load("end", loads)
    training = {
        "nnunet": nn_train,
        "ours": our_train,
        "ratio_ours_over_nnunet_volumes_per_s": round(
            our_train["volumes_per_s"] / nn_train["volumes_per_s"], 3
        ),
        "interleaved_network_steps": steps,
        "ratio_ours_over_nnunet_iterations_per_s": round(
            our_train["iterations_per_s"] / nn_train["iterations_per_s"], 3
        ),
    }
    result = {
        "machine": machine(device),
        "load_average_1_5_15": loads,
        "command_args": {k: str(v) for k, v in vars(args).items()},
        "nnunet_plan": {
            k: plans["configurations"][CONFIGURATION][k]
            for k in ("patch_size", "spacing", "batch_size")
        },  # fmt: skip
        "inference": inference,
        "training": training,
        "wall_s": round(time.perf_counter() - t_start, 1),
        "notes": [
            "No mirroring on any side; tile overlap 0.5; Gaussian weighting.",
            "ours: sliding_window over nnU-Net's network, logits averaged then argmax; "
            "nnU-Net in process: predict_single_npy_array (preprocessing + sliding window + "
            "export), model load excluded on both sides; CLI: whole command / cases.",
            "training: train-loop time per epoch, first epoch excluded; ours: batch of B/2 "
            "(baseline, follow-up) pairs = B volumes vs nnU-Net's batch of B volumes.",
            "nnU-Net augments in background worker processes (nnUNet_n_proc_DA = n_proc); ours "
            "augments inline with MONAI in the training process.",
        ],
    }
    io.write_json(result, args.out)
    inf = inference
    table = [
        ("inference s/case, vs in-process predictor", inf["ours_s_per_case"],
         inf["nnunet_inprocess_s_per_case"], inf["ratio_ours_over_nnunet_inprocess"]),
        ("inference s/case, vs nnUNetv2 CLI command", inf["ours_s_per_case"],
         inf["nnunet_cli_s_per_case"], inf["ratio_ours_over_nnunet_cli"]),
        ("training volumes/s", our_train["volumes_per_s"], nn_train["volumes_per_s"],
         training["ratio_ours_over_nnunet_volumes_per_s"]),
        ("training iterations/s (see batch sizes)", our_train["iterations_per_s"],
         nn_train["iterations_per_s"], training["ratio_ours_over_nnunet_iterations_per_s"]),
    ]  # fmt: skip
    print(f"\n{'measure':44s} {'ours':>9s} {'nnU-Net':>9s} {'ratio':>6s}")
    for name, ours, theirs, ratio in table:
        print(f"{name:44s} {ours:9.3f} {theirs:9.3f} {ratio:6.2f}")
    print("Dice ours vs nnU-Net per case:", [r["dice_ours_vs_nnunet"] for r in inf["rows"]])
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
