"""A stage's runs over worker processes: the numbers do not depend on how many ran side by side."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from finch.config import FinchConfig
from finch.models import build_model
from finch.runner import PlannedVariant, plan_reference, train_plan
from finch.runs import find_records
from finch.study import Variant

from .conftest import TINY_MODEL, make_task, tiny_recipe

CPU = __import__("torch").device("cpu")


def toy_plan(cfg: FinchConfig, device) -> list[PlannedVariant]:
    """Two variants over two seeds; `second` waits for `first` of the same seed (like lp_ft) and
    has budgets (a decay branch at 1 epoch, the main run to 2)."""
    task = make_task()
    planned = []
    budgets = {"budgets": [1, 2], "scheduler": {"name": "wsd", "warmup_epochs": 0}, "select_on": "last"}
    for name, lr, needs, extra in (("first", 0.01, (), {}), ("second", 0.02, ("first",), budgets)):
        recipe = tiny_recipe(epochs=2, optimizer={"name": "adamw", "lr": lr, "weight_decay": 0.0}, **extra)
        variant = Variant(
            stage="toy",
            name=name,
            recipe=recipe,
            settings={"recipe": recipe.model_dump()},
            build_model=lambda seed: build_model(TINY_MODEL, 2, 1),
            seed_settings=(lambda seed: {"first": _first_done(seed)}) if needs else None,
        )
        planned.append(PlannedVariant(variant, task, [0, 1], Path("models"), Path("runs"), needs=needs))
    return planned


def _first_done(seed: int) -> str:
    """`second` may start only once `first` of its seed has written its weights."""
    path = Path("models") / "first" / f"seed={seed}.safetensors"
    assert path.is_file(), f"{path} missing: the dependency was not waited for"
    return "done"


def metrics_of(root: Path) -> dict:
    """Per run: its metrics, every epoch's training loss and validation loss (where it has one),
    and every budget's row (validation, test accuracy, which test images it got right)."""
    return {
        (r.variant, r.seed): (
            r.metrics,
            [(row["train_loss"], row.get("val_loss")) for row in r.history],
            [{k: v for k, v in row.items() if not k.endswith("time_s")} for row in r.budgets],
        )
        for r in find_records(root)
    }


@pytest.mark.slow
def test_same_numbers_with_one_or_two_workers(tmp_path, monkeypatch):
    results = {}
    for workers in (1, 2):
        work = tmp_path / f"w{workers}"
        work.mkdir()
        monkeypatch.chdir(work)
        cfg = FinchConfig(runtime={"progress": False, "threads": 1, "workers": workers}, tracking={"enabled": False})
        folders = train_plan(toy_plan, cfg, CPU)
        assert len(folders) == 4
        assert (work / "runs/toy/second/ensemble.json").is_file()
        results[workers] = metrics_of(work / "runs")
    assert set(results[1]) == {("first", 0), ("first", 1), ("second", 0), ("second", 1)}
    assert [row["steps"] for row in results[1][("second", 0)][2]] == [4, 8]  # the branch and the main run
    assert results[1] == results[2]  # identical, bit for bit: metrics, every epoch's losses, every budget


def test_a_plan_must_be_importable():
    def local_plan(cfg, device):
        return []

    assert plan_reference(toy_plan) == "tests.test_runner:toy_plan"
    with pytest.raises(ValueError, match="module-level"):
        plan_reference(local_plan)


def test_unknown_needs_fail_before_any_training(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    def bad_plan(cfg, device):
        planned = toy_plan(cfg, device)
        return [
            PlannedVariant(pv.variant, pv.data, pv.seeds, pv.models_root, pv.runs_root, ("nope",)) for pv in planned
        ]

    with pytest.raises(ValueError, match="needs \\['nope'\\]"):
        train_plan(bad_plan, FinchConfig(runtime={"workers": 1}), CPU)
    assert not (tmp_path / "runs").exists()


EMPTY_ABLATION = """
import runpy, sys
runpy.run_path(sys.argv[1], run_name="__main__")
print(sorted(m for m in ("torch", "timm", "mlflow") if m in sys.modules))
"""


def test_a_stage_with_nothing_to_train_skips_the_heavy_imports_and_still_writes_its_outputs(tmp_path: Path):
    import subprocess
    import sys

    import yaml

    from .conftest import REPO

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["ablation"]["run"] = []
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    done = subprocess.run(
        [sys.executable, "-c", EMPTY_ABLATION, str(REPO / "stages/ablation.py")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.strip().splitlines()[-1] == "[]"  # no torch, timm or MLflow imported
    assert (tmp_path / "models/ablation").is_dir()
    assert [p.name for p in (tmp_path / "reports/runs/ablation").iterdir()] == ["nothing_run.txt"]  # git keeps it
    assert json.loads((tmp_path / "reports/metrics/ablation.json").read_text()) == {}
    timing = json.loads((tmp_path / "reports/timing/ablation.json").read_text())
    assert timing["stage"] == "ablation" and timing["wall_s"] >= timing["startup_s"] > 0


def test_numerics_names_the_torch_build_and_the_processor_kernels():
    import re

    import torch

    from finch.train.runtime import numerics

    text = numerics("cpu")
    assert text.startswith(f"torch {torch.__version__} | cpu {torch.backends.cpu.get_cpu_capability()} | ")
    assert re.search(r" \| flags ([0-9a-f]{8}|unknown)$", text), text
