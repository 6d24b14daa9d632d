"""Helpers for the tests that start real servers or DVC queues: a temporary smoke copy of the
repository, an MLflow tracking server, a throw-away PostgreSQL cluster, and what a listening
socket is bound to."""

from __future__ import annotations

import contextlib
import ipaddress
import multiprocessing
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from .conftest import REPO
from .test_pipeline_e2e import COPY, run

__all__ = [
    "COPY",
    "PG_INSTALL",
    "listening_addresses",
    "free_port",
    "make_smoke_repo",
    "mlflow_server",
    "non_loopback_ipv4",
    "open_trackers_at_once",
    "pg_bindir",
    "pg_user",
    "postgres_server",
    "run",
    "run_stages",
    "smoke_env",
]

GITIGNORE = """\
__pycache__/
*.egg-info/
/mlflow.db
/mlartifacts/
/mlruns/
"""
PG_INSTALL = "apt-get install -y --no-install-recommends postgresql (scripts/setup.sh)"


# --------------------------------------------------------------------------- smoke repository


def smoke_env() -> dict:
    """The environment the pipeline runs in: this venv first on PATH, no tracking override."""
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "DVC_NO_ANALYTICS": "1",
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    for name in ("MLFLOW_TRACKING_URI", "DVC_ROOT", "DVC_STAGE"):
        env.pop(name, None)
    return env


def make_smoke_repo(repo: Path, env: dict, *, commit: bool = False) -> None:
    """A git + DVC repository at ``repo`` with the smoke profile's params.yaml (optionally committed)."""
    for name in COPY:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, repo / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy(src, repo / name)
    (repo / ".gitignore").write_text(GITIGNORE)
    run(["git", "init", "-q"], repo, env)
    run(["git", "config", "user.name", "finch-test"], repo, env)
    run(["git", "config", "user.email", "finch-test@example.invalid"], repo, env)
    run(["dvc", "init", "-q"], repo, env)
    run([sys.executable, "-m", "finch.cli", "profile", "smoke"], repo, env)
    if commit:
        git_commit(repo, env, "smoke profile")


RUN_STAGES = """
import logging, sys
from finch.config import load_params
from finch.pipeline.table import STAGES
import importlib
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
cfg = load_params("params.yaml")
for name in sys.argv[1:]:
    importlib.import_module(STAGES[name].module).run(cfg)
"""


def run_stages(repo: Path, env: dict, names: list[str] | None = None) -> subprocess.CompletedProcess:
    """Stages ``names`` (default: all, in the table's order) of the repository at ``repo``, each
    through its module's ``run(cfg)`` as stages/X.py runs it, one after the other in one Python
    process: the pipeline's work without DVC and without a process start per stage."""
    from finch.pipeline.table import STAGES

    return run([sys.executable, "-c", RUN_STAGES, *(names or list(STAGES))], repo, env)


def git_commit(repo: Path, env: dict, message: str) -> None:
    run(["git", "add", "-A"], repo, env)
    run(["git", "commit", "-q", "-m", message], repo, env)


# --------------------------------------------------------------------------- MLflow server


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def mlflow_server(
    uri: str,
    artifacts_destination: str,
    *,
    host: str = "127.0.0.1",
    timeout: float = 120.0,
    app_name: str | None = None,
    env: dict | None = None,
) -> Iterator[str]:
    """``mlflow server`` for the backend store ``uri`` on a free port of ``host``, serving
    artifacts from ``artifacts_destination`` (``--app-name app_name``, with ``env`` added to its
    environment); yields its base URL once ``/health`` answers and stops its whole process group
    (uvicorn and workers) afterwards."""
    port = free_port(host)
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--serve-artifacts"]
    cmd += ["--artifacts-destination", artifacts_destination, "--host", host, "--port", str(port), "--workers", "1"]
    cmd += ["--app-name", app_name] if app_name else []
    base = f"http://{host}:{port}"
    env = {**smoke_env(), "PYTHONUNBUFFERED": "1", **(env or {})}
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)

        def output() -> str:
            log.seek(0)
            return "\n".join(log.read().decode(errors="replace").splitlines()[-40:])

        try:
            deadline = time.monotonic() + timeout
            while True:
                assert proc.poll() is None, f"mlflow server exited with {proc.returncode}:\n{output()}"
                with contextlib.suppress(urllib.error.URLError, OSError):
                    with urllib.request.urlopen(f"{base}/health", timeout=2) as resp:
                        if resp.status == 200:
                            break
                assert time.monotonic() < deadline, f"mlflow server silent on {base} for {timeout} s:\n{output()}"
                time.sleep(0.25)
            yield base
        finally:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, sig)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=10)
                    break


# --------------------------------------------------------------------------- parallel writers


def _open_tracker(barrier, uri: str, profile: str, results) -> None:
    """In a child process: import everything, wait for the others, then open a finch Tracker."""
    os.environ["MLFLOW_TRACKING_URI"] = uri
    import mlflow.tracking  # noqa: F401  (imported before the barrier: the race is the store, not imports)

    from finch.config import TrackingConfig
    from finch.tracking import Tracker

    barrier.wait(timeout=120)
    try:
        results.put(("ok", Tracker(TrackingConfig(), profile).experiment_id))
    except Exception as err:  # reported to the test
        results.put(("error", f"{type(err).__name__}: {err}"[:400]))


def open_trackers_at_once(uri: str, profile: str, n: int = 2) -> list[tuple[str, str]]:
    """What parallel ``dvc queue`` workers do when their runs finish together: ``n`` processes
    open a Tracker on ``uri`` at the same moment; each one's ("ok", experiment id) or ("error", why)."""
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_open_tracker, args=(barrier, uri, profile, results)) for _ in range(n)]
    for p in procs:
        p.start()
    try:
        return [results.get(timeout=180) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()


# --------------------------------------------------------------------------- sockets


def _proc_address(hex_addr: str) -> str:
    raw = bytes.fromhex(hex_addr)
    if len(raw) == 4:
        return str(ipaddress.IPv4Address(raw[::-1]))
    # IPv6: four 32-bit words, each in host (little-endian) byte order
    return str(ipaddress.IPv6Address(b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))))


def listening_addresses(port: int) -> set[str]:
    """The local addresses of every TCP socket listening on ``port`` (from /proc/net/tcp{,6})."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state = fields[1], fields[3]
            addr, _, hex_port = local.partition(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: TCP_LISTEN
                found.add(_proc_address(addr))
    return found


def non_loopback_ipv4() -> str | None:
    """An IPv4 address of this machine other than loopback, or None when it has none."""
    candidates = []
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.1", 9))  # TEST-NET-1; a UDP connect sends nothing, it only picks a route
        candidates.append(s.getsockname()[0])
    with contextlib.suppress(OSError):
        candidates += socket.gethostbyname_ex(socket.gethostname())[2]
    with contextlib.suppress(OSError):  # every local address, also without a default route
        lines = Path("/proc/net/fib_trie").read_text().splitlines()
        for prev, line in zip(lines, lines[1:], strict=False):
            if "/32 host LOCAL" in line:
                candidates.append(prev.split()[-1])
    for ip in candidates:
        with contextlib.suppress(ValueError):
            addr = ipaddress.IPv4Address(ip)
            if not (addr.is_loopback or addr.is_unspecified or addr.is_link_local):
                return ip
    return None


# --------------------------------------------------------------------------- PostgreSQL


def pg_bindir() -> Path | None:
    """The newest PostgreSQL server's bin folder (Debian: /usr/lib/postgresql/<major>/bin), else PATH's."""

    def major(p: Path) -> int:
        try:
            return int(p.parent.parent.name)
        except ValueError:
            return -1

    found = sorted((p for p in Path("/usr/lib/postgresql").glob("*/bin/initdb")), key=major)
    for initdb in reversed(found):
        if (initdb.parent / "pg_ctl").is_file():
            return initdb.parent
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if initdb and pg_ctl and Path(initdb).parent == Path(pg_ctl).parent:
        return Path(initdb).parent
    return None


def pg_user() -> pwd.struct_passwd | None:
    """Who runs the server: PostgreSQL refuses root, so as root Debian's ``postgres`` user."""
    if os.geteuid() != 0:
        return pwd.getpwuid(os.geteuid())
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        return None


@contextlib.contextmanager
def postgres_server(bindir: Path, user: pwd.struct_passwd, database: str = "mlflow") -> Iterator[str]:
    """A fresh PostgreSQL cluster in a temporary folder, on a free 127.0.0.1 port, trust auth,
    with an empty ``database``; yields its SQLAlchemy URI and stops and deletes it afterwards."""
    # not under pytest's tmp_path: its root (/tmp/pytest-of-root) is 0700, closed to the server's user
    tmp = Path(tempfile.mkdtemp(prefix="finch-pg-"))
    as_user = {}
    if os.geteuid() == 0:
        os.chown(tmp, user.pw_uid, user.pw_gid)
        as_user = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}

    def pg(*cmd: str | Path) -> subprocess.CompletedProcess:
        out = subprocess.run([str(c) for c in cmd], cwd=tmp, capture_output=True, text=True, **as_user)
        if out.returncode != 0:
            log = tmp / "server.log"
            tail = log.read_text(errors="replace")[-3000:] if log.is_file() else ""
            raise RuntimeError(f"{' '.join(map(str, cmd))} failed:\n{out.stdout}\n{out.stderr}\n{tail}")
        return out

    data = tmp / "data"
    port = free_port()
    started = False
    try:
        pg(bindir / "initdb", "-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync")
        opts = f"-p {port} -k {tmp} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off"
        pg(bindir / "pg_ctl", "-D", data, "-l", tmp / "server.log", "-w", "-t", "60", "-o", opts, "start")
        started = True
        pg(bindir / "createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", database)
        yield f"postgresql://postgres@127.0.0.1:{port}/{database}"
    finally:
        if started:
            with contextlib.suppress(RuntimeError):
                pg(bindir / "pg_ctl", "-D", data, "-m", "fast", "-w", "stop")
        shutil.rmtree(tmp, ignore_errors=True)
