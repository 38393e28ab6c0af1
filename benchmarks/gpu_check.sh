#!/bin/sh
# The GPU check: everything only a GPU can check, in one run under one deadline (--deadline, 290 s: under 5 minutes
# with start-up on one H100/H200-class GPU; see benchmarks/gpu_check.py). Prints a one-screen summary and writes
# results/gpu_check.json, or the file given with --out (on a lent machine, a folder whose files come back:
# --out "$OUT/gpu_check.json"). Installs nothing: the python used is the active virtualenv's, else python3, whichever
# imports what the check needs; where neither does, it names what is missing and exits 2. Without CUDA it says so
# in one line and exits 2.
set -e
cd "$(dirname "$0")/.."
MODULES="torch torchvision timm cv2 scipy safetensors tqdm"
missing() {  # the modules $1 cannot import (all at once first: each import alone costs seconds)
    "$1" -c "import $(echo $MODULES | tr ' ' ',')" 2>/dev/null && return
    for m in $MODULES; do "$1" -c "import $m" 2>/dev/null || printf '%s ' "$m"; done
}
PY=
for candidate in ${VIRTUAL_ENV:+"$VIRTUAL_ENV/bin/python"} python3; do
    if command -v "$candidate" >/dev/null 2>&1 && [ -z "$(missing "$candidate")" ]; then
        PY=$candidate
        break
    fi
done
if [ -z "$PY" ]; then
    echo "gpu_check: no python here imports what the check needs (python3 lacks: $(missing python3)); set up the" \
         "project's environment first (sh run_tests.sh, or AHIQ_DEV=1 . tools/setup_env.sh), then run this again" >&2
    exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || true
exec "$PY" -m benchmarks.gpu_check "$@"
