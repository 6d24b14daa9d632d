"""The pipeline against a real MLflow tracking server (SQLite or PostgreSQL backend, served
artifacts): runs, params, metrics, tags and artifacts arrive through HTTP, artifacts land in
the server's artifact destination, and the server listens on loopback only."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlsplit

import pytest

from finch.config import TrackingConfig, flatten
from finch.runs import find_records
from finch.tracking import KEY_TAG, PARENT_TAG, sync

from .servers import (
    PG_INSTALL,
    listening_addresses,
    make_smoke_repo,
    mlflow_server,
    non_loopback_ipv4,
    open_trackers_at_once,
    pg_bindir,
    pg_user,
    postgres_server,
    run_stages,
    smoke_env,
)
from .test_tracking import fake_record

pytestmark = pytest.mark.slow
EXPERIMENT = "finch-smoke"
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``mlflow server`` on a free 127.0.0.1 port: SQLite store, artifacts served from a folder."""
    root = tmp_path_factory.mktemp("mlflow-server")
    db = root / "mlflow.db"
    db.touch()  # an empty SQLite file: the server creates the schema (mlflow_ui wants the file to exist)
    dest = root / "artifacts"
    dest.mkdir()
    with mlflow_server(f"sqlite:///{db}", artifacts_destination=dest.as_uri()) as url:
        yield SimpleNamespace(url=url, port=urlsplit(url).port, db=db, artifacts=dest)


@pytest.fixture(scope="module")
def teacher_repo(server, tmp_path_factory):
    """The smoke pipeline up to train_teacher (in one process), with MLFLOW_TRACKING_URI
    pointing at the server."""
    repo = tmp_path_factory.mktemp("smoke-server")
    env = smoke_env()
    make_smoke_repo(repo, env)
    env["MLFLOW_TRACKING_URI"] = server.url
    out = run_stages(repo, env, ["prepare", "pretrain", "train_teacher"])
    return SimpleNamespace(path=repo, log=out.stdout + out.stderr)


def local_record(repo: Path, seed: int) -> dict:
    return json.loads((repo / f"reports/runs/teacher/default/seed={seed}/record.json").read_text())


def teacher_runs(client) -> dict:
    exp = client.get_experiment_by_name(EXPERIMENT)
    assert exp is not None, f"no experiment {EXPERIMENT!r} on the server"
    runs = client.search_runs([exp.experiment_id], "tags.`finch.stage` = 'teacher'")
    return {int(r.data.tags["finch.seed"]): r for r in runs}


def test_runs_arrive_through_the_server(server, teacher_repo):
    from mlflow.tracking import MlflowClient

    assert "MLflow logging failed" not in teacher_repo.log, teacher_repo.log[-3000:]
    client = MlflowClient(tracking_uri=server.url)
    exp = client.get_experiment_by_name(EXPERIMENT)
    assert exp.artifact_location.startswith("mlflow-artifacts:"), exp.artifact_location  # served, not a path
    runs = teacher_runs(client)
    assert sorted(runs) == [0, 1]
    for seed, r in runs.items():
        rec = local_record(teacher_repo.path, seed)
        assert r.info.status == "FINISHED" and r.info.run_name == f"teacher/seed={seed}"
        assert r.data.tags[KEY_TAG] == rec["run_key"]
        for tag in ("finch.stage", "finch.variant", "finch.seed", "finch.profile", "finch.params_hash"):
            assert r.data.tags[tag] == rec["tags"][tag], tag
        assert r.data.params == {k: str(v)[:6000] for k, v in flatten(rec["params"]).items()}
        assert r.data.params["recipe.budgets"] == "[1.5, 2.0]"  # the smoke profile's teacher recipe
        for name, value in rec["metrics"].items():
            assert r.data.metrics[name] == pytest.approx(value), name
        curve = client.get_metric_history(r.info.run_id, "budget.test_accuracy")  # at each budget's step
        assert [m.step for m in curve] == [b["steps"] for b in rec["budgets"]] == [6, 8]
        assert [m.value for m in curve] == [b["test_accuracy"] for b in rec["budgets"]]
        assert [m.step for m in client.get_metric_history(r.info.run_id, "train_loss")] == [1, 2]
    pretrain = client.search_runs([exp.experiment_id], "tags.`finch.stage` = 'pretrain'")
    assert sorted(r.info.run_name for r in pretrain) == ["pretrain/source/seed=0", "pretrain/vit_source/seed=0"]


def test_artifacts_download_through_the_server(server, teacher_repo, tmp_path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=server.url)
    for seed, r in teacher_runs(client).items():
        assert r.info.artifact_uri.startswith("mlflow-artifacts:/"), r.info.artifact_uri
        listed = {a.path for a in client.list_artifacts(r.info.run_id)}
        assert listed == {"record"}  # no weights: the smoke profile sets log_weights: false
        dst = tmp_path / str(seed)
        dst.mkdir()
        record = Path(client.download_artifacts(r.info.run_id, "record/record.json", str(dst)))
        assert json.loads(record.read_text()) == local_record(teacher_repo.path, seed)


def test_artifacts_are_stored_by_the_server(server, teacher_repo):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=server.url)
    exp_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    for seed, r in teacher_runs(client).items():
        stored = server.artifacts / exp_id / r.info.run_id / "artifacts"
        assert json.loads((stored / "record/record.json").read_text()) == local_record(teacher_repo.path, seed)
    # nothing went to a local store next to the pipeline
    for local in ("mlflow.db", "mlartifacts", "mlruns"):
        assert not (teacher_repo.path / local).exists(), local


def test_parallel_clients_share_one_experiment(server):
    """Parallel workers logging to one server: whoever creates the experiment second uses it."""
    for trial in range(2):
        results = open_trackers_at_once(server.url, f"race{trial}")
        assert [status for status, _ in results] == ["ok", "ok"], results
        assert len({exp_id for _, exp_id in results}) == 1, results


def test_server_listens_on_loopback_only(server):
    assert listening_addresses(server.port) == {"127.0.0.1"}


def test_server_unreachable_from_other_addresses(server):
    ip = non_loopback_ipv4()
    if ip is None:
        pytest.skip("this machine has no non-loopback IPv4 address to try")
    with socket.socket() as s:
        s.settimeout(2)
        assert s.connect_ex(("127.0.0.1", server.port)) == 0
    with socket.socket() as s:
        s.settimeout(2)
        assert s.connect_ex((ip, server.port)) != 0, f"the server answers on {ip}:{server.port}"


def test_postgres_backend_store(tmp_path, monkeypatch):
    """``mlflow server --backend-store-uri postgresql://...``: synced runs land in PostgreSQL."""
    # SQLAlchemy 2.1 maps postgresql:// to psycopg (3), no longer to psycopg2
    psycopg = pytest.importorskip(
        "psycopg", reason="no PostgreSQL driver: .venv/bin/python -m pip install 'psycopg[binary]==3.3.9'"
    )
    bindir = pg_bindir()
    if bindir is None:
        pytest.skip(f"no PostgreSQL server (initdb, pg_ctl under /usr/lib/postgresql/*/bin or on PATH): {PG_INSTALL}")
    user = pg_user()
    if user is None:
        pytest.skip("running as root and no `postgres` user to run the server as (Debian's postgresql creates it)")
    from mlflow.tracking import MlflowClient

    for seed in (0, 1):
        fake_record(tmp_path / "runs", seed)
    records = find_records(tmp_path / "runs")
    row = {"metric": "accuracy", "mean": 0.55, "std": 0.07, "t_low": 0.0, "t_high": 1.0, "boot_low": 0.5}
    summaries = [
        {
            "stage": "teacher",
            "variant": "default",
            "rows": [{**row, "boot_high": 0.6}],
            "member_keys": ["key0", "key1"],
        }
    ]
    dest = tmp_path / "artifacts"
    dest.mkdir()
    monkeypatch.chdir(tmp_path)
    cfg = TrackingConfig()
    with postgres_server(bindir, user) as pg_uri, mlflow_server(pg_uri, artifacts_destination=dest.as_uri()) as url:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        assert sync(records, cfg, "pgtest", summaries) == {"logged": 2, "already_present": 0, "summaries": 1}
        assert sync(records, cfg, "pgtest", summaries) == {"logged": 0, "already_present": 2, "summaries": 0}

        client = MlflowClient(tracking_uri=url)
        exp = client.get_experiment_by_name("finch-pgtest")
        runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
        assert sorted(runs) == ["teacher/seed=0", "teacher/seed=1", "teacher/summary"]
        parent = runs["teacher/summary"].info.run_id
        assert runs["teacher/summary"].data.metrics["accuracy_mean"] == pytest.approx(0.55)
        for seed in (0, 1):
            r = runs[f"teacher/seed={seed}"]
            assert r.data.metrics["accuracy"] == pytest.approx(0.5 + seed / 10)
            assert r.data.params["recipe.lr"] == "0.1" and r.data.tags[PARENT_TAG] == parent
            stored = dest / exp.experiment_id / r.info.run_id / "artifacts"
            assert json.loads((stored / "record/record.json").read_text())["run_name"] == f"teacher/seed={seed}"

        # and they are in PostgreSQL's tables, not anywhere else
        with psycopg.connect(pg_uri) as conn, conn.cursor() as cur:
            cur.execute(
                "SELECT r.name, r.status FROM runs r JOIN experiments e ON r.experiment_id = e.experiment_id "
                "WHERE e.name = %s ORDER BY r.name",
                ("finch-pgtest",),
            )
            assert cur.fetchall() == [
                ("teacher/seed=0", "FINISHED"),
                ("teacher/seed=1", "FINISHED"),
                ("teacher/summary", "FINISHED"),
            ]
