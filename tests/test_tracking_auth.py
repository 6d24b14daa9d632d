"""A shared tracking server that lets in only the team: MLflow's own basic-auth app
(``mlflow server --app-name basic-auth``). Requests without credentials or with wrong ones are
refused; the pipeline with them (MLFLOW_TRACKING_USERNAME / _PASSWORD, or ~/.mlflow/credentials)
logs every run; no credential reaches a log, a run's params or tags, or a file Finch writes."""

from __future__ import annotations

import secrets
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from finch.runs import find_records

from .servers import make_smoke_repo, mlflow_server, run, run_stages, smoke_env

pytestmark = pytest.mark.slow
ADMIN, USER = "admin", "finch-team"
EXPERIMENT = "finch-smoke"


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    """A basic-auth ``mlflow server`` on 127.0.0.1 whose admin has created the team's user."""
    import requests

    root = tmp_path_factory.mktemp("mlflow-auth")
    admin_pw, user_pw = f"admin-{secrets.token_hex(8)}", f"team-{secrets.token_hex(8)}"
    (root / "auth.ini").write_text(
        "[mlflow]\n"
        "default_permission = READ\n"
        f"database_uri = sqlite:///{root / 'auth.db'}\n"
        f"admin_username = {ADMIN}\n"
        f"admin_password = {admin_pw}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    db, dest = root / "mlflow.db", root / "artifacts"
    db.touch()
    dest.mkdir()
    env = {"MLFLOW_AUTH_CONFIG_PATH": str(root / "auth.ini"), "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16)}
    with mlflow_server(f"sqlite:///{db}", dest.as_uri(), app_name="basic-auth", env=env) as url:
        made = requests.post(
            f"{url}/api/2.0/mlflow/users/create",
            json={"username": USER, "password": user_pw},
            auth=(ADMIN, admin_pw),
            timeout=30,
        )
        assert made.status_code == 200, made.text
        yield SimpleNamespace(url=url, root=root, artifacts=dest, admin_pw=admin_pw, user_pw=user_pw)


def test_requests_without_or_with_wrong_credentials_are_refused(auth_server):
    import requests

    search = f"{auth_server.url}/api/2.0/mlflow/experiments/search"
    for auth in (None, (USER, "not-the-password"), ("stranger", auth_server.user_pw)):
        answer = requests.get(search, params={"max_results": 1}, auth=auth, timeout=30)
        assert answer.status_code == 401, (auth and auth[0], answer.status_code)
    answer = requests.get(search, params={"max_results": 1}, auth=(USER, auth_server.user_pw), timeout=30)
    assert answer.status_code == 200


def _files_holding(root: Path, secret: bytes) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and secret in p.read_bytes()]


def test_the_pipeline_logs_every_run_with_credentials_and_leaks_none(auth_server, tmp_path_factory, monkeypatch):
    from mlflow.tracking import MlflowClient

    repo, home = tmp_path_factory.mktemp("smoke-auth"), tmp_path_factory.mktemp("home")
    env = smoke_env()
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"):
        env.pop(name, None)
    env |= {"MLFLOW_TRACKING_URI": auth_server.url, "HOME": str(home)}
    make_smoke_repo(repo, env)

    # no credentials: the server refuses, the stages finish anyway and say what to set
    refused = run_stages(repo, env, ["prepare", "pretrain"])
    assert "none were given: set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD" in refused.stderr
    # credentials in the environment: the training stage logs its runs
    with_env = {**env, "MLFLOW_TRACKING_USERNAME": USER, "MLFLOW_TRACKING_PASSWORD": auth_server.user_pw}
    trained = run_stages(repo, with_env, ["train_teacher"])
    assert "MLflow: logged 2 run(s)" in trained.stderr
    # credentials in ~/.mlflow/credentials: `finch sync` logs the runs refused before
    (home / ".mlflow").mkdir()
    (home / ".mlflow/credentials").write_text(
        f"[mlflow]\nmlflow_tracking_username = {USER}\nmlflow_tracking_password = {auth_server.user_pw}\n"
    )
    synced = run([sys.executable, "-m", "finch.cli", "sync"], repo, env)

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", USER)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", auth_server.user_pw)
    client = MlflowClient(auth_server.url)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    records = find_records(repo / "reports/runs")
    assert {r.stage for r in records} == {"pretrain", "teacher"}
    logged = {r.data.tags.get("finch.run_key") for r in runs}
    assert {r.run_key for r in records} <= logged  # every run, whichever way its credentials came

    for secret in (auth_server.user_pw, auth_server.admin_pw):
        for out in (refused, trained, synced):
            assert secret not in out.stdout + out.stderr
        for r in runs:
            assert not [k for k, v in {**r.data.params, **r.data.tags}.items() if secret in v]
        assert _files_holding(repo, secret.encode()) == []  # reports/, records, dvc files, mlflow pieces
        assert _files_holding(auth_server.artifacts, secret.encode()) == []  # what the runs uploaded
