#!/usr/bin/env bash
# The test suite: set up (main job's and tests' dependencies), then pytest: unit tests and the
# end-to-end smoke pipeline. Extra arguments go to pytest (`make test` passes -m "not slow").
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-test.sh
export PATH="$PWD/.venv/bin:$PATH" DVC_NO_ANALYTICS=1
python -m pytest "$@"
