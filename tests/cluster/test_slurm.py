"""profiles/slurm against a real SLURM (the single-node cluster of tests/cluster/slurm_up.sh).

Skipped unless DELTARAD_SLURM=1, which tests/cluster/run.sh sets once the cluster is up. Every
Snakemake call has a hard time limit: the SLURM plugin waits forever when job states cannot be
read, and a hang must fail the test, not the CI job.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

from deltarad import io
from tests.conftest import CONFIGS, REPO

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(
        os.environ.get("DELTARAD_SLURM") != "1",
        reason="needs a running SLURM: tests/cluster/run.sh starts one, sets DELTARAD_SLURM=1",
    ),
]

HERE = Path(__file__).resolve().parent
PROFILE = REPO / "profiles/slurm"
SNAKEMAKE = Path(sys.executable).with_name("snakemake")
# Test-only settings on top of the profile: status checks 2 s after submission instead of the
# plugin's 40 s, keep the plugin's per-job logs, and group jobs no wider than the 2-CPU node.
FAST = ("--slurm-init-seconds-before-status-checks", "2", "--slurm-keep-successful-logs")
NODE = ("--cores", "2")
SUBMITTED = re.compile(r"has been submitted with SLURM jobid (\d+) \(log: (\S+)\)")
VALIDATED = "results/tables/samples.validated.tsv"
# The inputs of the real segment_train job: the training centre's (C1, config/test.yaml) scans on
# their baseline grids, their drawn masks (C1-001's follow-up has none) and the registration
# gate's failures (not trained on). The local reference run builds them, so that test (b)
# submits segment_train alone.
TRAINING_SCANS = (
    *(
        f"results/preprocessed/C1-00{i}/{name}.nii.gz"
        for i in (1, 2, 3)
        for name in ("baseline", "baseline_mask")
    ),
    *(f"results/registered/C1-00{i}/followup.nii.gz" for i in (1, 2, 3)),
    *(f"results/registered/C1-00{i}/followup_mask.nii.gz" for i in (2, 3)),
    "results/qc/failures_registration.tsv",
)
TRAINED = "results/models/segmentation/rpnet/checkpoint_final.pt"
SBATCH_CALL = re.compile(r"sbatch call: (.*)")


def snakemake(workdir: Path, *args: str, env: dict | None = None, timeout: int = 300):
    """Run Snakemake in workdir; returns (completed process, seconds taken)."""
    workdir.mkdir(parents=True, exist_ok=True)
    cmd = [str(SNAKEMAKE), "--directory", str(workdir), *args]
    full_env = {**os.environ, "PYTHONHASHSEED": "0", **(env or {})}
    start = time.monotonic()
    # subprocess.run kills (SIGKILL) at the timeout; Snakemake may ignore SIGTERM while it waits.
    result = subprocess.run(cmd, capture_output=True, text=True, env=full_env, timeout=timeout)
    return result, time.monotonic() - start


def submitted_jobs(output: str) -> dict[str, Path]:
    """SLURM job ID -> the plugin's log file, from the plugin's submission messages."""
    return {jobid: Path(log) for jobid, log in SUBMITTED.findall(output)}


def sacct(jobids, wait_s: float = 30.0) -> dict[str, dict[str, str]]:
    """Accounting records of the given jobs (allocations only), once all are in a final state.

    slurmdbd records asynchronously, so poll briefly.
    """
    fields = [
        *("JobID", "JobName", "State", "ReqTRES", "AllocTRES"),
        *("Partition", "Account", "Comment"),
    ]
    deadline = time.monotonic() + wait_s
    while True:
        out = subprocess.run(
            ["sacct", "-n", "-P", "-X", "-j", ",".join(jobids), "-o", ",".join(fields)],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
        rows = {}
        for line in out.splitlines():
            row = dict(zip(fields, line.split("|"), strict=True))
            rows[row["JobID"]] = row
        final = all(
            rows.get(j, {}).get("State", "").split(" ")[0] in ("COMPLETED", "FAILED")
            and rows[j]["ReqTRES"]
            for j in jobids
        )
        if final or time.monotonic() > deadline:
            return rows
        time.sleep(1)


def tres(row: dict[str, str], field: str = "ReqTRES") -> dict[str, str]:
    """A job's requested (ReqTRES) or allocated (AllocTRES) trackable resources, by name."""
    return dict(item.split("=", 1) for item in row[field].split(",") if item)


def tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): io.sha256(p) for p in sorted(root.rglob("*")) if p.is_file()}


# ---- (a) the tiny cohort through the profile equals a local run ---------------------------


def local_run(base: tuple[str, ...], local_dir: Path) -> tuple[int, str]:
    """The local reference run; it also builds segment_train's inputs for test (b) (not
    compared: the SLURM run lacks them). Returns its exit status and the end of its log."""
    local_log = local_dir.with_name(local_dir.name + ".log")
    with local_log.open("w") as log:
        local = subprocess.run(
            [str(SNAKEMAKE), "--directory", str(local_dir), "--cores", "1", *base[:3]]
            + [*TRAINING_SCANS, *base[3:]],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONHASHSEED": "0"},
            timeout=300,
        )
    return local.returncode, local_log.read_text()[-4000:]


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    # The target before --configfile, which takes every following word as a config file.
    base = ("--snakefile", str(REPO / "Snakefile"), VALIDATED, "--configfile", *map(str, CONFIGS))
    slurm_dir, local_dir = tmp_path_factory.mktemp("slurm"), tmp_path_factory.mktemp("local")
    cuda_dir = tmp_path_factory.mktemp("cuda") / "run"
    # The local reference run, then test (b)'s SLURM run from a copy of it, go alongside in one
    # background thread (in that order): the tiny cohort's SLURM run mostly waits between status
    # checks. Test (b) collects its run from the returned future; it comes right after (a), so
    # that run does not share the node with the timed test (c).
    pool = ThreadPoolExecutor(max_workers=1)
    local = pool.submit(local_run, base, local_dir)
    cuda = pool.submit(segment_train_with_cuda, local, local_dir, cuda_dir)
    pool.shutdown(wait=False)
    try:
        slurm, slurm_s = snakemake(slurm_dir, "--profile", str(PROFILE), *NODE, *FAST, *base)
        local_rc, local_log = local.result(timeout=300)
        assert slurm.returncode == 0, slurm.stderr[-4000:]
        assert local_rc == 0, local_log
    except BaseException:
        cuda.cancel()  # if not started yet: keep the node free for the later, timed tests
        raise
    print(f"tiny cohort through SLURM: {slurm_s:.0f} s")
    return slurm, slurm_dir, local_dir, cuda


def test_tiny_cohort_jobs_ran_as_slurm_jobs(tiny_runs):
    slurm, workdir, _, _ = tiny_runs
    output = slurm.stdout + slurm.stderr
    jobs = submitted_jobs(output)
    run_id = re.search(r"SLURM run ID: (\S+)", output).group(1)
    # 6 patients' simulate_patient jobs as one group job, then simulate_sheets, validate_cohort.
    assert len(jobs) == 3, output[-3000:]
    records = sacct(jobs)
    assert set(records) == set(jobs)
    for jobid, row in records.items():
        assert row["State"] == "COMPLETED", row
        assert row["JobName"] == run_id, row
        assert jobs[jobid].is_file() and jobs[jobid].is_relative_to(workdir / ".snakemake")
    comments = sorted(row["Comment"] for row in records.values())
    assert comments == [
        "rule_patients_simulate_patient",
        "rule_simulate_sheets",
        "rule_validate_cohort",
    ], comments


def test_tiny_cohort_outputs_equal_a_local_run(tiny_runs):
    _, slurm_dir, local_dir, _ = tiny_runs
    cohort = tree(slurm_dir / "results/cohort")
    assert len(cohort) > 60  # 6 patients x 2 timepoints: images, masks, truth, sheets
    assert cohort == tree(local_dir / "results/cohort")
    assert io.sha256(slurm_dir / VALIDATED) == io.sha256(local_dir / VALIDATED)


# ---- (b) the real segment_train rule with device `cuda` asks SLURM for a GPU -------------


def segment_train_with_cuda(local: Future, local_dir: Path, workdir: Path):
    """DeltaRad's segment_train with segmentation.device `cuda`, submitted alone through the
    profile from a copy of the local reference run (which built its inputs). SLURM schedules it
    on the fake GPU; torch in the job sees none, so the job must fail with our clear error.
    Returns (workdir, the Snakemake run, seconds it took), or None if the local run failed."""
    if local.result()[0] != 0:
        return None
    # copytree keeps modification times and .snakemake's records: nothing upstream reruns.
    shutil.copytree(local_dir, workdir, symlinks=True)
    cuda = workdir.with_name("cuda.yaml")
    cuda.write_text("segmentation:\n  device: cuda\n")
    return workdir, *snakemake(
        workdir,
        "--snakefile",
        str(REPO / "Snakefile"),
        "--profile",
        str(PROFILE),
        *NODE,
        *FAST,
        # One failure, timed; --verbose logs the plugin's sbatch command line.
        "--retries",
        "0",
        "--verbose",
        TRAINED,
        "--configfile",
        *map(str, CONFIGS),
        str(cuda),
        timeout=240,
    )


@pytest.fixture(scope="module")
def cuda_training_run(tiny_runs):
    """Test (b)'s run (started by tiny_runs once its inputs exist) and its SLURM records."""
    cuda = tiny_runs[3].result(timeout=300)
    assert cuda is not None, "the local run that builds segment_train's inputs failed"
    workdir, result, seconds = cuda
    output = result.stdout + result.stderr
    jobs = submitted_jobs(output)
    return workdir, result, output, seconds, jobs, sacct(jobs)


def test_segment_train_with_cuda_asks_slurm_for_a_gpu(cuda_training_run):
    _, _, output, _, jobs, records = cuda_training_run
    # segment_train alone: its inputs came from the local run.
    assert len(jobs) == 1, output[-4000:]
    (job,) = records.values()
    assert job["Comment"].startswith("rule_segment_train"), job
    (call,) = SBATCH_CALL.findall(output)
    assert " --gpus=1" in call, call
    # SLURM was asked for, and gave, the (fake) GPU.
    assert tres(job).get("gres/gpu") == "1", job
    assert tres(job, "AllocTRES").get("gres/gpu") == "1", job


def test_segment_train_with_cuda_and_no_gpu_fails_clearly(cuda_training_run):
    workdir, result, output, seconds, _, records = cuda_training_run
    assert [row["State"] for row in records.values()] == ["FAILED"]
    assert result.returncode != 0
    assert "Error in rule segment_train" in output
    assert "SLURM status is: 'FAILED'" in output
    log = (workdir / "results/logs/segment/rpnet/train.log").read_text()
    assert "ERROR: segmentation.device is 'cuda' but torch sees no GPU" in log, log[-3000:]
    model = workdir / "results/models/segmentation/rpnet"
    left = sorted(str(p.relative_to(workdir)) for p in model.rglob("*")) if model.exists() else []
    assert left == [], left
    # No time bound here: this run shares the node with (a)'s; test (c) times a failure alone.
    print(f"segment_train with cuda through SLURM: {seconds:.0f} s")


# ---- (c) a failing job is reported as failed, in bounded time -----------------------------


def test_failing_job_is_reported_failed_in_bounded_time(tmp_path):
    # --retries 0: one failure, timed (the profile's retries are exercised by the memory test).
    result, seconds = snakemake(
        tmp_path,
        "--snakefile",
        str(HERE / "Snakefile"),
        "--profile",
        str(PROFILE),
        *NODE,
        *FAST,
        "--retries",
        "0",
        "fails.txt",
        timeout=180,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "Error in rule fails" in output
    assert "SLURM status is: 'FAILED'" in output
    records = sacct(submitted_jobs(output))
    assert [(row["State"], row["Comment"]) for row in records.values()] == [
        ("FAILED", "rule_fails")
    ]
    assert (tmp_path / "logs/fails.log").read_text() == "failing on purpose\n"
    assert not (tmp_path / "fails.txt").exists()
    # The job fails within seconds; the plugin looks 2, 14, 36, 68 s after submission (FAST).
    assert seconds < 100, f"the failure took {seconds:.0f} s to be reported"


# ---- (d) GPU request, partition/account from the environment, retry with more memory ------


@pytest.fixture(scope="module")
def gpu_and_memory_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("gpu")
    result, _ = snakemake(
        workdir,
        "--snakefile",
        str(HERE / "Snakefile"),
        "--profile",
        str(PROFILE),
        *NODE,
        *FAST,
        "gpu.txt",
        "no_gpu.txt",
        "more_memory.txt",
        env={"DELTARAD_SLURM_PARTITION": "gpu", "DELTARAD_SLURM_ACCOUNT": "imaging"},
    )
    assert result.returncode == 0, result.stderr[-4000:]
    records = sacct(submitted_jobs(result.stdout + result.stderr))
    by_rule: dict[str, list[dict]] = {}
    for jobid in sorted(records, key=int):
        by_rule.setdefault(records[jobid]["Comment"], []).append(records[jobid])
    return workdir, by_rule


def test_gpu_resource_reaches_slurm_as_a_gpu_request(gpu_and_memory_run):
    workdir, by_rule = gpu_and_memory_run
    (job,) = by_rule["rule_gpu"]
    assert tres(job).get("gres/gpu") == "1", job
    assert tres(job, "AllocTRES").get("gres/gpu") == "1", job
    # The job step was given the (fake) GPU SLURM allocated.
    assert "CUDA_VISIBLE_DEVICES=0" in (workdir / "gpu.txt").read_text().splitlines()
    # Jobs without `gpu`, or with gpu=0 (the segmentation rules with device `auto` on a machine
    # without a GPU, tests/workflow/test_workflow.py), ask for none.
    assert all("gres/gpu" not in tres(row) for row in by_rule["rule_more_memory"])
    (job,) = by_rule["rule_no_gpu"]
    assert "gres/gpu" not in tres(job) and "gres/gpu" not in tres(job, "AllocTRES"), job


def test_partition_and_account_come_from_the_environment(gpu_and_memory_run):
    _, by_rule = gpu_and_memory_run
    rows = [row for jobs in by_rule.values() for row in jobs]
    assert {(row["Partition"], row["Account"]) for row in rows} == {("gpu", "imaging")}


def test_retry_asks_slurm_for_more_memory(gpu_and_memory_run):
    workdir, by_rule = gpu_and_memory_run
    attempts = by_rule["rule_more_memory"]
    assert [(row["State"], tres(row)["mem"]) for row in attempts] == [
        ("FAILED", "2000M"),
        ("COMPLETED", "4000M"),
    ]
    assert (workdir / "more_memory.txt").read_text().strip() == "4000"
