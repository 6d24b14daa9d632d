"""Budget curves from one run: the wsd schedule and its decay branches (issue 26, point 1)."""

import pytest
import torch
from pydantic import ValidationError

from finch.models import build_model
from finch.train.engine import fit
from finch.train.optim import build_scheduler, wsd_decay_steps

from .conftest import TINY_MODEL, tiny_recipe
from .test_engine import CrashAt, assert_same

CPU = torch.device("cpu")
STEPS_PER_EPOCH = 4  # toy task: 64 training images, batch 16; budgets below in epochs (x 4 = steps)


def wsd(budgets, **extra):
    return tiny_recipe(
        budgets=budgets,
        scheduler={"name": "wsd", "warmup_epochs": 1, "decay_fraction": 0.25},
        select_on="last",
        ema={"enabled": True, "decay": 0.9},
        augment={"flip": True, "translate": 1, "mixup_alpha": 0.2},
        **extra,
    )


def train(task, recipe, seed=1, **kw):
    torch.manual_seed(seed)
    model = build_model(TINY_MODEL, task.num_classes, task.in_chans)
    return fit(model, task, recipe, seed=seed, device=CPU, progress=False, **kw)


def test_the_main_run_is_the_same_with_and_without_a_branch(toy_task):
    alone, branched = train(toy_task, wsd([5.5])), train(toy_task, wsd([3.5, 5.5]))
    assert [r["steps"] for r in alone.budgets] == [22] and [r["steps"] for r in branched.budgets] == [14, 22]
    timed_as_alone = [
        {**r, "epoch_time_s": a["epoch_time_s"]} for a, r in zip(alone.history, branched.history, strict=True)
    ]
    assert_same(alone.history, timed_as_alone)  # train loss and rate of every epoch
    assert_same(alone.model.state_dict(), branched.model.state_dict())
    assert alone.budgets[0]["val_loss"] == branched.budgets[1]["val_loss"]
    # 22 steps = 5 full epochs and 2 steps: the last epoch is cut where the budget ends
    assert len(alone.history) == 6


def test_a_branch_is_the_run_that_ends_at_its_budget(toy_task):
    """Same stable phase, same decay: the branch at 14 steps gives what a 14-step run gives."""
    branched, short = train(toy_task, wsd([3.5, 5.5])), train(toy_task, wsd([3.5]))
    for key in ("val_loss", "val_accuracy"):
        assert branched.budgets[0][key] == short.budgets[0][key]
    assert branched.budgets[0]["val_loss"] != branched.budgets[1]["val_loss"]


def test_the_hook_sees_each_branchs_model_at_the_end_of_its_decay(toy_task):
    seen = []

    def hook(model, row):
        seen.append((row["steps"], model.training, "val_accuracy" in row))
        return {"marker": row["steps"] * 10}

    result = train(toy_task, wsd([2.5, 4, 5.5]), on_budget=hook)
    # the last budget's model is the one returned: its caller tests it (once), not the hook
    assert seen == [(10, False, True), (16, False, True)]
    assert [r.get("marker") for r in result.budgets] == [100, 160, None]
    assert all(r["branch_time_s"] > 0 for r in result.budgets[:2])
    assert result.branch_time_s == sum(r["branch_time_s"] for r in result.budgets[:2])
    assert result.train_loop_s + result.branch_time_s <= result.train_time_s


# the branch to 14 steps decays over steps 11-14 (calls 11-14), then the main run goes on from step 10:
# call 12 dies inside the branch (resumed from the state kept at its start, after epoch 2), call 20
# in the main run's epoch 4 (resumed after epoch 3, the branch done)
@pytest.mark.parametrize(("crash_step", "resumed_after"), [(12, 2), (20, 3)])
def test_resume_after_a_kill_inside_a_branch_matches_the_uninterrupted_run(
    toy_task, tmp_path, crash_step, resumed_after
):
    recipe = wsd([3.5, 5.5])
    full = train(toy_task, recipe)
    ckpt = tmp_path / "ckpt.pt"
    from finch.train.losses import Objective

    crashing = CrashAt(Objective(recipe.loss, 2, mixing=True), at_call=crash_step)
    with pytest.raises(KeyboardInterrupt):
        train(toy_task, recipe, objective=crashing, checkpoint_path=ckpt, fingerprint="run")
    resumed = train(toy_task, recipe, checkpoint_path=ckpt, fingerprint="run")
    assert resumed.resumed_from_epoch == resumed_after
    for a, b in zip(full.budgets, resumed.budgets, strict=True):
        assert (a["steps"], a["val_loss"], a["val_accuracy"]) == (b["steps"], b["val_loss"], b["val_accuracy"])
    assert [r["train_loss"] for r in resumed.history] == [r["train_loss"] for r in full.history]
    assert_same(full.model.state_dict(), resumed.model.state_dict())


def test_wsd_rate_warms_up_holds_then_decays_to_the_floor():
    recipe = wsd([10])
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=recipe.optimizer.lr)
    sched = build_scheduler(opt, recipe.scheduler, recipe.epochs, STEPS_PER_EPOCH, total_steps=40)
    rates = []
    for step in range(40):
        rates.append(opt.param_groups[0]["lr"])
        sched.step_update(step + 1)
    peak = recipe.optimizer.lr
    assert rates[0] < peak and rates[4] == rates[30] == peak  # warm-up: one epoch of 4 steps; then stable
    assert wsd_decay_steps(40, recipe.scheduler) == 10 and rates[31] < peak and rates[-1] < 0.2 * peak
    assert all(a >= b for a, b in zip(rates[30:], rates[31:], strict=False))


@pytest.mark.parametrize(
    ("recipe", "message"),
    [
        (dict(budgets=[10], scheduler={"name": "cosine"}), "need scheduler.name: wsd"),
        (dict(budgets=[5, 2.5], scheduler={"name": "wsd"}, select_on="last"), "increasing order"),
        (dict(scheduler={"name": "wsd"}), "set select_on: last"),
        (
            dict(scheduler={"name": "wsd"}, select_on="last", early_stopping_patience=3),
            "set early_stopping_patience: 0",
        ),
    ],
)
def test_bad_budget_recipes_are_refused(recipe, message):
    with pytest.raises(ValidationError, match=message):
        tiny_recipe(**recipe)


def test_a_branch_decaying_inside_the_warm_up_is_refused_before_training(toy_task):
    with pytest.raises(ValueError, match="budget of 4 optimizer steps.*inside the warm-up"):
        train(toy_task, wsd([1, 5.5]))


def test_budgets_count_epochs_of_the_reference_set_so_variants_train_the_same_steps(toy_task, monkeypatch):
    """train_augmented: a variant on twice the images trains the same optimizer steps as the one on
    the real images alone, when its budgets count epochs of the real images."""
    from dataclasses import replace

    from finch.data.splits import Split
    from finch.train.engine import budget_steps

    recipe = wsd([3.5, 5.5])
    doubled = replace(toy_task, train=Split(toy_task.train.x.repeat(2, 1, 1, 1), toy_task.train.y.repeat(2)))
    assert budget_steps(recipe, len(toy_task.train)) == ([14, 22], 4)
    assert budget_steps(recipe, len(doubled.train)) == ([28, 44], 8)  # its own epochs: twice the steps
    from finch.train import engine

    warmups = []

    def recording(*args, **kwargs):
        sched = build_scheduler(*args, **kwargs)
        warmups.append(sched.warmup_t)
        return sched

    monkeypatch.setattr(engine, "build_scheduler", recording)
    own, same = train(doubled, recipe), train(doubled, recipe, budget_reference=len(toy_task.train))
    assert warmups == [8, 4]  # one epoch of warm-up: of its own images, or of the reference's
    assert [r["steps"] for r in own.budgets] == [28, 44]
    assert [r["steps"] for r in same.budgets] == [14, 22] and [r["epochs"] for r in same.budgets] == [1.75, 2.75]


def test_budgets_that_come_to_the_same_steps_fail_before_training(toy_task):
    """64 images at batch 32: 2 steps an epoch, so 1.1 and 1.2 epochs both round to 2 steps."""
    from finch.errors import ConfigError

    with pytest.raises(ConfigError, match=r"come to \[2, 2\] optimizer steps at batch 32"):
        train(toy_task, wsd([1.1, 1.2], batch_size=32))
