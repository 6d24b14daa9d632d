"""The one training engine. Every stage trains through :func:`fit`.

Stages differ only in the model, the data and the :class:`Objective`; the loop below is
the whole of training: batched augmentation, optimizer and schedule, EMA, AMP on CUDA,
gradient clipping, validation every epoch with best-checkpoint selection and early
stopping, resume from the last epoch's checkpoint, and a clear stop on a non-finite loss.
:class:`TrainState` is everything that changes while training (and what a resume checkpoint
holds); :func:`train_steps` is the step loop. With the ``wsd`` schedule, every budget but
the last is a decay branch off the one main run (:func:`run_branch`). The test split is not seen here: callers
evaluate it once, after ``fit``.
"""

from __future__ import annotations

import copy
import logging
import math
import sys
import time
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from timm.scheduler.scheduler import Scheduler
from timm.utils import ModelEmaV3
from tqdm.auto import tqdm

from finch import distributed
from finch.config import RecipeConfig
from finch.data.splits import TaskData
from finch.errors import ConfigError, NonFiniteLossError
from finch.evaluate import autocast_for, predict_proba
from finch.models import keep_frozen_norms_in_eval
from finch.train.augment import BatchAugment, TensorRandAugment, black_level
from finch.train.checkpoint import load_resume_state, save_resume_state
from finch.train.losses import Objective, ParameterPenalty
from finch.train.optim import (
    build_optimizer,
    build_scheduler,
    check_wsd_budget,
    current_lr,
    end_wsd_at,
    load_scheduler_state,
    scheduler_state,
    wsd_decay_steps,
)
from finch.train.runtime import restore_rng_state, rng_state, seed_everything

log = logging.getLogger(__name__)


@dataclass
class FitResult:
    """The selected model (best validation epoch) and how training went."""

    model: torch.nn.Module
    history: list[dict] = field(default_factory=list)
    best_epoch: int | None = 0  # None: a k-fold ensemble (each fold has its own)
    train_time_s: float = 0.0  # every epoch's wall time (training loop, validation) and the decay branches'
    train_loop_s: float = 0.0  # the main run's training loop alone
    branch_time_s: float = 0.0  # the decay branches (their steps and evaluation), within train_time_s
    train_images_per_s: float = 0.0
    stopped_early: bool = False
    resumed_from_epoch: int | None = None
    # wsd: one row per budget (optimizer steps), the model at the end of that budget's decay
    budgets: list[dict] = field(default_factory=list)


# called at the end of every decay branch with the model evaluated there and the budget's row so far
# (steps, epochs, validation numbers); what it returns is added to the row (a study adds the test
# split's predictions; a search reports the validation accuracy to its trial, which may stop there)
BudgetHook = Callable[[torch.nn.Module, dict], dict]


def _score(row: dict, select_on: str) -> float:
    if select_on == "last":
        return float(row["epoch"])
    return row["val_accuracy"] if select_on == "val_accuracy" else -row["val_loss"]


def validate(model, data: TaskData, recipe: RecipeConfig, device, objective) -> dict:
    split = data.val
    probs, _ = predict_proba(
        model, split, data.to_inputs, recipe.eval_batch_size, device, objective.logits, recipe.channels_last, recipe.tta
    )
    y = split.y.cpu().numpy()
    p_true = np.clip(probs[np.arange(len(y)), y], 1e-12, 1.0)
    return {"val_loss": float(-np.log(p_true).mean()), "val_accuracy": float((probs.argmax(1) == y).mean())}


@dataclass
class TrainState:
    """Everything that changes while a run trains; :meth:`state_dict` is a resume checkpoint.

    ``epoch`` counts finished epochs; ``best_state`` holds the weights of the best one. ``order``
    is the running epoch's permutation (an epoch can be cut by a decay branch or a resume),
    ``epoch_loss`` the sum of its losses so far, ``budgets`` the rows of the finished budgets.
    """

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Scheduler | None
    ema: ModelEmaV3 | None
    scaler: torch.amp.GradScaler | None
    generator: torch.Generator
    epoch: int = 0
    global_step: int = 0
    best_score: float = -math.inf
    best_state: dict | None = None
    best_epoch: int = 0
    stale: int = 0  # epochs since the best one
    history: list[dict] = field(default_factory=list)
    train_time_s: float = 0.0  # wall time of the epochs, validation included
    train_images: int = 0  # images trained on (all ranks), for the throughput
    train_seconds: float = 0.0  # ... and the time that took
    order: torch.Tensor | None = None
    epoch_loss: float = 0.0
    budgets: list[dict] = field(default_factory=list)

    @property
    def eval_model(self) -> torch.nn.Module:
        """The model validated and selected: the EMA weights when EMA is on."""
        return self.ema.module if self.ema is not None else self.model

    def record_epoch(self, row: dict, score: float) -> None:
        """Add a finished epoch's row; keep its weights when ``score`` is the best so far."""
        self.epoch = row["epoch"]
        self.history.append(row)
        self.train_time_s += row["epoch_time_s"]
        if score > self.best_score:
            self.best_score, self.best_state, self.stale = score, copy.deepcopy(self.eval_model.state_dict()), 0
            self.best_epoch = self.epoch
        else:
            self.stale += 1

    def state_dict(self) -> dict:
        """Tensors and plain data only, so that it loads back with ``torch.load(weights_only=True)``."""
        return {
            **{name: getattr(self, name) for name in _PROGRESS},
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": scheduler_state(self.scheduler),
            "ema": self.ema.module.state_dict() if self.ema is not None else {},
            "scaler": self.scaler.state_dict() if self.scaler is not None else {},
            "rng": rng_state(self.generator),
        }

    def load_state_dict(self, state: dict) -> None:
        for name in _PROGRESS:
            setattr(self, name, state[name])
        self.history, self.budgets = list(self.history), list(self.budgets)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        load_scheduler_state(self.scheduler, state["scheduler"])
        if self.ema is not None:
            self.ema.module.load_state_dict(state["ema"])
        if self.scaler is not None:
            self.scaler.load_state_dict(state["scaler"])
        restore_rng_state(state["rng"], self.generator)


# the counters (the fields with a start value) are saved as they are; the parts above them
# (model, optimizer, ...) each through their own state dict
_PROGRESS = tuple(f.name for f in fields(TrainState) if f.default is not MISSING or f.default_factory is not MISSING)


@dataclass(frozen=True)
class EpochPlan:
    """What every epoch repeats: the batches it draws and how a batch becomes a loss."""

    data: TaskData
    recipe: RecipeConfig
    device: torch.device
    forward: torch.nn.Module  # the model, or its DDP wrapper under torchrun
    objective: Objective
    augment: BatchAugment
    rand_augment: TensorRandAugment | None
    penalty: ParameterPenalty | None
    amp_dtype: torch.dtype | None
    batch: int  # per rank
    steps: int  # per epoch
    world: int
    desc: str

    @classmethod
    def build(
        cls,
        model: torch.nn.Module,
        forward: torch.nn.Module,
        data: TaskData,
        recipe: RecipeConfig,
        device: torch.device,
        objective: Objective,
        batch: int,
        steps: int,
        world: int,
        desc: str,
    ) -> EpochPlan:
        """The recipe's augmentation, penalty and precision for ``model`` (trained through ``forward``)."""
        augment = recipe.augment
        # translation fills with black; cached features have no black, and are not translated
        black = black_level(*data.normalisation(device)) if data.is_images else 0.0
        return cls(
            data=data,
            recipe=recipe,
            device=device,
            forward=forward,
            objective=objective,
            augment=BatchAugment(augment, data.num_classes, recipe.loss.label_smoothing, device, black),
            rand_augment=TensorRandAugment(augment.randaugment) if augment.randaugment.num_ops else None,
            penalty=ParameterPenalty(model, recipe.penalty) if recipe.penalty.weight > 0 else None,
            amp_dtype=_amp_dtype(recipe.amp, device),
            batch=batch,
            steps=steps,
            world=world,
            desc=desc,
        )

    def autocast(self):
        """Mixed precision on CUDA when the recipe asks for it; otherwise full precision."""
        if self.amp_dtype:
            return autocast_for(self.device, self.amp_dtype)
        return torch.autocast(self.device.type, enabled=False)


def train_steps(state: TrainState, plan: EpochPlan, stop: int) -> float:
    """Optimizer steps from ``state.global_step`` up to step ``stop``; returns the sum of their
    losses on this rank. Each epoch is one pass over this rank's shard of a fresh permutation of
    the training split, drawn as the epoch starts."""
    start = time.perf_counter()
    model, optimizer, scaler = state.model, state.optimizer, state.scaler
    recipe, train = plan.recipe, plan.data.train
    model.train()
    keep_frozen_norms_in_eval(model)
    # a finiteness check per step is a host sync: free on the CPU, a stall per step on a GPU,
    # where the loss is summed on the device and checked once per call instead
    check_each_step = plan.device.type != "cuda"
    loss_sum = torch.zeros((), dtype=torch.float64, device=plan.device)
    n_steps = stop - state.global_step
    for _ in range(n_steps):
        step = state.global_step % plan.steps
        if step == 0 or state.order is None:
            order = torch.randperm(len(train), generator=state.generator)  # the same on every rank
            if plan.world > 1:
                order = distributed.shard(order)
            state.order = order.to(train.x.device)  # images kept on the GPU are gathered there
        elif state.order.device != train.x.device:  # resumed from a checkpoint
            state.order = state.order.to(train.x.device)
        idx = state.order[step * plan.batch : (step + 1) * plan.batch]
        raw = train.x[idx]
        if plan.rand_augment is not None:
            raw = plan.rand_augment(raw)
        x = plan.data.to_inputs(raw, plan.device)
        y = train.y[idx].to(plan.device, non_blocking=True)
        x, y = plan.augment(x, y, state.generator)
        if recipe.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with plan.autocast():
            outputs = plan.forward(x)
            loss = plan.objective.loss(outputs, y, x)
            if plan.penalty is not None:
                loss = loss + plan.penalty()
        if check_each_step and not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"{plan.desc}: loss is {loss.item()} at epoch {state.epoch + 1}, step {step + 1}; "
                f"lower recipe.optimizer.lr (now {recipe.optimizer.lr}) or set recipe.grad_clip"
            )
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        if recipe.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        state.global_step += 1
        if state.ema is not None:
            state.ema.update(model, step=state.global_step)
        if state.scheduler is not None:
            state.scheduler.step_update(num_updates=state.global_step)
        loss_sum += loss.detach().double()
    total = float(loss_sum)
    if not math.isfinite(total):
        raise NonFiniteLossError(
            f"{plan.desc}: loss is {total / max(n_steps, 1)} in epoch {state.epoch + 1}; "
            f"lower recipe.optimizer.lr (now {recipe.optimizer.lr}) or set recipe.grad_clip"
        )
    state.train_seconds += time.perf_counter() - start
    state.train_images += n_steps * plan.batch * plan.world
    return total


def budget_steps(recipe: RecipeConfig, reference: int, world: int = 1) -> tuple[list[int], int]:
    """The recipe's budgets (epochs of a training set of ``reference`` images) in optimizer
    steps, and the steps of one such epoch (the warm-up counts them too): the same for every
    variant trained with the same reference, whatever its own images."""
    _, per_epoch = _batching(reference, recipe.batch_size, world)
    return [max(1, round(b * per_epoch)) for b in recipe.budgets], per_epoch


def wsd_branches(recipe: RecipeConfig, budgets: list[int]) -> dict[int, int]:
    """Branch point (the step where its decay starts) → budget, for every budget (steps) but the
    last (the main run's own decay ends at the last)."""
    if recipe.scheduler.name != "wsd":
        return {}
    return {b - wsd_decay_steps(b, recipe.scheduler): b for b in budgets[:-1]}


def run_budget(state: TrainState, plan: EpochPlan, budget: int, on_budget: BudgetHook | None) -> dict:
    """The row of a budget whose decay has just ended: validation, and what ``on_budget`` adds."""
    model = state.eval_model
    row = {"steps": budget, "epochs": budget / plan.steps}
    row.update(validate(model, plan.data, plan.recipe, plan.device, plan.objective))
    if on_budget is not None:
        row.update(on_budget(model, dict(row)))
    return row


def run_branch(state: TrainState, plan: EpochPlan, budget: int, on_budget: BudgetHook | None) -> None:
    """A decay branch: keep the state at the branch point, decay to ``budget`` steps, evaluate,
    restore the kept state; the main run then continues as though the branch had not been taken."""
    start = time.perf_counter()
    kept = copy.deepcopy(state.state_dict())
    end_wsd_at(state.scheduler, budget, plan.recipe.scheduler)
    state.scheduler.step_update(num_updates=state.global_step)
    train_steps(state, plan, budget)
    row = run_budget(state, plan, budget, on_budget)
    state.load_state_dict(kept)
    row["branch_time_s"] = time.perf_counter() - start
    state.budgets.append(row)
    log.info("%s: budget %d steps (decay branch): val_acc %.3f", plan.desc, budget, row["val_accuracy"])


def fit(
    model: torch.nn.Module,
    data: TaskData,
    recipe: RecipeConfig,
    *,
    seed: int,
    device: torch.device,
    objective: Objective | None = None,
    checkpoint_path: Path | None = None,
    fingerprint: str = "",
    progress: bool = True,
    desc: str = "train",
    on_budget: BudgetHook | None = None,
    budget_reference: int | None = None,
) -> FitResult:
    """Train ``model`` on ``data.train``, select on ``data.val``; return the selected model.

    With ``checkpoint_path``, the state is saved after every epoch (and at every decay branch's
    start and end) and a run restarted with the same ``fingerprint`` resumes from it; a run
    killed inside a branch redoes that branch from its start, which it kept.

    With the ``wsd`` schedule the run lasts its last budget (:func:`budget_steps`: epochs of
    ``budget_reference`` training images, default ``data.train``'s, in optimizer steps; or
    ``recipe.epochs``), and every other budget is a decay branch off it (:func:`run_branch`);
    each budget's row (``FitResult.budgets``) holds the model's validation numbers at the end of
    its decay and, for a branch, whatever ``on_budget`` returns for it (the last budget's model is
    the one returned: its caller evaluates it, once).
    """
    generator = seed_everything(seed)
    objective = objective or Objective(recipe.loss, data.num_classes, recipe.augment.mixing)
    model = model.to(device)
    if recipe.channels_last:
        model = model.to(memory_format=torch.channels_last)
    data = data.on_device(device)  # on a GPU: the images moved once, uint8, not per batch
    forward = distributed.wrap(model, device)  # DDP under torchrun: gradients averaged over ranks
    world = distributed.world_size()
    batch, steps = _batching(len(data.train), recipe.batch_size, world)
    budgets, reference_steps = budget_steps(recipe, budget_reference or len(data.train), world)
    if len(set(budgets)) < len(budgets):
        raise ConfigError(
            f"{desc}: budgets {recipe.budgets} (epochs) come to {budgets} optimizer steps at batch "
            f"{recipe.batch_size}: two budgets would be one; space them further apart, or lower batch_size"
        )
    total = budgets[-1] if budgets else recipe.epochs * steps
    epochs = math.ceil(total / steps)  # the last one cut short when the budget ends inside it
    optimizer = build_optimizer(model, recipe.optimizer)
    # budgets: the warm-up counts epochs of the reference set too, so every variant's rate is the same
    scheduler = build_scheduler(
        optimizer, recipe.scheduler, recipe.epochs, reference_steps if budgets else steps, total
    )
    budgeted = recipe.scheduler.name == "wsd"
    branches = wsd_branches(recipe, budgets)
    for budget in branches.values():  # every branch's decay starts after the warm-up: checked before training
        check_wsd_budget(budget, scheduler.warmup_t, recipe.scheduler)
    ema = ModelEmaV3(model, decay=recipe.ema.decay) if recipe.ema.enabled else None
    plan = EpochPlan.build(model, forward, data, recipe, device, objective, batch, steps, world, desc)
    scaler = torch.amp.GradScaler("cuda") if plan.amp_dtype == torch.float16 else None
    state = TrainState(model, optimizer, scheduler, ema, scaler, generator)
    resumed_from = None
    saved = load_resume_state(checkpoint_path, fingerprint) if checkpoint_path else None
    if saved is not None:
        state.load_state_dict(saved)
        resumed_from = state.epoch
        log.info("%s: resumed from the checkpoint after epoch %d", desc, state.epoch)

    def save() -> None:
        if checkpoint_path is not None and distributed.is_main():  # written once
            save_resume_state(checkpoint_path, state.state_dict(), fingerprint)

    def next_branch() -> tuple[int, int] | None:
        done = {row["steps"] for row in state.budgets}
        todo = [(p, b) for p, b in sorted(branches.items()) if b not in done and p >= state.global_step]
        return todo[0] if todo else None

    # a live bar on a terminal; one log line per epoch when output goes to a file or CI log
    live_bar = progress and sys.stderr.isatty()
    bar = _epoch_bar(desc, state.epoch, epochs, show=live_bar)
    stopped_early = False
    epoch_time = 0.0
    while state.global_step < total:
        tick = time.perf_counter()
        epoch_start, epoch_end = state.epoch * steps, min((state.epoch + 1) * steps, total)
        branch = next_branch()
        stop = epoch_end if branch is None else min(epoch_end, branch[0])
        state.epoch_loss += train_steps(state, plan, stop)
        epoch_time += time.perf_counter() - tick
        if branch is not None and state.global_step == branch[0]:
            save()  # the state at the branch point: a run killed inside the branch starts it again
            run_branch(state, plan, branch[1], on_budget)
            save()
        if state.global_step < epoch_end:
            continue
        tick = time.perf_counter()
        row = {
            "epoch": state.epoch + 1,
            "train_loss": distributed.mean_over_ranks(state.epoch_loss / (epoch_end - epoch_start)),
            # wsd keeps the end of its decay, not the best epoch: it validates at its budgets only
            **({} if budgeted else validate(state.eval_model, data, recipe, device, objective)),
            "lr": current_lr(optimizer),
        }
        if scheduler is not None:
            scheduler.step(state.epoch + 1, row.get("val_loss"))
        row["epoch_time_s"] = epoch_time + time.perf_counter() - tick
        state.epoch_loss, epoch_time = 0.0, 0.0
        state.record_epoch(row, _score(row, recipe.select_on))
        bar.update(1)
        bar.set_postfix(loss=f"{row['train_loss']:.3f}", val_acc=f"{row.get('val_accuracy', math.nan):.3f}")
        if progress and not live_bar:
            _log_epoch(desc, row, epochs)
        save()
        if recipe.early_stopping_patience and state.stale >= recipe.early_stopping_patience:
            stopped_early = True
            log.info("%s: early stop after epoch %d (best epoch %d)", desc, state.epoch, state.best_epoch)
            break
    bar.close()
    if budgeted and total not in {row["steps"] for row in state.budgets}:
        # the main run's end: validation only; the caller tests the model returned (the same weights) once
        state.budgets.append(run_budget(state, plan, total, None) | {"branch_time_s": 0.0})
        save()

    model.load_state_dict(state.best_state)
    branch_time = sum(row["branch_time_s"] for row in state.budgets)
    return FitResult(
        model=model.eval(),
        history=state.history,
        best_epoch=state.best_epoch,
        train_time_s=state.train_time_s + branch_time,
        train_loop_s=state.train_seconds,
        branch_time_s=branch_time,
        train_images_per_s=state.train_images / state.train_seconds if state.train_seconds else 0.0,
        stopped_early=stopped_early,
        resumed_from_epoch=resumed_from,
        budgets=sorted(state.budgets, key=lambda row: row["steps"]),
    )


def _batching(n_train: int, batch_size: int, world: int) -> tuple[int, int]:
    """(batch size, steps per epoch) on each rank; each trains on its shard of every epoch's
    permutation, and the ragged last batch is dropped (BatchNorm, mixup)."""
    per_rank = n_train // world
    batch = min(batch_size, per_rank - per_rank % 2)
    return batch, max(1, per_rank // batch)


def _log_epoch(desc: str, row: dict, epochs: int) -> None:
    validated = f" val_loss {row['val_loss']:.3f} val_acc {row['val_accuracy']:.3f}" if "val_loss" in row else ""
    log.info(
        "%s: epoch %d/%d train_loss %.3f%s (%.1fs)",
        desc,
        row["epoch"],
        epochs,
        row["train_loss"],
        validated,
        row["epoch_time_s"],
    )


def _epoch_bar(desc: str, start: int, epochs: int, show: bool) -> tqdm:
    """A live bar over the remaining epochs on a terminal; disabled otherwise."""
    return tqdm(
        desc=desc,
        disable=not show,
        unit="epoch",
        initial=start,
        total=epochs,
        leave=False,
        dynamic_ncols=True,
    )


def _amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    if device.type != "cuda" or amp == "off":
        return None
    if amp == "fp16":
        return torch.float16
    if amp == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16
