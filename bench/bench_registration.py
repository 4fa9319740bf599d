"""Benchmark: our registration vs itk-elastix's default rigid+affine+B-spline, side by side.

Run by hand (needs the optional `itk-elastix`, ~1.6 GB, not part of the pinned environment;
installing it beside the environment keeps the pinned numpy):

    .venv/bin/pip install --target /tmp/elx itk-elastix==0.25.4 && rm -rf /tmp/elx/numpy*
    PYTHONPATH=/tmp/elx .venv/bin/python bench/bench_registration.py --patients 8 \
        [--cohort results/cohort]

Both engines register the same preprocessed pairs of the default synthetic cohort (generated
into a temporary folder unless --cohort is given), one after the other in one process, each
on all cores. TRE is measured against the true transform on the same points
(baseline body voxels more than 10 mm from the tumour, ~4 mm lattice). Results, with the
machine, go to bench/results/registration.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from deltarad import io
from deltarad.config import load_config
from deltarad.preprocess import PreprocessSettings, preprocess_scan
from deltarad.register import (
    RegistrationSettings,
    displacement_field,
    field_distances,
    register_images,
    tre_region,
)
from deltarad.synth import SynthConfig, load_true_transform, simulate_patient, write_sheets

REPO = Path(__file__).resolve().parents[1]


def elastix_field(fixed_path: Path, moving_path: Path) -> tuple[sitk.Image, float]:
    """Elastix default rigid -> affine -> B-spline (in a worker process, on all cores)."""
    fixed_path, moving_path = fixed_path.resolve(), moving_path.resolve()
    out = fixed_path.with_name("elastix_field.nii.gz")
    worker = Path(__file__).with_name("elastix_worker.py")
    done = subprocess.run(
        [sys.executable, str(worker), str(fixed_path), str(moving_path), str(out)],
        # transformix also drops a deformationField.nii into the working directory: keep it
        # beside the pair, not in the repository.
        cwd=out.parent,
        capture_output=True,
        text=True,
        check=True,
    )
    return sitk.Cast(sitk.ReadImage(str(out)), sitk.sitkVectorFloat64), float(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--patients", type=int, default=8)
    parser.add_argument("--cohort", help="existing synthetic cohort folder (default: generate)")
    ns = parser.parse_args()
    config = load_config(REPO / "config/config.yaml")
    work = Path(tempfile.mkdtemp(prefix="bench_registration_"))
    cfg = SynthConfig.from_config(config["synthetic"])
    patients = cfg.patients()[:: max(1, len(cfg.patients()) // ns.patients)][: ns.patients]
    cohort = Path(ns.cohort) if ns.cohort else work / "cohort"
    if not ns.cohort:
        write_sheets([simulate_patient(cfg, p, cohort) for p in patients], cohort)
    pre = PreprocessSettings.from_config(config["preprocess"])
    reg = RegistrationSettings.from_config(config["registration"])
    threads = os.cpu_count() or 1  # elastix runs on all cores; ours gets the same
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    rows = []
    for p in patients:
        pid = p.patient_id
        paths = {}
        for tp in ("baseline", "followup"):
            paths[tp] = work / f"pre/{pid}/{tp}.nii.gz"
            preprocess_scan(
                cohort / f"images/{pid}/{tp}.nii.gz",
                cohort / f"masks/{pid}/{tp}.nii.gz",
                cfg.contrast,
                pre,
                paths[tp],
                work / f"pre/{pid}/{tp}_mask.nii.gz",
                work / f"pre/{pid}/{tp}.json",
            )
        fixed, moving = io.read_image(paths["baseline"]), io.read_image(paths["followup"])
        region = tre_region(
            fixed, cfg.contrast, io.read_image(work / f"pre/{pid}/baseline_mask.nii.gz")
        )
        truth = displacement_field(load_true_transform(cohort, pid), fixed)
        start = time.perf_counter()
        result = register_images(fixed, moving, reg, cfg.contrast)
        ours_s = time.perf_counter() - start
        ours = field_distances(displacement_field(result.transform, fixed), truth, region)
        elx_field, elx_s = elastix_field(paths["baseline"], paths["followup"])
        elx = field_distances(elx_field, truth, region)
        rows.append(
            {
                "patient_id": pid,
                "ours_seconds": round(ours_s, 2),
                "elastix_seconds": round(elx_s, 2),
                "ours_tre_mm": round(float(ours.mean()), 3),
                "elastix_tre_mm": round(float(elx.mean()), 3),
            }
        )
        print(rows[-1], flush=True)
    summary = {
        "time_ratio_ours_over_elastix": round(
            sum(r["ours_seconds"] for r in rows) / sum(r["elastix_seconds"] for r in rows), 3
        ),
        "ours_median_tre_mm": round(float(np.median([r["ours_tre_mm"] for r in rows])), 3),
        "elastix_median_tre_mm": round(float(np.median([r["elastix_tre_mm"] for r in rows])), 3),
    }
    report = {
        "benchmark": "registration: DeltaRad (SimpleITK) vs itk-elastix default 3 stages",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "threads": threads,
        "date": time.strftime("%Y-%m-%d"),
        "summary": summary,
        "pairs": rows,
    }
    out = REPO / "bench/results/registration.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
