#!/usr/bin/env bash
# Idempotent set-up for the tests, on top of scripts/setup.sh (the main job's): the pinned test
# dependencies (requirements-dev.lock: pytest, ruff, psycopg, Playwright), Debian's Chromium for
# the MLflow UI test and its PostgreSQL server for the tracking-store test. Called by
# scripts/test.sh; safe to run again (seconds). Without root, the browser and PostgreSQL tests skip.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

# Reinstall only when a pin changes; the runtime pins constrain the test dependencies' own.
stamp=".venv/.finch-devdeps-$(cat requirements-dev.lock requirements.lock | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "setup-test: installing pinned test dependencies (requirements-dev.lock)"
  quiet() { "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }
  quiet .venv/bin/python -m pip install -q -r requirements-dev.lock -c requirements.lock
  rm -f .venv/.finch-devdeps-*
  touch "$stamp"
fi

apt_updated=""
apt_install() {  # apt_install <what it is for> <package>...: Debian packages, quietly, once updated
  local why=$1
  shift
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "setup-test: note: $* not installed (need root for apt-get); $why will be skipped"
    return 0
  fi
  echo "setup-test: installing Debian's $* (for $why)"
  if [ -z "$apt_updated" ]; then
    apt-get update -qq >/dev/null && apt_updated=1
  fi
  # --no-install-recommends keeps chromium to ~26 packages (~120 MB download) instead of ~130
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null \
    || echo "setup-test: warning: could not install $*; $why will be skipped"
}

# Headless Chromium for tests/test_mlflow_ui.py (Playwright drives it; it never downloads a browser)
if ! command -v chromium >/dev/null 2>&1 && [ -z "${FINCH_CHROMIUM:-}" ]; then
  apt_install "the MLflow UI test" chromium fonts-liberation
fi
# PostgreSQL server binaries for tests/test_tracking_server.py (a throw-away cluster in /tmp)
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then  # binaries only: no cluster of Debian's own
    mkdir -p /etc/postgresql-common/createcluster.d
    echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.d/finch.conf
  fi
  apt_install "the PostgreSQL tracking-store test" postgresql
fi
