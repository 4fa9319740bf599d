"""Benchmark: our nnU-Net `predict` vs nnU-Net's own `nnUNetv2_predict_from_modelfolder`.

Run by hand:

    .venv/bin/python bench/bench_nnunet_predict.py --test 4 --size 48

Trains a tiny nnU-Net model (quality is irrelevant here: both sides load the same weights) on
synthetic noisy spheres, then predicts the same unlabelled scans with both, with and without
mirroring (test-time augmentation), one after the other on all cores (`--n-proc` workers for the
CLI's preprocessing and export; ours runs in one process). Reports wall time per case and
whether the label maps agree voxel for voxel. Results, with the machine and its load, go to
bench/results/nnunet_predict.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from deltarad import io
from deltarad.segment import nnunet

REPO = Path(__file__).resolve().parents[1]


def sphere(rng: np.random.Generator, size: int) -> tuple[sitk.Image, np.ndarray]:
    zz, yy, xx = np.mgrid[:size, :size, :size]
    centre, radius = rng.uniform(size / 3, 2 * size / 3, 3), rng.uniform(size / 8, size / 4)
    inside = ((zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2) <= radius**2
    image = sitk.GetImageFromArray((100.0 * inside + rng.normal(0, 15, inside.shape)).astype("f4"))
    image.SetSpacing((1.0, 1.0, 1.5))
    return image, inside


def make_cases(folder: Path, n_patients: int, n_test: int, size: int) -> list:
    rng = np.random.default_rng(0)
    cases = []
    for i in range(2 * n_patients + n_test):
        pid, tp = f"P{i // 2:03d}", ("baseline", "followup")[i % 2]
        image, inside = sphere(rng, size)
        img = io.write_image(image, folder / f"{pid}_{tp}.nii.gz")
        mask = None
        if i < 2 * n_patients:
            label = sitk.GetImageFromArray(inside.astype(np.uint8))
            label.CopyInformation(image)
            mask = io.write_image(label, folder / f"{pid}_{tp}_mask.nii.gz")
        cases.append(nnunet.NnunetCase(nnunet.case_id(pid, tp), pid, img, mask))
    return cases


def run_cli(
    model: Path, inputs: Path, out: Path, mirroring: bool, n_proc: int, device: str = "cpu"
) -> float:
    """Wall time of one `nnUNetv2_predict_from_modelfolder` command over the folder `inputs`."""
    cli = Path(sys.executable).with_name("nnUNetv2_predict_from_modelfolder")
    cmd = [str(cli), "-i", str(inputs), "-o", str(out), "-m", str(model), "-f", "0",
           "-device", device, "-npp", str(n_proc), "-nps", str(n_proc),
           "--disable_progress_bar"] + ([] if mirroring else ["--disable_tta"])  # fmt: skip
    env = dict(os.environ, nnUNet_def_n_proc=str(n_proc))
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env=env)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--patients", type=int, default=6, help="training patients (2 scans)")
    parser.add_argument("--test", type=int, default=4, help="unlabelled scans to predict")
    parser.add_argument("--size", type=int, default=48)
    parser.add_argument("--n-proc", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cases = make_cases(tmp / "data", args.patients, args.test, args.size)
        root = tmp / "nn"
        raw = nnunet.export_dataset(cases, root, 900, "Bench", "MR")
        nnunet.write_patient_splits(cases, 2, 0, root / "preprocessed" / raw.name)
        nnunet.plan_and_preprocess(root, 900, n_proc=args.n_proc, fingerprint_samples=10**6)
        model = nnunet.train(root, 900, "3d_fullres", 0, epochs=1, iterations_per_epoch=5,
                             val_iterations=1, device="cpu", n_proc=args.n_proc,
                             validate=False)  # fmt: skip
        targets = [(c.case_id, c.image) for c in cases if c.mask is None]
        rows = []
        for mirroring in (False, True):
            ours_dir, cli_dir = tmp / f"ours{mirroring}", tmp / f"cli{mirroring}"
            load = os.getloadavg()[0]
            start = time.perf_counter()
            nnunet.predict(model, targets, ours_dir, "cpu", use_mirroring=mirroring,
                           n_proc=args.n_proc)  # fmt: skip
            ours = time.perf_counter() - start
            cli = run_cli(model, raw / "imagesTs", cli_dir, mirroring, args.n_proc)
            same = all(
                np.array_equal(
                    sitk.GetArrayFromImage(io.read_image(ours_dir / f"{cid}.nii.gz")),
                    sitk.GetArrayFromImage(io.read_image(cli_dir / f"{cid}.nii.gz")) > 0,
                )
                for cid, _ in targets
            )
            rows.append({
                "mirroring": mirroring, "cases": len(targets), "size": args.size,
                "ours_s_per_case": round(ours / len(targets), 2),
                "cli_s_per_case": round(cli / len(targets), 2),
                "ratio_ours_over_cli": round(ours / cli, 2), "identical_masks": same,
                "load_avg_1min_before": round(load, 1),
            })  # fmt: skip
            shutil.rmtree(ours_dir)
            print(json.dumps(rows[-1]))
    result = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "device": "cpu"},
        "note": "ours: one process, sequential; CLI: nnUNetv2_predict_from_modelfolder with "
        "-npp/-nps workers, including its start-up (imports, model load)",
        "rows": rows,
    }
    io.write_json(result, REPO / "bench/results/nnunet_predict.json")


if __name__ == "__main__":
    main()
