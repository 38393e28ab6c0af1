#!/bin/sh
# The test command of the README: sets up the environment on a fresh machine, then runs the CPU test suite.
# Extra arguments go to pytest, e.g. `sh run_tests.sh -k checkpoint`.
set -e
cd "$(dirname "$0")"
AHIQ_DEV=1 . tools/setup_env.sh
$PY -m ruff check .
exec $PY -m pytest -q -n 2 --dist worksteal tests "$@"  # two workers: the 2-core machines this is developed and checked on
