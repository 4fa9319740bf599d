"""Benchmark: synthetic cohort generation time (tiny and default), run by hand.

    .venv/bin/python bench/bench_synth.py [--jobs 2]

Writes bench/results/synth.json with wall times, file counts and sizes, and the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

from deltarad.cli import main as deltarad

REPO = Path(__file__).resolve().parents[1]
SIZES = {
    "tiny": [REPO / "config/config.yaml", REPO / "config/test.yaml"],
    "default": [REPO / "config/config.yaml"],
}


def run(size: str, jobs: int) -> dict:
    out = Path(tempfile.mkdtemp(prefix=f"bench_synth_{size}_"))
    args = [a for c in SIZES[size] for a in ("--config", str(c))]
    start = time.perf_counter()
    code = deltarad(["simulate", *args, "--out", str(out), "--jobs", str(jobs)])
    wall = time.perf_counter() - start
    files = [p for p in out.rglob("*") if p.is_file()]
    result = {
        "size": size,
        "jobs": jobs,
        "exit_code": code,
        "wall_s": round(wall, 2),
        "files": len(files),
        "megabytes": round(sum(p.stat().st_size for p in files) / 1e6, 1),
    }
    shutil.rmtree(out)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=2)
    ns = parser.parse_args()
    runs = [run(size, jobs) for size in SIZES for jobs in sorted({1, ns.jobs})]
    report = {
        "benchmark": "synthetic cohort generation",
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "processor": platform.processor(),
        },
        "date": time.strftime("%Y-%m-%d"),
        "runs": runs,
    }
    out = REPO / "bench/results/synth.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(runs, indent=2))


if __name__ == "__main__":
    main()
