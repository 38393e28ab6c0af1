#!/bin/sh
# The GPU check: everything only a GPU can check, in one run under one deadline (--deadline, 290 s: under 5 minutes
# with start-up on one H100/H200-class GPU)
# (see benchmarks/gpu_check.py). Prints a one-screen summary; writes results/gpu_check.json (or the file given
# with --out). Without CUDA it says so in one line and exits nonzero.
set -e
cd "$(dirname "$0")/.."
# A python3 that already imports what the check needs (a bare GPU image: nothing to install, no index to reach) is
# used as it is; otherwise the project's environment (tools/setup_env.sh).
if [ -z "${VIRTUAL_ENV:-}" ] && python3 -c 'import torch, torchvision, timm, cv2, scipy, safetensors, tqdm' 2>/dev/null; then
    PY=python3
else
    . tools/setup_env.sh
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || true
exec $PY -m benchmarks.gpu_check "$@"
