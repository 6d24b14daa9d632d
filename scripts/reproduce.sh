#!/usr/bin/env bash
# Reproduction check (CI): re-run the whole default study from scratch and compare every
# per-run metric with the committed reports/runs.csv (tolerance: verify.abs_tolerance).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH" DVC_NO_ANALYTICS=1
if ! git diff --quiet HEAD -- params.yaml; then
  echo "reproduce: params.yaml differs from the committed one; the check needs the committed profile" >&2
  exit 2
fi
start=$(date +%s)
dvc repro --force
echo "reproduce: default study took $(( $(date +%s) - start )) s"
finch verify
