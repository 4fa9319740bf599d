#!/usr/bin/env bash
# The cluster tests end to end: bring up the single-node SLURM (slurm_up.sh), run the pytest
# tests marked `cluster` against it with DELTARAD_SLURM=1, and stop every daemon on exit
# (slurm_down.sh, by PID), whether the tests pass, fail or time out. Needs root (CI runs as root).
# Extra arguments go to pytest. DELTARAD_CLUSTER_TIMEOUT caps the test run (seconds, default 900).
# Stopping takes up to ~20 s: give an outer `timeout` a kill delay of 30 s (`timeout -k 30`).
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-.venv/bin/python}
start=$(date +%s)

# Each step runs under `timeout`, in the background, and is waited for, so that a TERM/INT
# (an outer timeout, Ctrl-C) interrupts the wait at once and `finish` runs. `timeout` makes its
# own process group: finish kills that group (pytest and the Snakemake runs it started, which may
# ignore SIGTERM while jobs are queued) before stopping the daemons.
step=
finish() {
    if [[ -n $step ]] && kill -0 -- "-$step" 2>/dev/null; then
        kill -TERM -- "-$step" 2>/dev/null || true
        for ((i = 0; i < 12; i++)); do
            kill -0 -- "-$step" 2>/dev/null || break
            sleep 0.25
        done
        kill -KILL -- "-$step" 2>/dev/null || true
    fi
    tests/cluster/slurm_down.sh || true
    echo "cluster tests: $(($(date +%s) - start)) s including SLURM bring-up and shutdown"
}
trap finish EXIT
trap 'exit 143' TERM INT

timeout -k 10 300 tests/cluster/slurm_up.sh &
step=$!
wait "$step"
DELTARAD_SLURM=1 timeout -k 10 "${DELTARAD_CLUSTER_TIMEOUT:-900}" \
    "$PYTHON" -m pytest -m cluster tests/cluster -p no:cacheprovider -v --durations=10 "$@" &
step=$!
wait "$step"
