#!/usr/bin/env bash
# The sweep test against a real single-node Slurm (installs slurm-wlm and munge when missing):
#   bash tests/slurm/run_slurm_test.sh
# Starts munged, slurmctld and slurmd under a temporary directory, runs
# tests/slurm/test_slurm_sweep.py, and stops the daemons it started, whatever happens.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
began=$(date +%s)
slurm_dir=$(mktemp -d /tmp/m3p-slurm.XXXXXX)
source tests/slurm/start_slurm.sh "$slurm_dir"
trap 'stop_slurm' EXIT
M3P_SLURM_TEST=1 python -m pytest -q -s tests/slurm/test_slurm_sweep.py
echo "slurm test: $(( $(date +%s) - began )) s"
