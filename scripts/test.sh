#!/usr/bin/env bash
# The test suite: set up (main job's and tests' dependencies), then pytest: unit tests and the
# end-to-end smoke pipeline, spread over both cores (pytest-xdist; a file's tests stay on one
# worker, so a module's fixtures are built once; modules with long set-ups go first, see
# tests/conftest.py). Extra arguments go to pytest (`make test` passes -m "not slow");
# FINCH_TEST_WORKERS=0 runs them all in this process.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-test.sh
export PATH="$PWD/.venv/bin:$PATH" DVC_NO_ANALYTICS=1
python -m pytest -n "${FINCH_TEST_WORKERS:-2}" --dist loadfile --no-loadscope-reorder --durations=15 "$@"
