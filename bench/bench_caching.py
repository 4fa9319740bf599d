"""Benchmark: Snakemake caching and scaling of the workflow, run by hand.

    .venv/bin/python bench/bench_caching.py [--small 3] [--large 12] [--cores 2]
        [--default-workdir /work/main]

For the tiny cohort (config/test.yaml, two centres) with ``--small`` and ``--large`` patients
per centre (N and 4N patients), each in a fresh folder:

(a) the full run, then a no-op rerun of the finished run (and its dry run): wall time, and the
    no-op as a share of the full run (goal: <= 3 s and <= 2 %);
(b) one patient's baseline image touched (new mtime, same bytes), then changed (one voxel):
    which jobs Snakemake plans (from its dry run) and runs, against the goal "that patient's
    jobs plus the aggregates", and how many values of the other patients' feature rows change
    (apart: columns from their own scans only, reldelta columns, deep columns). Done for a
    patient of a training centre (the network trains on it: its retraining reruns every
    patient's prediction and deep features) and then for one of an external centre;
(c) wall time per job and rule (from Snakemake's metadata), peak memory per job where the rule
    has a ``benchmark:`` file, and the peak memory of the largest process of the whole run
    (/usr/bin/time); wall(4N)/wall(N) (goal: <= 4.2) and memory per job (goal: flat).

``--default-workdir`` adds, for a finished default run there, three no-op reruns and three dry
runs (Snakemake writes only its log and lock there). The full run's wall time is bounded below
by the sum of its jobs' wall times (Snakemake's metadata) over the cores, so the no-op's share
reported is an upper bound.
Writes bench/results/caching.json.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk
import yaml

from deltarad import io
from deltarad.config import load_config

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).with_name("snakemake")
CONFIGS = [REPO / "config/config.yaml", REPO / "config/test.yaml"]
JOB_HEADER = re.compile(r"^(?:local)?(?:rule|checkpoint) (\w+):$")
# Folder under results/benchmarks/ -> rule, where they differ.
BENCHMARK_RULES = {"features": "features_patient"}


def snakemake(workdir: Path, configs: list[Path], cores: int, *args: str) -> dict:
    """Run Snakemake under /usr/bin/time; wall seconds, peak RSS (MB), exit code, output."""
    cmd = [
        "/usr/bin/time", "-f", "%e %M",
        str(SNAKEMAKE), "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
        "--cores", str(cores), "--configfile", *map(str, configs), *args,
    ]  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ})
    wall = time.perf_counter() - start
    last = proc.stderr.strip().splitlines()[-1].split()
    return {
        "wall_s": round(wall, 2),
        "peak_rss_mb": round(int(last[1]) / 1024, 1),
        "exit_code": proc.returncode,
        "output": proc.stdout + proc.stderr,
    }


def planned_jobs(output: str) -> list[dict]:
    """Jobs of a dry run's output: rule and wildcards of each."""
    jobs: list[dict] = []
    for line in output.splitlines():
        header = JOB_HEADER.match(line)
        if header:
            jobs.append({"rule": header.group(1), "wildcards": {}})
        elif jobs and line.strip().startswith("wildcards:"):
            pairs = line.split(":", 1)[1].split(",")
            jobs[-1]["wildcards"] = dict(p.strip().split("=", 1) for p in pairs)
    return [j for j in jobs if j["rule"] != "all"]


def job_metadata(workdir: Path) -> pd.DataFrame:
    """One row per job of the last runs: rule, start, end, wall seconds (Snakemake metadata)."""
    rows = {}
    for path in (workdir / ".snakemake/metadata").iterdir():
        try:
            record = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if not record.get("starttime") or record.get("incomplete"):
            continue
        name = base64.urlsafe_b64decode(path.name.encode() + b"==").decode(errors="replace")
        # One record per output file; a job's outputs share its hash and end time.
        key = (record["rule"], record["job_hash"], record["endtime"])
        row = rows.setdefault(key, {"rule": key[0], "output": name, "start": record["starttime"]})
        row["start"] = min(row["start"], record["starttime"])
    df = pd.DataFrame([{**v, "end": k[2], "wall_s": k[2] - v["start"]} for k, v in rows.items()])
    return df.sort_values("start").reset_index(drop=True)


def benchmark_files(results: Path) -> pd.DataFrame:
    """Snakemake's per-job benchmark tables (rules with ``benchmark:``): wall and max RSS."""
    rows = []
    for path in sorted((results / "benchmarks").rglob("*.tsv")):
        table = pd.read_csv(path, sep="\t")
        rows.append(
            {
                "rule": path.parent.name,
                "job": path.stem,
                "wall_s": float(table["s"].iloc[0]),
                "max_rss_mb": float(table["max_rss"].iloc[0]),
                "cpu_s": float(table["cpu_time"].iloc[0]),
            }
        )
    return pd.DataFrame(rows)


def per_rule(jobs: pd.DataFrame, bench: pd.DataFrame) -> dict:
    out: dict = {}
    for rule, group in jobs.groupby("rule"):
        out[rule] = {
            "jobs": len(group),
            "mean_wall_s": round(group["wall_s"].mean(), 2),
            "max_wall_s": round(group["wall_s"].max(), 2),
        }
    if not bench.empty:
        for folder, group in bench.groupby("rule"):
            rule = BENCHMARK_RULES.get(folder, folder)
            if rule in out:
                out[rule]["mean_max_rss_mb"] = round(group["max_rss_mb"].mean(), 1)
                out[rule]["max_max_rss_mb"] = round(group["max_rss_mb"].max(), 1)
                out[rule]["mean_benchmark_wall_s"] = round(group["wall_s"].mean(), 2)
                # CPU seconds: unlike wall time, hardly changed by other users of the machine.
                out[rule]["mean_cpu_s"] = round(group["cpu_s"].mean(), 2)
    return out


def column_groups(columns: pd.Index) -> dict[str, list[str]]:
    """Feature columns by what they depend on besides the patient's own scans: deep columns on
    the network (trained on the training centres' patients), reldelta columns on the cohort
    median of the baseline value (its near-zero floor), the rest on nothing else."""
    deep = [c for c in columns if "__deep__" in c]
    reldelta = [c for c in columns if c.startswith("reldelta__") and c not in deep]
    own = [c for c in columns if c not in deep and c not in reldelta]
    return {"own_scans_only": own, "reldelta": reldelta, "deep": deep}


def changed_values(before: pd.DataFrame, after: pd.DataFrame) -> int:
    """How many cells differ between two tables of the same rows and columns (NaN equals NaN)."""
    a, b = before.to_numpy(dtype=object), after.to_numpy(dtype=object)
    same = (a == b) | (pd.isna(a) & pd.isna(b))
    return int((~same).sum())


def change_one_image(
    workdir: Path, configs: list[Path], cores: int, patient: str, patients: list[str]
) -> dict:
    """(b) for one patient's baseline image: touched only, then its content changed (one voxel)."""
    results = workdir / "results"
    image = results / f"cohort/images/{patient}/baseline.nii.gz"
    os.utime(image)
    touched = planned_jobs(snakemake(workdir, configs, cores, "-n")["output"])
    before = pd.read_parquet(results / "features/features.parquet").set_index("patient_id")
    # One voxel inside the tumour, so the patient's features must change.
    original = io.read_image(image)
    voxels = sitk.GetArrayFromImage(original)
    tumour = np.argwhere(
        sitk.GetArrayFromImage(io.read_image(str(image).replace("/images/", "/masks/"))) == 1
    )
    z, y, x = tumour[len(tumour) // 2]
    voxels[z, y, x] += 200
    edited = sitk.GetImageFromArray(voxels)
    edited.CopyInformation(original)
    io.write_image(edited, image)
    planned = planned_jobs(snakemake(workdir, configs, cores, "-n")["output"])
    incremental = snakemake(workdir, configs, cores)
    after = pd.read_parquet(results / "features/features.parquet").set_index("patient_id")
    others = [p for p in patients if p != patient]
    others_changed = {
        group: changed_values(before.loc[others, cols], after.loc[others, cols])
        for group, cols in column_groups(before.columns).items()
    }
    own = [j for j in planned if j["wildcards"].get("patient") == patient]
    other_patients = [
        j for j in planned if "patient" in j["wildcards"] and j["wildcards"]["patient"] != patient
    ]
    return {
        "image": str(image.relative_to(workdir)),
        "jobs_planned_after_touch_only": len(touched),
        "jobs_planned_after_content_change": len(planned),
        "that_patients_jobs": sorted(
            f"{j['rule']}:{j['wildcards'].get('timepoint', '')}".rstrip(":") for j in own
        ),
        "other_patients_jobs": len(other_patients),
        "other_patients_jobs_by_rule": dict(
            sorted(Counter(j["rule"] for j in other_patients).items())
        ),
        "aggregate_rules": sorted({j["rule"] for j in planned if "patient" not in j["wildcards"]}),
        "rerun_wall_s": incremental["wall_s"],
        "rerun_exit_code": incremental["exit_code"],
        # Values of the other patients' rows that differ after the rerun (NaN equals NaN).
        "other_patients_values_changed": others_changed,
        "that_patients_features_changed": not before.loc[[patient]].equals(after.loc[[patient]]),
    }


def run_size(root: Path, per_center: int, cores: int) -> dict:
    workdir = root / f"ppc{per_center}"
    workdir.mkdir(parents=True, exist_ok=True)
    override = workdir / "size.yaml"
    override.write_text(yaml.safe_dump({"synthetic": {"patients_per_center": per_center}}))
    configs = [*CONFIGS, override]
    results = workdir / "results"

    full = snakemake(workdir, configs, cores)
    if full["exit_code"]:
        raise SystemExit(f"full run failed in {workdir}:\n{full['output'][-3000:]}")
    jobs = job_metadata(workdir)
    bench = benchmark_files(results)
    samples = pd.read_csv(results / "tables/samples.validated.tsv", sep="\t")
    patients = sorted(samples["patient_id"].unique())
    external = set(load_config(*configs)["study"]["external_centers"])
    centre = samples.groupby("patient_id")["center"].first()

    noop = snakemake(workdir, configs, cores)
    dry = snakemake(workdir, configs, cores, "-n")

    # (b) first a patient the network trains on, then one of an external (test-only) centre.
    changed = {}
    for role, wanted in (("training_centre", False), ("external_centre", True)):
        patient = next(p for p in patients if (centre[p] in external) == wanted)
        changed[role] = {
            "patient": patient,
            **change_one_image(workdir, configs, cores, patient, patients),
        }

    return {
        "patients_per_center": per_center,
        "patients": len(patients),
        "full_run": {k: full[k] for k in ("wall_s", "peak_rss_mb", "exit_code")},
        "jobs": len(jobs),
        "per_rule": per_rule(jobs, bench),
        "noop_rerun": {
            "wall_s": noop["wall_s"],
            "share_of_full_run": round(noop["wall_s"] / full["wall_s"], 4),
            "nothing_to_be_done": "Nothing to be done" in noop["output"],
            "dry_run_wall_s": dry["wall_s"],
        },
        "change_one_image": changed,
    }


def default_noop(workdir: Path, cores: int, repeats: int = 3) -> dict:
    """No-op reruns and dry runs of a finished default-cohort run in `workdir`."""
    profile = workdir / "workflow/profiles/default"
    args = ["--workflow-profile", str(profile)] if profile.is_dir() else []
    cmd = [str(SNAKEMAKE), "--directory", str(workdir), "--cores", str(cores), *args]

    def timed(extra: list[str]) -> tuple[float, subprocess.CompletedProcess]:
        start = time.perf_counter()
        proc = subprocess.run(cmd + extra, capture_output=True, text=True, cwd=workdir)
        return round(time.perf_counter() - start, 2), proc

    dry = [timed(["-n"]) for _ in range(repeats)]
    noop = [timed([]) for _ in range(repeats)]
    output = dry[-1][1].stdout + dry[-1][1].stderr
    planned = Counter(j["rule"] for j in planned_jobs(output))
    jobs = job_metadata(workdir)
    full_run_lower_bound = jobs["wall_s"].sum() / cores
    return {
        "workdir": str(workdir),
        "dry_run_wall_s": [wall for wall, _ in dry],
        "noop_wall_s": [wall for wall, _ in noop],
        "exit_codes": sorted({proc.returncode for _, proc in dry + noop}),
        "nothing_to_be_done": all(
            "Nothing to be done" in proc.stdout + proc.stderr for _, proc in dry + noop
        ),
        "planned_jobs_by_rule": dict(sorted(planned.items())),
        "jobs": len(jobs),
        "job_wall_s_sum": round(jobs["wall_s"].sum(), 1),
        "full_run_wall_s_lower_bound": round(full_run_lower_bound, 1),
        "noop_share_upper_bound": round(max(w for w, _ in noop) / full_run_lower_bound, 5),
        "output_tail": "" if dry[-1][1].returncode == 0 else output[-1500:],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--small", type=int, default=3, help="patients per centre (N / 2)")
    parser.add_argument("--large", type=int, default=12, help="patients per centre (4N / 2)")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--root", type=Path, default=Path("/tmp/deltarad-bench-caching"))
    parser.add_argument("--default-workdir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=REPO / "bench/results/caching.json")
    ns = parser.parse_args()
    runs = [run_size(ns.root, k, ns.cores) for k in (ns.small, ns.large)]
    small, large = runs
    scaling = {
        "full_run_wall_ratio": round(large["full_run"]["wall_s"] / small["full_run"]["wall_s"], 2),
        "patients_ratio": large["patients"] / small["patients"],
        "per_rule_mean_wall_ratio": {
            rule: round(large["per_rule"][rule]["mean_wall_s"] / s["mean_wall_s"], 2)
            for rule, s in small["per_rule"].items()
            if rule in large["per_rule"] and s["mean_wall_s"] > 0
        },
        "per_rule_mean_cpu_ratio": {
            rule: round(large["per_rule"][rule]["mean_cpu_s"] / s["mean_cpu_s"], 2)
            for rule, s in small["per_rule"].items()
            if s.get("mean_cpu_s") and "mean_cpu_s" in large["per_rule"].get(rule, {})
        },
        "per_rule_mean_max_rss_ratio": {
            rule: round(large["per_rule"][rule]["mean_max_rss_mb"] / s["mean_max_rss_mb"], 2)
            for rule, s in small["per_rule"].items()
            if "mean_max_rss_mb" in s and "mean_max_rss_mb" in large["per_rule"].get(rule, {})
        },
    }
    report = {
        "benchmark": "workflow caching and scaling (tiny cohort)",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "load_average_at_end": os.getloadavg(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "cores": ns.cores,
        "runs": runs,
        "scaling": scaling,
    }
    if ns.default_workdir:
        report["default_cohort"] = default_noop(ns.default_workdir, ns.cores)
    ns.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = ns.out.with_name(f".{ns.out.name}.tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(ns.out)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
