#!/usr/bin/env bash
# The main job: set up, then `dvc repro` of the profile in params.yaml (default: CPU, Fashion-MNIST).
# Extra arguments go to dvc repro (e.g. `bash scripts/study.sh --force`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH" DVC_NO_ANALYTICS=1
finch check
start=$(date +%s)
dvc repro "$@"
finch readme   # the README's headline table from reports/headline.md
echo
echo "Done in $(( $(date +%s) - start )) s."
echo "  Results:  reports/results.md  (tables, intervals, figures)"
echo "  Runs:     .venv/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db  → http://127.0.0.1:5000"
