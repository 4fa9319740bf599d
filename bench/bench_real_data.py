"""The workflow on real scans: the CT (lung1, lung2: 512 x 512 x 48/61) and MR (brain1, brain2)
cases with tumour labels that pyradiomics' source distribution ships in its `data/` folder.

No public package ships a longitudinal pair, so each real scan becomes a baseline and a
follow-up is made from it by a known rigid motion (a few degrees and mm, around the image
centre) plus scanner noise, with the label moved the same way. The workflow then runs from the
user's side (`cohort.source: sheets`, the default config otherwise, masks given, no segmentation
network: two patients per study cannot train one) up to features and registration QC, and this
script scores what the pipeline cannot know: the target registration error against the known
motion (baseline body voxels, ~5 mm lattice) and the Dice of the propagated follow-up mask with
the baseline mask on the preprocessed grid.

Get the data once (nothing here downloads anything):

    pip download --no-deps --no-binary :all: pyradiomics-bhklab==3.1.4 -d /tmp/pyrad
    tar -xzf /tmp/pyrad/pyradiomics_bhklab-3.1.4.tar.gz -C /tmp/pyrad

then

    .venv/bin/python bench/bench_real_data.py --data /tmp/pyrad/pyradiomics_bhklab-3.1.4/data

Results: bench/results/real_data.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk
import yaml

from deltarad import io
from deltarad.body import body_mask
from deltarad.qc import dice

REPO = Path(__file__).resolve().parents[1]

STUDIES = {
    "CT": {"modality": "CT", "cases": ["lung1", "lung2"], "noise": 15.0},
    "MR": {"modality": "MR", "cases": ["brain1", "brain2"], "noise": 0.02},
}
# The known motion of each follow-up: rotation (degrees about x, y, z) and translation (mm).
MOTIONS = [((2.0, -3.0, 4.0), (6.0, -4.0, 3.0)), ((-3.0, 2.0, -2.5), (-5.0, 3.5, -2.0))]


def known_motion(image: sitk.Image, rotation_deg, translation_mm) -> sitk.Euler3DTransform:
    """G: baseline point -> follow-up point, a rigid motion about the image centre."""
    centre = image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in image.GetSize()])
    motion = sitk.Euler3DTransform()
    motion.SetCenter(centre)
    motion.SetRotation(*np.radians(rotation_deg))
    motion.SetTranslation(translation_mm)
    return motion


def make_followup(image, label, motion, noise, modality, rng):
    """The follow-up: the baseline anatomy moved by `motion` (resampled at G^-1(y)), with
    Gaussian noise of sd `noise` (HU for CT, a fraction of the body mean for MR)."""
    inverse = motion.GetInverse()
    low = float(sitk.GetArrayViewFromImage(image).min())
    moved = sitk.Resample(image, image, inverse, sitk.sitkBSpline, low, sitk.sitkFloat32)
    array = sitk.GetArrayFromImage(moved)
    sd = noise if modality == "CT" else noise * float(array[array > array.mean()].mean())
    array = array + rng.normal(0.0, sd, array.shape)
    follow = sitk.GetImageFromArray(np.rint(array).astype(np.int16))
    follow.CopyInformation(image)
    mask = sitk.Resample(label, label, inverse, sitk.sitkNearestNeighbor, 0, label.GetPixelID())
    return follow, mask


def build_study(name, spec, data: Path, root: Path, seed: int) -> dict:
    """Sheets and images of one study under `root`; returns the known motions."""
    rng = np.random.default_rng(seed)
    rows, clinical, motions = [], [], {}
    for i, case in enumerate(spec["cases"]):
        pid = case.upper()
        image = sitk.ReadImage(str(data / f"{case}_image.nrrd"))
        label = sitk.ReadImage(str(data / f"{case}_label.nrrd"))
        rotation, translation = MOTIONS[i % len(MOTIONS)]
        motion = known_motion(image, rotation, translation)
        follow, follow_mask = make_followup(
            image, label, motion, spec["noise"], spec["modality"], rng
        )
        folder = root / "images" / pid
        folder.mkdir(parents=True, exist_ok=True)
        for stem, img in (
            ("baseline", image),
            ("baseline_mask", label),
            ("followup", follow),
            ("followup_mask", follow_mask),
        ):
            sitk.WriteImage(img, str(folder / f"{stem}.nii.gz"))
        for tp, days in (("baseline", 0), ("followup", 90)):
            rows.append(
                {
                    "patient_id": pid,
                    "center": f"S{i + 1}",
                    "timepoint": tp,
                    "days": days,
                    "modality": spec["modality"],
                    "image": f"images/{pid}/{tp}.nii.gz",
                    "mask": f"images/{pid}/{tp}_mask.nii.gz",
                }
            )
        clinical.append({"patient_id": pid, "response": i % 2, "time": 12 + i, "event": i % 2})
        motions[pid] = motion
    io.write_table(pd.DataFrame(rows), root / "samples.tsv")
    io.write_table(pd.DataFrame(clinical), root / "clinical.tsv")
    config = {
        "results": str(root / "results"),
        "cohort": {
            "source": "sheets",
            "samples": str(root / "samples.tsv"),
            "clinical": str(root / "clinical.tsv"),
        },
        "study": {
            "centers": [f"S{i + 1}" for i in range(len(spec["cases"]))],
            "external_centers": [],
        },
        "segmentation": {"methods": [], "masks": "given"},
        "features": {"deep": {"method": None}},
    }
    (root / "study.yaml").write_text(yaml.safe_dump(config))
    return motions


def tre_mm(estimated: sitk.Transform, truth: sitk.Transform, fixed: sitk.Image, modality) -> dict:
    """|T(x) - G(x)| over the baseline's body voxels on a ~5 mm lattice."""
    body = sitk.GetArrayFromImage(body_mask(fixed, modality)) > 0
    step = np.maximum(1, np.round(5.0 / np.asarray(fixed.GetSpacing())[::-1])).astype(int)
    zz, yy, xx = np.nonzero(body[:: step[0], :: step[1], :: step[2]])
    points = [
        fixed.TransformIndexToPhysicalPoint((int(x * step[2]), int(y * step[1]), int(z * step[0])))
        for z, y, x in zip(zz, yy, xx, strict=True)
    ]
    errors = np.array(
        [
            np.linalg.norm(np.subtract(estimated.TransformPoint(p), truth.TransformPoint(p)))
            for p in points
        ]
    )
    return {
        "tre_mean_mm": round(float(errors.mean()), 3),
        "tre_p95_mm": round(float(np.percentile(errors, 95)), 3),
        "points": int(errors.size),
    }


def run_study(name, spec, data: Path, workdir: Path, seed: int, cores: int) -> dict:
    root = workdir / name
    motions = build_study(name, spec, data, root, seed)
    results = root / "results"
    targets = [
        str(results / "features/features.parquet"),
        str(results / "tables/registration_qc.tsv"),
    ]
    cmd = [
        str(Path(sys.executable).with_name("snakemake")),
        *targets,
        "--snakefile",
        str(REPO / "Snakefile"),
        "--directory",
        str(root),
        "--cores",
        str(cores),
        "--configfile",
        str(REPO / "config/config.yaml"),
        str(root / "study.yaml"),
    ]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ})
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{name}: workflow failed:\n{done.stderr[-4000:]}")
    features = pd.read_parquet(results / "features/features.parquet")
    qc = io.read_tsv(results / "tables/registration_qc.tsv").set_index("patient_id")
    patients = []
    for pid, motion in motions.items():
        fixed = io.read_image(results / f"preprocessed/{pid}/baseline.nii.gz")
        estimated = sitk.ReadTransform(str(results / f"registered/{pid}/followup.tfm"))
        bench = pd.read_csv(results / f"benchmarks/register/{pid}_followup.tsv", sep="\t")
        propagated = io.read_image(results / f"registered/{pid}/followup_mask.nii.gz")
        base_mask = io.read_image(results / f"preprocessed/{pid}/baseline_mask.nii.gz")
        raw = sitk.ReadImage(str(data / f"{pid.lower()}_image.nrrd"))
        row = features.set_index("patient_id").loc[pid]
        values = row[[c for c in row.index if "__qc__" not in c]].astype(float)
        patients.append(
            {
                "patient_id": pid,
                "raw_size": list(raw.GetSize()),
                "raw_spacing_mm": [round(s, 4) for s in raw.GetSpacing()],
                "preprocessed_size": list(fixed.GetSize()),
                "motion": {
                    "rotation_deg": MOTIONS[len(patients) % len(MOTIONS)][0],
                    "translation_mm": MOTIONS[len(patients) % len(MOTIONS)][1],
                },
                **tre_mm(estimated, motion, fixed, spec["modality"]),
                "registration_seconds": round(float(bench["s"].iloc[0]), 1),
                "registration_max_rss_mb": round(float(bench["max_rss"].iloc[0]), 0),
                "registration_qc_passed": str(qc.loc[pid, "passed"]),
                "jacobian_min": float(qc.loc[pid, "jacobian_min"]),
                "followup_mask_dice_vs_baseline": round(dice(propagated, base_mask), 4),
                "feature_values": int(values.size),
                "feature_values_na": int(values.isna().sum()),
            }
        )
    return {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "cores": cores,
        "wall_seconds": round(wall, 1),
        "patients": patients,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="pyradiomics' data/ folder")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/deltarad-real-data"))
    parser.add_argument("--out", type=Path, default=REPO / "bench/results/real_data.json")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--seed", type=int, default=20261203)
    parser.add_argument("--studies", nargs="+", choices=sorted(STUDIES), default=sorted(STUDIES))
    args = parser.parse_args()
    missing = [
        f"{case}_{kind}.nrrd"
        for name in args.studies
        for case in STUDIES[name]["cases"]
        for kind in ("image", "label")
        if not (args.data / f"{case}_{kind}.nrrd").is_file()
    ]
    if missing:
        raise SystemExit(f"--data {args.data}: missing {missing} (see this script's docstring)")
    studies = {
        name: run_study(name, STUDIES[name], args.data, args.workdir, args.seed, args.cores)
        for name in args.studies
    }
    # Studies run separately (--studies CT, then --studies MR) are gathered in one file.
    earlier = json.loads(args.out.read_text())["studies"] if args.out.is_file() else {}
    out = {
        "benchmark": "the workflow (default config, masks given) on pyradiomics' real CT and MR "
        "cases with a known rigid follow-up motion",
        "data": "pyradiomics-bhklab 3.1.4 source distribution, data/ (BSD-3-Clause)",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "studies": {**earlier, **studies},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
