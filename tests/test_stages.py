"""One hop from dvc.yaml to a stage's code: the table of stages (finch.pipeline.table), the
entry scripts and dvc.yaml agree, and a stage's code deps are what it imports, so an edit to
the training engine re-runs the training stages and nothing else."""

from __future__ import annotations

import ast
import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from finch.pipeline.table import STAGES

from .conftest import REPO

DVC = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
INFRASTRUCTURE = {"__init__", "entry", "paths", "table", "training"}  # finch/pipeline modules that are no stage


def _keys(entries: list | None) -> list[str]:
    return [next(iter(e)) if isinstance(e, dict) else e for e in entries or []]


def test_dvc_yaml_has_the_tables_stages_in_its_order():
    assert list(DVC) == list(STAGES)


@pytest.mark.parametrize("name", list(STAGES))
def test_dvc_yaml_stage_follows_its_row(name):
    row, stage = STAGES[name], DVC[name]
    assert stage["cmd"] == row.cmd
    assert _keys(stage.get("params")) == list(row.params)
    assert _keys(stage.get("outs")) == list(row.outs)
    assert _keys(stage.get("metrics")) == list(row.metrics)
    artefacts = [d for d in stage["deps"] if not d.startswith(("src/", "stages/"))]
    assert artefacts == list(row.deps)
    assert row.timing in row.outs  # every stage process writes its timing file (finch.pipeline.entry)


@pytest.mark.parametrize("name", list(STAGES))
def test_entry_script_runs_the_module_named_after_its_stage(name):
    """stages/X.py imports finch.pipeline.X and hands it to run_stage: one hop to the code."""
    script = REPO / STAGES[name].script
    tree = ast.parse(script.read_text())
    imported = {(n.module, a.name) for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    assert ("finch.pipeline", name) in imported
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "run_stage"]
    assert [ast.unparse(c) for c in calls] == [f"run_stage({name})"]
    module = importlib.import_module(STAGES[name].module)
    assert callable(module.run)


def test_every_pipeline_module_is_a_stage_or_named_infrastructure():
    modules = {p.stem for p in (REPO / "src/finch/pipeline").glob("*.py")}
    assert modules - INFRASTRUCTURE == set(STAGES)
    assert {p.stem for p in (REPO / "stages").glob("*.py")} == set(STAGES)


def test_training_stages_write_the_records_and_metrics_of_their_row():
    for row in STAGES.values():
        if row.records:
            assert f"reports/runs/{row.records}" in row.outs and f"models/{row.records}" in row.outs
            assert row.metrics == (f"reports/metrics/{row.name}.json",)


def _run(cmd: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"{' '.join(cmd)} failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}"
    return out


def test_an_engine_edit_invalidates_the_training_stages_and_nothing_else(tmp_path):
    """`dvc status` after an edit to src/finch/train/engine.py: every stage that trains through
    the engine is changed; prepare, floors, the aggregate (and the rest) stay up to date. The
    outputs are stand-ins (`dvc commit` records them), so no stage runs."""
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("dvc.yaml", "params.yaml", "stages", "src", "pyproject.toml"):
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, repo / name)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}
    _run(["git", "init", "-q"], repo, env)
    _run(["dvc", "init", "-q"], repo, env)
    for row in STAGES.values():  # stand-ins for every output and artefact dep
        for path in (*row.outs, *row.metrics, *row.deps):
            target = repo / path
            if target.suffix:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text("{}")
            else:
                target.mkdir(parents=True, exist_ok=True)
                (target / "stand-in.txt").write_text(path)
    _run(["dvc", "commit", "-f", "-q"], repo, env)
    assert json.loads(_run(["dvc", "status", "--json"], repo, env).stdout or "{}") == {}

    engine = repo / "src/finch/train/engine.py"
    engine.write_text(engine.read_text() + "\n# an edit\n")
    changed = set(json.loads(_run(["dvc", "status", "--json"], repo, env).stdout or "{}"))
    training = {"pretrain", "train_teacher", "train_student", "finetune", "train_augmented", "ablation"}
    assert changed == training
    assert not changed & {"prepare", "floors", "aggregate"}
