#!/usr/bin/env bash
# The cluster tests end to end: bring up the single-node SLURM (slurm_up.sh), run the pytest
# tests marked `cluster` against it with DELTARAD_SLURM=1, and stop every daemon on exit
# (slurm_down.sh, by PID), whether the tests pass, fail or time out. Needs root (CI runs as root).
# Extra arguments go to pytest. DELTARAD_CLUSTER_TIMEOUT caps the test run (seconds, default 900).
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-.venv/bin/python}
start=$(date +%s)

finish() {
    tests/cluster/slurm_down.sh || true
    echo "cluster tests: $(($(date +%s) - start)) s including SLURM bring-up and shutdown"
}
trap finish EXIT

timeout -k 10 300 tests/cluster/slurm_up.sh
DELTARAD_SLURM=1 timeout -k 10 "${DELTARAD_CLUSTER_TIMEOUT:-900}" \
    "$PYTHON" -m pytest -m cluster tests/cluster -p no:cacheprovider -v --durations=10 "$@"
