#!/usr/bin/env bash
# The test suite: set up, then pytest (unit tests and the end-to-end smoke pipeline).
# Extra arguments go to pytest (e.g. `bash scripts/test.sh -m "not slow"` for the quick part).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH" DVC_NO_ANALYTICS=1
python -m pytest "$@"
