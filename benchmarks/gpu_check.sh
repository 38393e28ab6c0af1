#!/bin/sh
# The GPU check: everything only a GPU can check, in one run of about 5-8 minutes on one H100/H200-class GPU
# (see benchmarks/gpu_check.py). Prints a one-screen summary; writes results/gpu_check.json (or the file given
# with --out). Without CUDA it says so in one line and exits nonzero.
set -e
cd "$(dirname "$0")/.."
. scripts/setup_env.sh
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || true
exec $PY -m benchmarks.gpu_check "$@"
