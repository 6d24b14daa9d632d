"""Experiments through DVC's queue: two queued teacher experiments run in parallel workers
(temporary copies under .dvc/tmp/exps/) and every run they train lands in the one MLflow
store of the main workspace, none lost; `dvc exp show` lists both."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from .servers import git_commit, make_smoke_repo, open_trackers_at_once, run, smoke_env

EXPERIMENT = "finch-smoke"
LRS = {"lr-low": 0.001, "lr-high": 0.004}  # experiment name → teacher.recipe.optimizer.lr
SEEDS = [0]
RECORD = "reports/runs/teacher/default/seed=0/record.json"
TIMEOUT_S = 900
PENDING = {"Queued", "Running"}
CELERY = ".dvc/tmp/exps/celery"  # the queue workers' pid files and logs


def queue_status(repo: Path, env: dict) -> dict[str, str]:
    """Experiment name → status (Queued, Running, Success, Failed, Unknown) from `dvc queue status`."""
    out = run(["dvc", "queue", "status"], repo, env).stdout
    status = {}
    for line in out.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[1] in LRS:
            status[fields[1]] = fields[-1]
    return status


def start_queue(repo: Path, env: dict, log: Path) -> None:
    """`dvc queue start -j 2`, its output to ``log``. Not to a pipe: the daemon that starts the
    workers inherits this call's stdout and stderr and lives as long as they do, so reading a pipe
    to its end waits for every worker to exit, and a worker that hangs in its own shutdown (seen:
    "monitor: shutting down due to empty queue", then nothing) would hang the test past its timeout."""
    with log.open("w") as out:
        done = subprocess.run(
            ["dvc", "queue", "start", "-j", "2"], cwd=repo, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=120
        )
    assert done.returncode == 0, log.read_text()[-3000:]


def worker_pids(repo: Path) -> list[int]:
    """The queue's celery workers still alive (their pid files, checked against /proc)."""
    alive = []
    for pid_file in sorted((repo / CELERY).glob("dvc-exp-worker-*.pid")):
        pid = int(pid_file.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline")
        if cmdline.exists() and b"queue-worker" in cmdline.read_bytes():
            alive.append(pid)
    return alive


def stop_workers(repo: Path, grace_s: float = 30) -> None:
    """After `dvc queue stop`: give the workers ``grace_s`` to exit, then kill what is left, so
    no worker outlives the test."""
    deadline = time.monotonic() + grace_s
    while worker_pids(repo) and time.monotonic() < deadline:
        time.sleep(1)
    for pid in worker_pids(repo):
        os.kill(pid, signal.SIGKILL)


def worker_logs(repo: Path, tail: int = 2000) -> str:
    """The end of each celery worker's own log, where DVC says why a worker died or hangs."""
    return "\n".join(f"--- {p.name}\n{p.read_text()[-tail:]}" for p in sorted((repo / CELERY).glob("*.out")))


@pytest.fixture(scope="module")
def queued(tmp_path_factory):
    repo = tmp_path_factory.mktemp("smoke-queue")
    env = smoke_env()
    make_smoke_repo(repo, env)
    # the shared upstream stages once, committed: a queued experiment checks their outputs out of
    # the cache (and reports/runs/pretrain out of git) and trains only the teacher
    run(["dvc", "repro", "pretrain"], repo, env)
    git_commit(repo, env, "smoke profile, prepared data and pretrained backbone")
    baseline = run(["git", "rev-parse", "HEAD"], repo, env).stdout.strip()
    # no store yet: the two workers race to create the MLflow database and the experiment
    for path in ("mlflow.db", "mlartifacts"):
        target = repo / path
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    for name, lr in LRS.items():
        run(
            [
                "dvc",
                "exp",
                "run",
                "--queue",
                "-n",
                name,
                "-S",
                f"teacher.recipe.optimizer.lr={lr}",
                "-S",
                f"seeds={json.dumps(SEEDS)}",
                "train_teacher",
            ],
            repo,
            env,
        )
    started = time.monotonic()
    start_queue(repo, env, tmp_path_factory.mktemp("queue-start") / "out.log")
    try:
        while True:
            status = queue_status(repo, env)
            if set(status) == set(LRS) and not set(status.values()) & PENDING:
                break
            if time.monotonic() - started > TIMEOUT_S:
                pytest.fail(f"queued experiments not done after {TIMEOUT_S} s: {status}\n{worker_logs(repo)}")
            time.sleep(2)
    finally:
        subprocess.run(["dvc", "queue", "stop"], cwd=repo, env=env, capture_output=True, timeout=120)
        stop_workers(repo)
    logs = {
        name: subprocess.run(["dvc", "queue", "logs", name], cwd=repo, env=env, capture_output=True, text=True).stdout
        for name in LRS
    }
    return SimpleNamespace(
        path=repo, env=env, status=status, logs=logs, wall_s=time.monotonic() - started, baseline=baseline
    )


def exp_revs(repo: Path, env: dict) -> dict[str, dict]:
    """Experiment name → its `dvc exp show --json` entry (rev, name, data)."""
    found = {}

    def walk(node):
        if isinstance(node, dict):
            if node.get("name") in LRS and "data" in node:
                found[node["name"]] = node
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(json.loads(run(["dvc", "exp", "show", "--json"], repo, env).stdout))
    return found


@pytest.mark.slow
def test_both_experiments_succeeded(queued):
    assert queued.status == dict.fromkeys(LRS, "Success"), queued.logs
    for name, log in queued.logs.items():
        assert "MLflow logging failed" not in log, f"{name}:\n{log[-3000:]}"


@pytest.mark.slow
def test_every_run_is_in_the_main_workspace_store(queued):
    from mlflow.tracking import MlflowClient

    db = queued.path / "mlflow.db"
    assert db.is_file(), "no MLflow store at the main workspace's root"
    strays = [p for p in queued.path.rglob("mlflow.db") if p != db] + list(queued.path.rglob("mlruns"))
    assert not strays, strays
    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    exp = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([exp.experiment_id], "tags.`finch.stage` = 'teacher'")
    assert len(runs) == len(LRS) * len(SEEDS), [r.info.run_name for r in runs]  # nothing lost, nothing doubled
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert sorted(float(r.data.params["recipe.optimizer.lr"]) for r in runs) == sorted(LRS.values())
    assert {r.data.tags["finch.seed"] for r in runs} == {str(s) for s in SEEDS}
    assert len({r.data.tags["finch.run_key"] for r in runs}) == len(runs)
    for r in runs:  # artifacts in the main workspace's artifact root too, not in a deleted temp copy
        stored = queued.path / "mlartifacts" / EXPERIMENT / r.info.run_id / "artifacts"
        assert (stored / "record/record.json").is_file(), r.info.artifact_uri


@pytest.mark.slow
def test_exp_show_lists_both_experiments(queued):
    from mlflow.tracking import MlflowClient

    exps = exp_revs(queued.path, queued.env)
    assert sorted(exps) == sorted(LRS), list(exps)
    client = MlflowClient(tracking_uri=f"sqlite:///{queued.path / 'mlflow.db'}")
    exp_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    for name, lr in LRS.items():
        entry = exps[name]
        params = entry["data"]["params"]["params.yaml"]["data"]
        assert params["teacher"]["recipe"]["optimizer"]["lr"] == lr
        assert params["seeds"] == SEEDS
        # the experiment's commit holds the run record; its metrics are the MLflow run's
        record = json.loads(run(["git", "show", f"{entry['rev']}:{RECORD}"], queued.path, queued.env).stdout)
        assert record["params"]["recipe.optimizer.lr"] == lr
        (logged,) = client.search_runs([exp_id], f"tags.`finch.run_key` = '{record['run_key']}'")
        assert logged.data.metrics["accuracy"] == pytest.approx(record["metrics"]["accuracy"])
        # the MLflow run knows its DVC experiment (DVC_EXP_NAME / DVC_EXP_BASELINE_REV), as does its record
        expected = {"dvc.exp_name": name, "dvc.exp_baseline_rev": queued.baseline}
        assert {k: logged.data.tags.get(k) for k in expected} == expected
        assert {k: record["tags"].get(k) for k in expected} == expected
        # ... and `dvc exp show` has the teacher-only experiment's own numbers: the stage's metrics file
        shown = entry["data"]["metrics"]["reports/metrics/train_teacher.json"]["data"]
        assert shown["teacher"]["default"]["accuracy"] == {
            "n": len(SEEDS),
            "mean": pytest.approx(record["metrics"]["accuracy"]),
        }


def test_parallel_workers_open_a_fresh_store(tmp_path):
    """Two queue workers finishing together both open the main workspace's new mlflow.db:
    MLflow creates a SQLite store's tables without a lock, so finch must serialise it."""
    for trial in range(2):
        results = open_trackers_at_once(f"sqlite:///{tmp_path / f'mlflow{trial}.db'}", "race")
        assert [status for status, _ in results] == ["ok", "ok"], results
        assert len({exp_id for _, exp_id in results}) == 1, results
