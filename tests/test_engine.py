import math

import pytest
import torch

from finch.errors import NonFiniteLossError
from finch.evaluate import classification_metrics, predict_proba
from finch.models import build_model
from finch.train.checkpoint import load_resume_state
from finch.train.engine import TrainState, fit
from finch.train.losses import Objective
from finch.train.optim import build_optimizer, build_scheduler
from finch.train.runtime import seed_everything

from .conftest import TINY_MODEL, tiny_recipe

CPU = torch.device("cpu")


def train(task, recipe, seed=0, **kw):
    torch.manual_seed(seed)
    model = build_model(TINY_MODEL, task.num_classes, task.in_chans)
    return fit(model, task, recipe, seed=seed, device=CPU, progress=False, **kw)


def test_tiny_model_learns_separable_task(toy_task):
    result = train(toy_task, tiny_recipe(epochs=5))
    probs, speed = predict_proba(result.model, toy_task.test, toy_task.to_inputs, 32, CPU)
    metrics, _ = classification_metrics(toy_task.test.y.numpy(), probs, toy_task.class_names)
    assert metrics["accuracy"] >= 0.95
    assert speed > 0 and len(result.history) == 5
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {
            "augment": {"flip": True, "translate": 1, "erasing": 0.5, "mixup_alpha": 0.4, "cutmix_alpha": 1.0},
            "ema": {"enabled": True, "decay": 0.9},
            "loss": {"name": "focal", "label_smoothing": 0.1},
        },
    ],
)
def test_same_seed_same_numbers(toy_task, extra):
    recipe = tiny_recipe(epochs=3, **extra)
    a, b = train(toy_task, recipe, seed=3), train(toy_task, recipe, seed=3)
    assert [r["val_loss"] for r in a.history] == [r["val_loss"] for r in b.history]
    for (k, va), vb in zip(a.model.state_dict().items(), b.model.state_dict().values(), strict=True):
        assert torch.equal(va, vb), k
    c = train(toy_task, recipe, seed=4)
    assert [r["val_loss"] for r in a.history] != [r["val_loss"] for r in c.history]


class CrashAt:
    """An objective that dies on its n-th call, like a process killed mid-epoch."""

    def __init__(self, inner: Objective, at_call: int):
        self.inner, self.at_call, self.calls = inner, at_call, 0
        self.logits = inner.logits

    def loss(self, outputs, targets, inputs):
        self.calls += 1
        if self.calls == self.at_call:
            raise KeyboardInterrupt("simulated crash")
        return self.inner.loss(outputs, targets, inputs)


@pytest.mark.parametrize("scheduler", ["cosine", "plateau", "multistep"])
def test_resume_after_crash_matches_uninterrupted_run(toy_task, tmp_path, scheduler):
    recipe = tiny_recipe(
        epochs=4,
        scheduler={"name": scheduler, "warmup_epochs": 1, "milestones": [2]},
        ema={"enabled": True, "decay": 0.9},
        augment={"flip": True, "translate": 1, "erasing": 0.3, "mixup_alpha": 0.2},
    )
    full = train(toy_task, recipe, seed=1)
    ckpt = tmp_path / "ckpt.pt"
    steps_per_epoch = len(toy_task.train) // recipe.batch_size
    crashing = CrashAt(Objective(recipe.loss, 2, mixing=True), at_call=2 * steps_per_epoch + 2)  # epoch 3
    with pytest.raises(KeyboardInterrupt):
        train(toy_task, recipe, seed=1, objective=crashing, checkpoint_path=ckpt, fingerprint="run")
    assert ckpt.is_file()
    resumed = train(toy_task, recipe, seed=1, checkpoint_path=ckpt, fingerprint="run")
    assert resumed.resumed_from_epoch == 2
    assert [r["val_loss"] for r in resumed.history] == [r["val_loss"] for r in full.history]
    for va, vb in zip(full.model.state_dict().values(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(va, vb)


def test_checkpoint_of_other_settings_is_ignored(toy_task, tmp_path):
    ckpt = tmp_path / "ckpt.pt"
    recipe = tiny_recipe(epochs=2)
    train(toy_task, recipe, checkpoint_path=ckpt, fingerprint="a")
    again = train(toy_task, recipe, checkpoint_path=ckpt, fingerprint="b")
    assert again.resumed_from_epoch is None and len(again.history) == 2


def test_non_finite_loss_stops_the_run(toy_task):
    class NaNLoss(Objective):
        def loss(self, outputs, targets, inputs):
            return super().loss(outputs, targets, inputs) * math.nan

    recipe = tiny_recipe(epochs=2)
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at epoch 1, step 1.*recipe.optimizer.lr"):
        train(toy_task, recipe, objective=NaNLoss(recipe.loss, 2, mixing=False))


def test_early_stopping_and_best_epoch_selection(toy_task):
    result = train(toy_task, tiny_recipe(epochs=30, early_stopping_patience=2, select_on="val_accuracy"))
    assert result.stopped_early and len(result.history) < 30
    best = max(result.history, key=lambda r: r["val_accuracy"])  # the first of equals
    assert result.best_epoch == best["epoch"]
    assert len(result.history) == result.best_epoch + 2


def assert_same(a, b, where="state"):
    """Exact equality of nested state: tensors by value, everything else by ==."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), where
        for key in a:
            assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def test_train_state_round_trips_through_a_checkpoint(toy_task, tmp_path):
    from timm.utils import ModelEmaV3

    recipe = tiny_recipe(
        epochs=2,
        scheduler={"name": "plateau", "warmup_epochs": 1},
        ema={"enabled": True, "decay": 0.9},
    )
    ckpt = tmp_path / "ckpt.pt"
    train(toy_task, recipe, seed=2, checkpoint_path=ckpt, fingerprint="run")
    saved = load_resume_state(ckpt, "run")
    assert saved is not None and saved["epoch"] == 2 and saved["global_step"] == 2 * 4

    torch.manual_seed(7)  # other weights and RNG state: everything must come from the checkpoint
    model = build_model(TINY_MODEL, toy_task.num_classes, toy_task.in_chans)
    optimizer = build_optimizer(model, recipe.optimizer)
    scheduler = build_scheduler(optimizer, recipe.scheduler, recipe.epochs, 4)
    state = TrainState(model, optimizer, scheduler, ModelEmaV3(model, decay=0.9), None, seed_everything(7))
    state.load_state_dict(saved)
    assert_same({"fingerprint": "run", **state.state_dict()}, saved)
    assert state.best_epoch in (1, 2) and len(state.history) == 2 and state.eval_model is state.ema.module


def test_resuming_a_finished_run_returns_its_selected_model(toy_task, tmp_path):
    ckpt = tmp_path / "ckpt.pt"
    recipe = tiny_recipe(epochs=2)
    first = train(toy_task, recipe, checkpoint_path=ckpt, fingerprint="a")
    again = train(toy_task, recipe, seed=5, checkpoint_path=ckpt, fingerprint="a")
    assert again.resumed_from_epoch == 2 and again.history == first.history
    assert again.best_epoch == first.best_epoch
    assert_same(again.model.state_dict(), first.model.state_dict())


def test_data_stays_where_it_is_on_the_cpu(toy_task):
    """Images move to a GPU once per run (``TaskData.on_device``); on the CPU nothing is copied,
    so a CPU run's batches, and numbers, are what they were."""
    assert toy_task.on_device(torch.device("cpu")) is toy_task


def test_optimizer_on_the_cpu_steps_parameter_by_parameter(toy_task):
    """foreach=False on the CPU keeps the CPU study's numbers (a foreach step rounds differently);
    a GPU model gets torch's default (multi-tensor kernels), which this CPU test cannot see."""
    from finch.config import OptimizerConfig

    model = build_model(TINY_MODEL, toy_task.num_classes, toy_task.in_chans)
    for name in ("sgd", "adamw"):
        optimizer = build_optimizer(model, OptimizerConfig(name=name))
        assert all(group["foreach"] is False for group in optimizer.param_groups), name


def test_a_stage_with_tracking_off_never_imports_mlflow(tmp_path):
    """run_stage pre-imports a stage's heavy modules for its start-up timing, but not MLflow when
    tracking is off: a machine without MLflow (the lent GPU) runs the stages."""
    import subprocess
    import sys

    import yaml

    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"tracking": {"enabled": False}}))
    code = (  # a stage whose row imports MLflow at start-up (train_teacher's), with tracking off
        "import sys, types\n"
        "from finch.pipeline.entry import run_stage\n"
        "from finch.pipeline.table import STAGES\n"
        "assert 'mlflow' in STAGES['train_teacher'].imports\n"
        "def run(cfg):\n"
        "    assert 'timm' in sys.modules, 'the row\\'s other imports were not made'\n"
        "    assert 'mlflow' not in sys.modules, 'mlflow imported'\n"
        "    print('ran')\n"
        "stage = types.ModuleType('finch.pipeline.train_teacher')\n"
        "stage.run = run\n"
        "run_stage(stage)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "ran" in out.stdout
