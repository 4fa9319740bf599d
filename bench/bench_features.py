"""Benchmark: our feature stage vs the pyradiomics batch CLI on the same rows, run by hand.

    .venv/bin/python bench/bench_features.py [--patients 6] [--jobs 2] [--repeats 2]

Rows: patients x 2 timepoints x (tumour + 3 rings), synthetic 96^3 CT at 1 mm, parameter file
config/radiomics/ct.yaml (original + LoG sigma 1, 2, 3 + wavelet, all classes). Both sides get
the same parameter file and `--jobs` workers; values are compared to 1e-6 relative.
Writes bench/results/features.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from deltarad import io
from deltarad.features import handcrafted as hc
from deltarad.features.regions import build_regions
from deltarad.synth import SynthConfig, simulate_cohort

REPO = Path(__file__).resolve().parents[1]
PARAMS = REPO / "config/radiomics/ct.yaml"
RINGS = [(0.0, 3.0), (3.0, 6.0), (6.0, 10.0)]
BODY = -500.0


def _cohort(root: Path, patients: int) -> list[tuple[str, str, Path, Path]]:
    cfg = SynthConfig.from_config(
        {
            "seed": 7,
            "patients_per_center": patients,
            "shape": [96, 96, 96],
            "spacing": [1.0, 1.0, 1.0],
            "centers": [{"name": "B1"}],
        }
    )
    simulate_cohort(cfg, root)
    return [
        (
            p.patient_id,
            tp,
            root / f"images/{p.patient_id}/{tp}.nii.gz",
            root / f"masks/{p.patient_id}/{tp}.nii.gz",
        )
        for p in cfg.patients()
        for tp in ("baseline", "followup")
    ]


def _ours_patient(scans: list[tuple[str, str, Path, Path]]) -> dict:
    extractor = hc.make_extractor(PARAMS)
    out = {}
    for pid, tp, image, mask in scans:
        feats, errors = hc.extract_scan(image, mask, extractor, RINGS, BODY, 1)
        assert not errors, errors
        for region, values in feats.items():
            out[(pid, tp, region)] = values
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--patients", type=int, default=6)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2, help="runs of each side, order alternated")
    ns = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_features_"))
    scans = _cohort(work / "cohort", ns.patients)
    # The batch CLI needs one mask file per region: write our regions out (not timed).
    rows = []
    for pid, tp, image, mask in scans:
        img, msk = hc.read_scan(image, mask, f"{pid} {tp}")
        for region, rmask in build_regions(img, msk, RINGS, BODY).items():
            path = io.write_image(rmask, work / f"regions/{pid}/{tp}_{region}.nii.gz")
            rows.append({"Image": str(image), "Mask": str(path), "key": f"{pid}|{tp}|{region}"})
    batch = work / "batch.csv"
    with open(batch, "w", newline="") as fh:
        writer = csv.DictWriter(fh, ["Image", "Mask", "key"])
        writer.writeheader()
        writer.writerows(rows)

    per_patient: dict[str, list] = {}
    for scan in scans:
        per_patient.setdefault(scan[0], []).append(scan)
    out_csv = work / "pyradiomics.csv"

    def run_ours() -> float:
        start = time.perf_counter()
        with ProcessPoolExecutor(ns.jobs) as pool:
            for part in pool.map(_ours_patient, per_patient.values()):
                ours.update(part)
        return time.perf_counter() - start

    def run_cli() -> float:
        out_csv.unlink(missing_ok=True)  # the CLI appends
        cli = Path(sys.executable).with_name("pyradiomics")
        cmd = [str(cli), str(batch), "-o", str(out_csv), "-f", "csv", "-j", str(ns.jobs)]
        start = time.perf_counter()
        subprocess.run([*cmd, "-p", str(PARAMS)], check=True, capture_output=True)
        return time.perf_counter() - start

    # Alternate the order (ours, CLI, CLI, ours, ...) so a change in machine load during the
    # run does not favour one side; report every time and the medians.
    ours: dict = {}
    times: dict[str, list[float]] = {"ours": [], "cli": []}
    load_start = os.getloadavg()[0]
    for i in range(ns.repeats):
        order = (("ours", run_ours), ("cli", run_cli))
        for name, fn in order if i % 2 == 0 else order[::-1]:
            times[name].append(round(fn(), 2))
    load_end = os.getloadavg()[0]
    ours_s, cli_s = float(np.median(times["ours"])), float(np.median(times["cli"]))

    worst, compared = 0.0, 0
    with open(out_csv) as fh:
        for rec in csv.DictReader(fh):
            pid, tp, region = rec["key"].split("|")
            mine = ours[(pid, tp, region)]
            for name, value in mine.items():
                ref = float(rec[name])
                rel = abs(value - ref) / max(abs(ref), 1e-12)
                worst = max(worst, 0.0 if (np.isnan(ref) and np.isnan(value)) else rel)
                compared += 1
    result = {
        "rows": len(rows),
        "patients": ns.patients,
        "jobs": ns.jobs,
        "features_per_row": len(next(iter(ours.values()))),
        "values_compared": compared,
        "max_relative_difference": worst,
        "identical_to_1e-6": bool(worst <= 1e-6),
        "ours_wall_s": round(ours_s, 2),
        "pyradiomics_batch_wall_s": round(cli_s, 2),
        "ours_runs_s": times["ours"],
        "pyradiomics_batch_runs_s": times["cli"],
        "load_average_1min_start_end": [round(load_start, 2), round(load_end, 2)],
        "ratio_ours_over_pyradiomics": round(ours_s / cli_s, 3),
        "params": str(PARAMS.relative_to(REPO)),
        "image": "synthetic CT 96^3 at 1 mm",
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
    }
    path = io.write_json(result, REPO / "bench/results/features.json")
    print(json.dumps(result, indent=2), f"\n-> {path}")


if __name__ == "__main__":
    main()
