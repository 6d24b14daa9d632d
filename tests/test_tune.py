"""``finch tune`` (issue 27, point 1): an Optuna search on the validation split, pruned at the
budget branches, resumable, nested in MLflow, never reading the test split."""

from __future__ import annotations

from pathlib import Path

import optuna
import pandas as pd
import pytest
import torch

from finch.config import FinchConfig
from finch.errors import ConfigError
from finch.tune import SealedSplitError, run_search, study_name, with_values

from .conftest import TINY_MODEL, make_task

CPU = torch.device("cpu")
# the toy task: 64 training images, batch 16 → 4 steps an epoch; budgets 1, 2, 4 epochs
TOY_TUNE = {
    "stage": "teacher",
    "variant": "default",
    "trials": 4,
    "reduction_factor": 2,
    "fixed": {
        "teacher.recipe.budgets": [1, 2, 4],
        "teacher.recipe.batch_size": 16,
        "teacher.recipe.scheduler.warmup_epochs": 0,
    },
    "space": {
        "teacher.recipe.optimizer.lr": {"low": 0.001, "high": 0.03, "log": True},
        "teacher.recipe.loss.label_smoothing": {"low": 0.0, "high": 0.2, "step": 0.1},
    },
}
# what the toy plan's objective does, set by a test: read the test split, or stop like a kill
BEHAVIOUR: dict = {}


def toy_plan(cfg: FinchConfig, device) -> list:
    """Stands in for the teacher stage's plan: the tiny ResNet on the toy task, cfg.teacher.recipe."""
    from finch.models import build_model
    from finch.runner import PlannedVariant
    from finch.study import Variant
    from finch.train.losses import Objective

    def build(seed: int):
        return build_model(TINY_MODEL, 2, 1)

    def objective(data, seed):
        if BEHAVIOUR.get("read_test"):
            len(data.test)
        calls = BEHAVIOUR.get("kill_in_trial_call")
        if calls is not None:
            BEHAVIOUR["built"] = BEHAVIOUR.get("built", 0) + 1
            if BEHAVIOUR["built"] == calls:
                raise KeyboardInterrupt
        return Objective(cfg.teacher.recipe.loss, 2, cfg.teacher.recipe.augment.mixing)

    recipe = cfg.teacher.recipe
    variant = Variant(
        stage="teacher",
        name="default",
        build_model=build,
        recipe=recipe,
        settings={"recipe": recipe.model_dump()},
        objective=objective,
        budget_reference=BEHAVIOUR.get("budget_reference"),
    )
    return [PlannedVariant(variant, make_task(), cfg.seeds, Path("unused"))]


@pytest.fixture
def search_env(tmp_path, monkeypatch):
    """The toy plan as the teacher stage's, reports and MLflow in tmp_path."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(__import__("finch.tune").tune.STAGE_PLANS, "teacher", f"{__name__}:toy_plan")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    BEHAVIOUR.clear()
    yield tmp_path
    BEHAVIOUR.clear()


def toy_cfg(tmp_path: Path, **tune) -> FinchConfig:
    return FinchConfig.model_validate(
        {
            "runtime": {"progress": False},
            "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
            "data": {"split_per_seed": False},
            "tune": {**TOY_TUNE, **tune},
        }
    )


def test_a_search_runs_its_trials_prunes_at_branches_and_reports_the_best(search_env):
    cfg = toy_cfg(search_env, trials=6)
    study = run_search(cfg, CPU)
    states = [t.state.name for t in study.trials]
    assert len(states) == 6 and "COMPLETE" in states
    table = pd.read_csv("reports/tune/teacher-default.csv")
    assert list(table["trial"]) == list(range(6))
    # every trial reports the first budget's branch; complete ones every budget
    assert table["val_accuracy@1ep"].notna().all()
    complete = table[table["state"] == "complete"]
    assert complete["val_accuracy@4ep"].notna().all()
    assert (complete["value"] == complete["val_accuracy@4ep"]).all()
    if "pruned" in set(table["state"]):  # pruned at a branch: no last budget
        assert table[table["state"] == "pruned"]["val_accuracy@4ep"].isna().all()
    best = complete.loc[complete["value"].idxmax()]
    report = Path("reports/tune/teacher-default.md").read_text()
    assert f"Best: trial {int(best['trial'])}" in report
    assert "-S 'teacher.recipe.budgets=[1, 2, 4]'" in report
    assert "-S 'teacher.recipe.optimizer.lr=" in report
    assert "The test split was not read" in report


def test_successive_halving_stops_the_worst_trials_at_the_first_branch(search_env):
    # lr 1e-6 learns nothing; three such trials against a working one: the pruner cuts them
    cfg = toy_cfg(
        search_env,
        trials=6,
        space={"teacher.recipe.optimizer.lr": {"choices": [0.03, 0.000001]}},
    )
    study = run_search(cfg, CPU)
    pruned = [t for t in study.trials if t.state.name == "PRUNED"]
    assert pruned, [(t.params, t.state.name, t.intermediate_values) for t in study.trials]
    assert all(t.user_attrs["budgets"][-1]["epochs"] < 4 for t in pruned)  # stopped before the last budget


def test_the_test_split_is_sealed_during_a_search(search_env):
    cfg = toy_cfg(search_env, trials=1)
    run_search(cfg, CPU)  # a whole trial, and nothing read the test split
    BEHAVIOUR["read_test"] = True
    with pytest.raises(SealedSplitError):
        run_search(toy_cfg(search_env, trials=1, seed=3), CPU)


def test_the_same_search_gives_the_same_trials(search_env):
    cfg = toy_cfg(search_env, trials=2)
    first = run_search(cfg, CPU, storage_root=Path("a"))
    second = run_search(cfg, CPU, storage_root=Path("b"))
    assert [(t.params, t.value, t.intermediate_values) for t in first.trials] == [
        (t.params, t.value, t.intermediate_values) for t in second.trials
    ]


def test_a_killed_search_resumes_and_runs_the_interrupted_trial_again(search_env):
    cfg = toy_cfg(search_env, trials=3, pruner="none")
    BEHAVIOUR["kill_in_trial_call"] = 2  # trial 1 is killed as it starts training
    with pytest.raises(KeyboardInterrupt):
        run_search(cfg, CPU)
    BEHAVIOUR.pop("kill_in_trial_call")
    study = run_search(cfg, CPU)
    by_number = {t.number: t for t in study.trials}
    assert by_number[1].user_attrs.get("interrupted") and by_number[1].state.name == "FAIL"
    retry = [t for t in study.trials if t.user_attrs.get("retry_of") == 1]
    assert len(retry) == 1 and retry[0].params == by_number[1].params and retry[0].state.name == "COMPLETE"
    assert sum(t.state.name == "COMPLETE" for t in study.trials) == 3
    # a hard kill leaves a trial RUNNING: the next search runs it again too
    storage = optuna.storages.RDBStorage(f"sqlite:///.finch/tune/{study_name(cfg)}.db")
    loaded = optuna.load_study(study_name=study_name(cfg), storage=storage)
    orphan = loaded.ask({"teacher.recipe.optimizer.lr": optuna.distributions.FloatDistribution(0.001, 0.03, log=True)})
    resumed = run_search(with_values(cfg, {"tune.trials": 4}), CPU)
    assert any(t.user_attrs.get("retry_of") == orphan.number and t.state.name == "COMPLETE" for t in resumed.trials)


def test_trials_are_mlflow_runs_nested_under_one_parent_per_search(search_env):
    from mlflow.tracking import MlflowClient

    cfg = toy_cfg(search_env, trials=2, pruner="none")
    run_search(cfg, CPU)
    run_search(with_values(cfg, {"tune.trials": 3}), CPU)  # resumed: the same parent
    client = MlflowClient(tracking_uri=cfg.tracking.uri)
    runs = client.search_runs([client.get_experiment_by_name("finch-default").experiment_id])
    parents = [r for r in runs if r.data.tags.get("finch.kind") == "tune"]
    trials = [r for r in runs if r.data.tags.get("finch.kind") == "tune_trial"]
    assert len(parents) == 1 and len(trials) == 3
    assert {r.data.tags["mlflow.parentRunId"] for r in trials} == {parents[0].info.run_id}
    history = client.get_metric_history(trials[0].info.run_id, "budget.val_accuracy")
    assert [m.step for m in history] == [4, 8, 16]
    assert "teacher.recipe.optimizer.lr" in trials[0].data.params


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({"teacher.recipe.optimizer.lrr": {"low": 0.001, "high": 0.01}}, "lrr: unknown key"),
        ({"teacher.recipe.optimizer.lr": {"low": 0.001, "high": 20.0}}, "cannot take 20.0"),
        ({"student.recipe.optimizer.lr": {"low": 0.001, "high": 0.01}}, "does not change teacher/default"),
    ],
)
def test_a_bad_search_space_fails_before_any_trial(search_env, space, message):
    with pytest.raises(ConfigError, match=message):
        run_search(toy_cfg(search_env, space=space), CPU)
    assert not Path("reports/tune").exists()


def test_an_unknown_variant_is_named_with_the_stages_variants(search_env):
    with pytest.raises(ConfigError, match="not a variant of stage teacher.*default"):
        run_search(toy_cfg(search_env, variant="hard"), CPU)


def test_choices_can_be_lists_and_mappings(search_env):
    """A tokenizer, a set of budgets, an augmentation block: searched as whole values."""
    augment = [{"flip": False, "translate": 0}, {"flip": True, "translate": 1}]
    cfg = toy_cfg(search_env, trials=2, pruner="none", space={"teacher.recipe.augment": {"choices": augment}})
    study = run_search(cfg, CPU)
    from finch.tune import best_values, decoded

    seen = [decoded(t.params, cfg.tune.space)["teacher.recipe.augment"] for t in study.trials]
    assert all(value in augment for value in seen)
    assert best_values(study, cfg)["teacher.recipe.augment"] in augment
    report = Path("reports/tune/teacher-default.md").read_text()
    assert "-S 'teacher.recipe.augment={flip: " in report


def test_budget_columns_count_epochs_of_the_stages_reference_set(search_env):
    """train_augmented's budgets count epochs of the real images, whatever a mix trains on: the
    table names a budget as the recipe states it (here 32 reference images against the task's 64,
    so a budget of 4 epochs is 2 passes over the trained images)."""
    BEHAVIOUR["budget_reference"] = 32
    cfg = toy_cfg(search_env, trials=1, pruner="none")
    run_search(cfg, CPU)
    table = pd.read_csv("reports/tune/teacher-default.csv")
    assert [c for c in table.columns if c.startswith("val_accuracy@")] == [
        "val_accuracy@1ep",
        "val_accuracy@2ep",
        "val_accuracy@4ep",
    ]
    assert table["val_accuracy@4ep"].notna().all()


def test_the_grid_sampler_runs_every_combination_once(search_env):
    space = {
        "teacher.recipe.optimizer.lr": {"choices": [0.003, 0.01]},
        "teacher.recipe.loss.label_smoothing": {"choices": [0.0, 0.1]},
    }
    cfg = toy_cfg(search_env, trials=4, pruner="none", sampler="grid", space=space)
    study = run_search(cfg, CPU)
    combos = {tuple(t.params.values()) for t in study.trials}
    assert combos == {(0.003, 0.0), (0.003, 0.1), (0.01, 0.0), (0.01, 0.1)}


def test_a_fixed_null_and_a_trials_value_are_set_in_one_merge():
    """params.yaml pins the student's patch (7, the size rule's for 28 px); a tokenizer needs
    patches of 1: `fixed: {student.model.kwargs.patch_size: null}` unsets it for every trial."""
    cfg = FinchConfig.model_validate({"student": {"model": {"kwargs": {"patch_size": 7}}}})
    unset = {"student.model.kwargs.patch_size": None}
    tokenizer = {"student.model.tokenizer": {"channels": [8, 16]}}
    assert with_values(cfg, {**unset, **tokenizer}).student.model.kwargs["patch_size"] == 1
    assert with_values(cfg, unset).student.model.kwargs["patch_size"] == 7
    with pytest.raises(ConfigError, match="patch_size must be 1"):
        with_values(cfg, tokenizer)
