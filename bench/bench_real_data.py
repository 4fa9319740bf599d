"""The workflow on real CT scans: the two lung cases that pyradiomics ships in its source
distribution (real patients' CT with a drawn tumour label, 512 x 512 x 48-61 voxels).

Real longitudinal pairs with a known transform do not ship in any package, so each patient's
follow-up is its real baseline seen through a known rigid motion (a few degrees, a few mm) with
fresh scanner noise: registration is scored against that motion (TRE), and the follow-up mask
of LUNG2 is left out of the sheet so the network (trained on the drawn masks) predicts it and is
scored against the moved true label. What this checks: real image sizes, spacings and textures
through every stage up to the feature table. Outcomes are not real, so no model is fitted.

Usage (the data: ``pip download --no-deps --no-binary pyradiomics-bhklab
pyradiomics-bhklab==3.1.4 -d /tmp/sdist``)::

    .venv/bin/python bench/bench_real_data.py --sdist /tmp/sdist/pyradiomics_bhklab-3.1.4.tar.gz

writes ``bench/results/real_data.json`` (and keeps the run under ``--workdir``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk
import yaml

from deltarad import io
from deltarad.qc import dice

REPO = Path(__file__).resolve().parents[1]
CASES = ("lung1", "lung2")
UNLABELLED = "LUNG2"  # its follow-up mask is left out of the sheet (predicted)
NOISE_HU = 15.0


def extract(sdist: Path, out: Path) -> dict[str, tuple[Path, Path]]:
    """The lung cases' image and label files from the source distribution."""
    wanted = {f"{c}_{k}.nrrd" for c in CASES for k in ("image", "label")}
    with tarfile.open(sdist) as tar:
        members = [m for m in tar.getmembers() if Path(m.name).name in wanted]
        tar.extractall(out, members=members, filter="data")
    found = {Path(m.name).name: out / m.name for m in members}
    return {c: (found[f"{c}_image.nrrd"], found[f"{c}_label.nrrd"]) for c in CASES}


def known_motion(image: sitk.Image, seed: int) -> sitk.Euler3DTransform:
    """A rigid motion about the image centre: up to 2 degrees per axis, up to 5 mm per axis."""
    rng = np.random.default_rng(seed)
    centre = image.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in image.GetSize()])
    angles = np.radians(rng.uniform(-2, 2, 3))
    return sitk.Euler3DTransform(centre, *angles, tuple(rng.uniform(-5, 5, 3)))


def make_study(cases: dict[str, tuple[Path, Path]], root: Path) -> dict[str, dict]:
    """Sheets of a two-patient, two-timepoint study; returns each patient's true motion."""
    rows, clinical, truth = [], [], {}
    for i, (case, (image_path, label_path)) in enumerate(sorted(cases.items())):
        pid = case.upper()
        image = sitk.ReadImage(str(image_path))
        label = sitk.ReadImage(str(label_path), sitk.sitkUInt8)
        label.CopyInformation(image)
        motion = known_motion(image, seed=i)
        # follow-up(y) = baseline(G^-1(y)): the tissue at baseline point x is seen at G(x).
        inverse = motion.GetInverse()
        follow = sitk.Resample(image, image, inverse, sitk.sitkBSpline, -1024.0, sitk.sitkFloat32)
        noise = np.random.default_rng(100 + i).normal(0, NOISE_HU, follow.GetSize()[::-1])
        arr = np.rint(sitk.GetArrayFromImage(follow) + noise).clip(-1024, 3071)
        follow_img = sitk.GetImageFromArray(arr.astype(np.int16))
        follow_img.CopyInformation(image)
        follow_label = sitk.Resample(label, image, inverse, sitk.sitkNearestNeighbor, 0)
        files = {
            "baseline": (image, label),
            "followup": (follow_img, follow_label),
        }
        for tp, (img, lab) in files.items():
            io.write_image(img, root / f"images/{pid}/{tp}.nii.gz")
            io.write_image(lab, root / f"masks/{pid}/{tp}.nii.gz")
            drawn = not (tp == "followup" and pid == UNLABELLED)
            rows.append(
                {
                    "patient_id": pid, "center": "PYR", "timepoint": tp,
                    "days": 0 if tp == "baseline" else 90, "modality": "CT",
                    "image": f"images/{pid}/{tp}.nii.gz",
                    "mask": f"masks/{pid}/{tp}.nii.gz" if drawn else "",
                }
            )  # fmt: skip
        # Outcomes are required columns; these are not real (no model is fitted on them).
        clinical.append({"patient_id": pid, "response": "NA", "time": 12.0, "event": 0})
        truth[pid] = {
            "angles_deg": [
                round(math.degrees(a), 3)
                for a in (motion.GetAngleX(), motion.GetAngleY(), motion.GetAngleZ())
            ],
            "translation_mm": list(motion.GetTranslation()),
            "centre_mm": list(motion.GetCenter()),
            "size": list(image.GetSize()),
            "spacing_mm": [round(s, 4) for s in image.GetSpacing()],
        }
        sitk.WriteTransform(motion, str(root / f"{pid}_truth.tfm"))
    io.write_table(pd.DataFrame(rows), root / "samples.tsv")
    io.write_table(pd.DataFrame(clinical), root / "clinical.tsv")
    return truth


def study_config(root: Path, results: Path) -> dict:
    return {
        "cohort": {
            "source": "sheets",
            "samples": str(root / "samples.tsv"),
            "clinical": str(root / "clinical.tsv"),
        },
        "study": {"centers": ["PYR"], "external_centers": []},
        "results": str(results),
        # Rigid + affine: the known motion is rigid (the B-spline stage at this size is the
        # registration issue's subject).
        "registration": {"stages": ["rigid", "affine"]},
        "segmentation": {"validation_fraction": 0.0, "training": {"epochs": 30}},
    }


def tre(results: Path, root: Path, pid: str) -> dict[str, float]:
    """Distance between where our registration and the known motion send baseline body points."""
    from deltarad.body import body_mask

    fixed = io.read_image(results / f"preprocessed/{pid}/baseline.nii.gz")
    ours = sitk.ReadTransform(str(results / f"registered/{pid}/followup.tfm"))
    true = sitk.ReadTransform(str(root / f"{pid}_truth.tfm"))
    body = sitk.GetArrayFromImage(body_mask(fixed, "CT")) > 0
    idx = np.argwhere(body)[:: max(1, int(body.sum() // 20000))]
    points = [fixed.TransformIndexToPhysicalPoint([int(i) for i in p[::-1]]) for p in idx]
    err = np.array(
        [
            np.linalg.norm(np.subtract(ours.TransformPoint(p), true.TransformPoint(p)))
            for p in points
        ]
    )
    return {
        "mean_mm": round(float(err.mean()), 3),
        "p95_mm": round(float(np.percentile(err, 95)), 3),
    }


def predicted_dice(results: Path, root: Path, pid: str) -> float:
    """Dice of the predicted follow-up mask (baseline grid) against the true follow-up label
    brought into the baseline grid through the known motion."""
    pred = io.read_image(results / f"segmentation/rpnet/{pid}/followup.nii.gz")
    true = sitk.ReadTransform(str(root / f"{pid}_truth.tfm"))
    label = io.read_image(root / f"masks/{pid}/followup.nii.gz")
    ref = sitk.Resample(label, pred, true, sitk.sitkNearestNeighbor, 0)
    return round(float(dice(sitk.GetArrayFromImage(pred) > 0, sitk.GetArrayFromImage(ref) > 0)), 4)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sdist", type=Path, required=True)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/deltarad-real-data"))
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--out", type=Path, default=REPO / "bench/results/real_data.json")
    ns = ap.parse_args()
    root, results = ns.workdir / "study", ns.workdir / "results"
    root.mkdir(parents=True, exist_ok=True)
    truth = make_study(extract(ns.sdist, ns.workdir / "sdist"), root)
    config = ns.workdir / "study.yaml"
    config.write_text(yaml.safe_dump(study_config(root, results)))
    targets = [
        str(results / t)
        for t in ("features/features.parquet", "tables/registration_qc.tsv",
                  "tables/segmentation_qc.tsv")
    ]  # fmt: skip
    start = time.perf_counter()
    run = subprocess.run(
        [str(Path(sys.executable).with_name("snakemake")), *targets, "--snakefile",
         str(REPO / "Snakefile"), "--directory", str(ns.workdir), "--cores", str(ns.cores),
         "--configfile", str(REPO / "config/config.yaml"), str(config)],
        capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": "0"},
    )  # fmt: skip
    seconds = time.perf_counter() - start
    if run.returncode:
        print(run.stdout[-3000:], run.stderr[-3000:], file=sys.stderr)
        return run.returncode
    table = pd.read_parquet(results / "features/features.parquet").set_index("patient_id")
    reg = io.read_tsv(results / "tables/registration_qc.tsv").set_index("patient_id")
    seg = io.read_tsv(results / "tables/segmentation_qc.tsv")
    bench = {}
    for rule_file in sorted((results / "benchmarks").rglob("*.tsv")):
        row = io.read_tsv(rule_file).iloc[0]
        key = str(rule_file.relative_to(results / "benchmarks"))
        bench[key] = {"s": float(row["s"]), "max_rss_mb": float(row["max_rss"])}
    report = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "data": f"{ns.sdist.name}: data/lung1, data/lung2 (real CT, drawn tumour labels)",
        "truth": truth,
        "wall_s": round(seconds, 1),
        "preprocessed_size": {
            pid: list(io.read_image(results / f"preprocessed/{pid}/baseline.nii.gz").GetSize())
            for pid in truth
        },
        "registration": {
            pid: {
                "tre_vs_known_motion": tre(results, root, pid),
                "mask_dice": None
                if math.isnan(float(reg.loc[pid, "mask_dice"]))
                else float(reg.loc[pid, "mask_dice"]),
                "seconds": float(reg.loc[pid, "seconds"]),
            }
            for pid in truth
        },  # fmt: skip
        "segmentation_qc": seg.to_dict("records"),
        "predicted_followup_dice_vs_truth": {UNLABELLED: predicted_dice(results, root, UNLABELLED)},
        "features": {
            "columns": int(table.shape[1]),
            "mask_source": {
                pid: {
                    tp: table.loc[pid, f"{tp}__tumor__qc__mask"] for tp in ("baseline", "followup")
                }
                for pid in truth
            },
            "tumour_volume_mm3": {
                pid: {
                    tp: float(table.loc[pid, f"{tp}__tumor__pyrad__original_shape_MeshVolume"])
                    for tp in ("baseline", "followup")
                }
                for pid in truth
            },
        },
        "job_benchmarks": bench,
    }
    ns.out.parent.mkdir(parents=True, exist_ok=True)
    ns.out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(json.dumps({k: report[k] for k in ("wall_s", "registration")}, indent=2, default=str))
    print(f"-> {ns.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
