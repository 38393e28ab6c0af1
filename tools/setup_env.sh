# Sourced by run_tests.sh, demo.sh, train.sh and test.sh: sets PY to the Python to use, installing only what is
# missing. In this order: an active virtualenv or conda environment (what requirements.txt names and it lacks is
# installed into it); else a python3 that already satisfies requirements.txt (an NGC container, a cluster module:
# used as it is, nothing installed); else .venv, created on the first run, with PyTorch and the requirements.
# AHIQ_DEV=1 (run_tests.sh) adds requirements-onnx.txt (the optional ONNX extra, tested) and requirements-dev.txt.
REQS="requirements.txt"
[ "${AHIQ_DEV:-0}" = 1 ] && REQS="$REQS requirements-onnx.txt requirements-slurm.txt requirements-dev.txt"
_ahiq_ready() { "$1" tools/check_requirements.py $REQS >/dev/null 2>&1; }
if [ -n "${VIRTUAL_ENV:-}" ] || [ -n "${CONDA_PREFIX:-}" ]; then
    PY=python
elif [ ! -x .venv/bin/python ] && command -v python3 >/dev/null 2>&1 && _ahiq_ready python3; then
    PY=python3
else
    if [ ! -x .venv/bin/python ]; then
        echo "setting up .venv (first run: installs PyTorch and the requirements, a few minutes)"
        python3 -m venv .venv || { echo "error: cannot create .venv; install python3-venv" >&2; exit 1; }
    fi
    PY=.venv/bin/python
fi
if ! _ahiq_ready "$PY"; then
    log=$(mktemp)
    $PY -m pip install --upgrade pip >"$log" 2>&1 || true
    # shellcheck disable=SC2086
    if ! $PY -m pip install $(printf -- '-r %s ' $REQS) >"$log" 2>&1; then
        tail -n 30 "$log" >&2
        echo "error: installing $REQS failed (pip output above); fix the environment and rerun" >&2
        exit 1
    fi
    rm -f "$log"
fi
