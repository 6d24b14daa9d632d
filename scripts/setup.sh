#!/usr/bin/env bash
# Idempotent set-up of what the main job needs: virtualenv, pinned runtime dependencies
# (requirements.lock), Fashion-MNIST. Called by scripts/study.sh, scripts/reproduce.sh and, via
# scripts/setup-test.sh, by scripts/test.sh; safe to run again (seconds).
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

# Fashion-MNIST: Debian's package where we can install it (data.root's default); without root,
# the prepare stage's error says how to get it.
if [ ! -e /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing Debian's dataset-fashion-mnist"
    apt-get update -qq >/dev/null && apt-get install -y -qq dataset-fashion-mnist >/dev/null \
      || echo "setup: warning: could not install dataset-fashion-mnist; prepare will try to download"
  else
    echo "setup: note: Fashion-MNIST not installed (need root for apt-get); prepare will try to download"
  fi
fi
export DVC_NO_ANALYTICS=1
