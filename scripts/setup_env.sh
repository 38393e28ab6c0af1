# Sourced by run_tests.sh and demo.sh: selects the Python to use and installs what the project needs.
# An active virtualenv or conda environment is used as it is; otherwise a local .venv is created and kept in sync
# with requirements.txt (re-installed when that file changes).
if [ -n "${VIRTUAL_ENV:-}" ] || [ -n "${CONDA_PREFIX:-}" ]; then
    PY=python
else
    if [ ! -x .venv/bin/python ]; then
        echo "setting up .venv (first run: installs PyTorch and the requirements, a few minutes)"
        python3 -m venv .venv || { echo "error: cannot create .venv; install python3-venv" >&2; exit 1; }
    fi
    PY=.venv/bin/python
fi
stamp_dir=$($PY -c 'import sys; print(sys.prefix)')
want=$(cat requirements.txt requirements-dev.txt | sha256sum | cut -c1-16)
if [ "$(cat "$stamp_dir/.ahiq-requirements" 2>/dev/null)" != "$want" ]; then
    log=$(mktemp)
    $PY -m pip install --upgrade pip >"$log" 2>&1 || true
    if ! $PY -m pip install -r requirements.txt -r requirements-dev.txt >"$log" 2>&1; then
        tail -n 30 "$log" >&2
        echo "error: installing requirements.txt failed (pip output above); fix the environment and rerun" >&2
        exit 1
    fi
    rm -f "$log"
    echo "$want" > "$stamp_dir/.ahiq-requirements"
fi
