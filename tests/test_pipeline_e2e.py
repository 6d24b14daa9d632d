"""End to end: the smoke profile through `dvc repro` in a temporary copy of the repository."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from finch.runs import find_records

from .conftest import REPO

pytestmark = pytest.mark.slow
COPY = ["dvc.yaml", "profiles", "stages", "src", "pyproject.toml"]


def run(cmd: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert out.returncode == 0, f"{' '.join(cmd)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


@pytest.fixture(scope="module")
def smoke_repo(tmp_path_factory) -> tuple[Path, dict]:
    repo = tmp_path_factory.mktemp("smoke")
    for name in COPY:
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, repo / name)
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "MLFLOW_TRACKING_URI": "",
        "DVC_NO_ANALYTICS": "1",
    }
    env.pop("MLFLOW_TRACKING_URI")
    run(["git", "init", "-q"], repo, env)
    run(["dvc", "init", "-q"], repo, env)
    run([sys.executable, "-m", "finch.cli", "profile", "smoke"], repo, env)
    run(["dvc", "repro"], repo, env)
    return repo, env


def test_smoke_outputs_and_records(smoke_repo):
    repo, _ = smoke_repo
    for path in [
        "data/prepared/card.json",
        "models/pretrain/backbone.safetensors",
        "reports/results.md",
        "reports/summary.json",
        "reports/runs.csv",
        "reports/figures/teacher_confusion.png",
        "reports/figures/forest_accuracy.png",
    ]:
        assert (repo / path).is_file(), path
    records = find_records(repo / "reports/runs")
    assert sorted((r.data["stage"], r.data["seed"]) for r in records) == [
        ("pretrain", 0),
        ("teacher", 0),
        ("teacher", 1),
    ]
    results = (repo / "reports/results.md").read_text()
    assert "CNN teacher" in results and "95% t interval" in results


def test_mlflow_has_every_run(smoke_repo):
    import mlflow

    repo, _ = smoke_repo
    mlflow.set_tracking_uri(f"sqlite:///{repo / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["finch-smoke"])
    seeds = runs[runs["tags.finch.kind"].isna()] if "tags.finch.kind" in runs else runs
    assert sorted(seeds["tags.mlflow.runName"]) == ["pretrain/source/seed=0", "teacher/seed=0", "teacher/seed=1"]
    assert set(runs["status"]) == {"FINISHED"}
    assert seeds["metrics.accuracy"].between(0, 1).all()
    summaries = runs[runs["tags.finch.kind"] == "summary"]
    assert sorted(summaries["tags.mlflow.runName"]) == ["pretrain/source/summary", "teacher/summary"]


def test_second_repro_does_nothing_and_param_change_reruns_only_teacher(smoke_repo):
    repo, env = smoke_repo
    out = run(["dvc", "repro"], repo, env)
    assert "Running stage" not in out.stdout
    status = run(["dvc", "status"], repo, env).stdout
    assert "up to date" in status
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["teacher"]["recipe"]["epochs"] = 1
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = run(["dvc", "repro"], repo, env).stdout
    ran = {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}
    assert ran == {"train_teacher", "aggregate"}


def test_bad_params_fail_before_work(smoke_repo):
    repo, env = smoke_repo
    params = (repo / "params.yaml").read_text()
    (repo / "params.yaml").write_text(params.replace("val_fraction: 0.2", "val_fraction: 2"))
    out = subprocess.run([sys.executable, "stages/prepare.py"], cwd=repo, env=env, capture_output=True, text=True)
    (repo / "params.yaml").write_text(params)
    assert out.returncode == 2
    assert "data.val_fraction" in out.stderr and "Traceback" not in out.stderr
