#!/usr/bin/env bash
# Idempotent set-up for a fresh machine: virtualenv, pinned dependencies, Fashion-MNIST.
# Called by scripts/study.sh, scripts/test.sh and .ci/run; safe to run again (seconds).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $PYTHON"
  "$PYTHON" -m venv .venv
fi
# Reinstall only when the pins change. torch/torchvision come from this machine's disk via pip.
stamp=".venv/.finch-deps-$(cat requirements.lock pyproject.toml | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "setup: installing pinned dependencies (requirements.lock)"
  # (this machine's pip config lists local indexes that warn for every package; keep the log readable)
  quiet() { "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }
  quiet .venv/bin/python -m pip install -q --upgrade pip
  quiet .venv/bin/python -m pip install -q -r requirements.lock
  quiet .venv/bin/python -m pip install -q --no-deps -e .
  rm -f .venv/.finch-deps-*
  touch "$stamp"
fi

# Fashion-MNIST: Debian's package where we can install it; else the prepare stage falls back
# to data.root or torchvision's downloader.
if [ ! -e /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing Debian's dataset-fashion-mnist"
    apt-get update -qq >/dev/null && apt-get install -y -qq dataset-fashion-mnist >/dev/null \
      || echo "setup: warning: could not install dataset-fashion-mnist; prepare will try to download"
  else
    echo "setup: note: Fashion-MNIST not installed (need root for apt-get); prepare will try to download"
  fi
fi

# Headless Chromium for the MLflow UI check (finch.report.mlflow_ui, tests/test_mlflow_ui.py):
# Debian's package (Playwright drives it; it never downloads a browser of its own).
# --no-install-recommends keeps it to ~26 packages (~120 MB download) instead of ~130.
if ! command -v chromium >/dev/null 2>&1 && [ -z "${FINCH_CHROMIUM:-}" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing Debian's chromium (headless browser for the MLflow UI test)"
    { apt-get update -qq >/dev/null \
      && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium fonts-liberation >/dev/null; } \
      || echo "setup: warning: could not install chromium; the MLflow UI test will be skipped"
  else
    echo "setup: note: chromium not installed (need root for apt-get); the MLflow UI test will be skipped"
  fi
fi
# PostgreSQL server binaries for tests/test_tracking_server.py (a throw-away cluster in /tmp; skipped without)
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing Debian's postgresql (server for the PostgreSQL tracking-store test)"
    mkdir -p /etc/postgresql-common/createcluster.d
    echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.d/finch.conf
    { apt-get update -qq >/dev/null \
      && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null; } \
      || echo "setup: warning: could not install postgresql; the PostgreSQL tracking test will be skipped"
  else
    echo "setup: note: postgresql not installed (need root for apt-get); the PostgreSQL tracking test will be skipped"
  fi
fi
export DVC_NO_ANALYTICS=1
