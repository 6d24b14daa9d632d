"""One run: a variant of a stage, a seed and a recipe — built, fitted, tested once, recorded.

A :class:`Run` is what :mod:`finch.runner` schedules and :func:`execute` carries out, in this
process or in a worker, for every kind of run: a seed of a variant (tested once, recorded, its
weights kept) and a k-fold run (a recipe with ``kfold.k >= 2``, see :mod:`finch.kfold`). A
recipe with budgets (the ``wsd`` schedule) tests the model at the end of every budget's decay:
its budget curve, in the record's ``budgets``. Stages differ only in the variants they plan: the
model builder, the data, the recipe and the objective.
"""

from __future__ import annotations

import logging
import resource
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from finch import distributed
from finch.config import FinchConfig, RecipeConfig, config_hash
from finch.data.splits import TaskData, split_hash
from finch.evaluate import HEAD_METRICS, agreement_with, classification_metrics, predict_heads, predict_proba
from finch.io import save_tensors
from finch.kfold import FoldEnsemble, fit_kfold
from finch.model_summary import run_summary
from finch.models import parameter_counts
from finch.runs import RunKind, RunRecord, pack_correct, run_key, run_name
from finch.train.engine import BudgetHook, fit
from finch.train.losses import Objective
from finch.train.runtime import numerics, seed_everything

log = logging.getLogger(__name__)
CHECKPOINT_ROOT = Path(".finch/checkpoints")


@dataclass(frozen=True)
class Variant:
    """What one stage trains: a name, a model builder, a recipe and the run's settings."""

    stage: str
    name: str
    build_model: Callable[[int], torch.nn.Module]  # seed → model (called after seeding)
    recipe: RecipeConfig
    settings: dict  # everything that defines the run (hashed into the run key)
    objective: Callable[[TaskData, int], Objective] | None = None  # (data, seed) → objective
    frozen_outside: int = 0  # parameters used but not in the model (a probe's cached backbone)
    # what else defines the run of one seed, known only when it starts (the hash of that seed's
    # teacher or probe, trained by an earlier run): seed → settings, hashed into the run key
    seed_settings: Callable[[int], dict] | None = None
    # trains the model in place of the engine (model, data, seed) → FitResult: a closed-form probe
    fit: Callable[[torch.nn.Module, TaskData, int], object] | None = None
    # whether each seed draws its own train/validation split (data.split_per_seed): not where the
    # training set is built from the fixed split (the GAN study's scarce images and their mixes)
    resplit: bool = True
    # the training set whose epochs the recipe's budgets count (None: the variant's own), so that
    # variants on more or fewer images train the same optimizer steps
    budget_reference: int | None = None


def peak_memory_mb(device: torch.device) -> float:
    """CUDA: peak allocated by torch; CPU: the process's peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_settings(variant: Variant, data: TaskData, cfg: FinchConfig, seed: int) -> dict:
    """Everything that defines the run of ``variant`` with ``seed`` (hashed into its key). How
    the runs are spread is not part of it (the worker count, process pool or SLURM jobs): a run's
    numbers depend on its own settings, seed, thread count and DDP world size only; a SLURM job
    of several tasks adds its task count (its world size)."""
    runtime = cfg.runtime.model_dump(exclude={"workers", "progress", "executor", "slurm"})
    if cfg.runtime.executor == "slurm":
        tasks = cfg.runtime.slurm.tasks_per_job
        runtime |= {"tasks_per_job": tasks} if tasks > 1 else {}
    extra = variant.seed_settings(seed) if variant.seed_settings else {}
    data_hash = split_hash(data.content_hash, seed) if own_split(variant, cfg) else data.content_hash
    return {**variant.settings, **extra, "data_hash": data_hash, "runtime": runtime}


def own_split(variant: Variant, cfg: FinchConfig) -> bool:
    """Whether the seeds of ``variant`` each draw their own train/validation split."""
    return cfg.data.split_per_seed and variant.resplit


@dataclass(frozen=True)
class Run:
    """One run of a plan: variant ``variant`` (its name) with ``seed`` and ``recipe``."""

    variant: str
    seed: int
    recipe: RecipeConfig

    @property
    def id(self) -> tuple[str, int]:
        return self.variant, self.seed


def study_run(variant: Variant, seed: int) -> Run:
    """A seed of ``variant`` with its own recipe: tested once and recorded."""
    return Run(variant.name, seed, variant.recipe)


def budget_hook(data: TaskData, recipe: RecipeConfig, objective: Objective | None, device) -> BudgetHook:
    """What a run records at each decay branch besides validation: the test split's accuracy and
    which test images it got right (packed bits), for intervals over the test sample as well as
    seeds (the last budget's row takes :func:`test_once`'s test of the model the run returns).
    The design is fixed before the study runs; nothing is chosen from these numbers."""
    logits = objective.logits if objective is not None else (lambda out: out)

    def at_budget(model: torch.nn.Module, row: dict) -> dict:
        probs, _ = predict_proba(
            model, data.test, data.to_inputs, recipe.eval_batch_size, device, logits, recipe.channels_last, recipe.tta
        )
        correct = probs.argmax(1) == data.test.y.numpy()
        return {"test_accuracy": float(correct.mean()), "test_correct": pack_correct(correct)}

    return at_budget


def execute(
    run: Run,
    variant: Variant,
    data: TaskData,
    cfg: FinchConfig,
    device: torch.device,
    runs_root: Path,
    models_root: Path,
) -> tuple[Path | None, object]:
    """Carry out ``run`` of ``variant``: seed, build, fit (k-fold where its recipe says), then

    test once, write its weights and run record; returns the record's folder and the test
    probabilities (for the seed ensemble). The path is None on a non-zero torchrun rank. A
    checkpoint after every epoch (and at every decay branch) lets a killed run resume.
    """
    settings = run_settings(variant, data, cfg, run.seed)
    if own_split(variant, cfg):
        data = data.resplit(run.seed)  # the variants of one seed share its split: comparisons stay paired
    key = run_key(variant.stage, variant.name, run.seed, config_hash(settings))
    name = run_name(variant.stage, variant.name, run.seed)
    checkpoint = CHECKPOINT_ROOT / variant.stage / variant.name / f"seed={run.seed}.pt"
    seed_everything(run.seed)
    model = variant.build_model(run.seed)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    objective = variant.objective(data, run.seed) if variant.objective else None
    kfold = None
    if variant.fit is not None:
        result = variant.fit(model.to(device), data.on_device(torch.device("cpu")), run.seed)
    elif run.recipe.kfold.k >= 2:
        result, kfold = fit_kfold(
            variant.build_model,
            data,
            run.recipe,
            run.seed,
            objective,
            device,
            checkpoint,
            key,
            name,
            cfg.runtime.progress,
        )
    else:
        result = fit(
            model,
            data,
            run.recipe,
            seed=run.seed,
            device=device,
            objective=objective,
            checkpoint_path=checkpoint,
            fingerprint=key,
            progress=cfg.runtime.progress,
            desc=name,
            on_budget=budget_hook(data, run.recipe, objective, device),
            budget_reference=variant.budget_reference,
        )
    tested = time.perf_counter()
    metrics, cost, confusion, probs = test_once(result.model, objective, data, run.recipe, cfg, device)
    test_time_s = time.perf_counter() - tested
    correct = probs.argmax(1) == data.test.y.numpy()
    if result.budgets:  # the last budget is the model just tested: its row takes that test, not a second one
        result.budgets[-1].update(test_accuracy=float(correct.mean()), test_correct=pack_correct(correct))
    if not distributed.is_main():  # under torchrun, rank 0 alone writes and logs
        return None, probs
    metrics["params_total"] += variant.frozen_outside
    # one file per run; a k-fold run's holds every fold model, its keys prefixed "folds.<f>."
    weights = Path(models_root) / variant.name / f"seed={run.seed}.safetensors"
    meta = {"run_key": key, "stage": variant.stage, **({"kfold": run.recipe.kfold.k} if kfold else {})}
    save_tensors(weights, result.model.state_dict(), meta)
    record = RunRecord.create(
        stage=variant.stage,
        variant=variant.name,
        seed=run.seed,
        kind=RunKind.CLASSIFIER,
        settings=settings,
        profile=cfg.profile,
        device=str(device),
        numerics=numerics(device.type),
        world_size=distributed.world_size(),
        metrics=metrics,
        cost={
            "train_time_s": result.train_time_s,
            "train_loop_time_s": result.train_loop_s,
            "validate_time_s": result.train_time_s - result.train_loop_s - result.branch_time_s,
            "branch_time_s": result.branch_time_s,
            "test_time_s": test_time_s,
            "train_images_per_s": result.train_images_per_s,
            **cost,
            "peak_memory_mb": peak_memory_mb(device),
        },
        best_epoch=result.best_epoch,
        epochs_run=len(result.history),
        stopped_early=result.stopped_early,
        class_names=data.class_names,
        confusion=confusion,
        weights=str(weights),
        kfold=kfold,
        history=result.history,
        budgets=result.budgets,  # a k-fold run has none
        test_correct=pack_correct(correct),
        datasets=data.dataset_inputs(),
        # what it trained, with its freezing; a k-fold run's k fold models are alike: the first stands for them
        model_summaries={
            "model": run_summary(result.model.folds[0] if kfold else result.model, variant.frozen_outside)
        },
    )
    folder = record.write(runs_root)
    log.info("%s: test accuracy %.4f (best epoch %s)", name, metrics["accuracy"], result.best_epoch or "per fold")
    return folder, probs


def finish_variant(variant: Variant, data: TaskData, seeds: list[int], probs: list, cfg: FinchConfig, runs_root: Path):
    """Once every seed of ``variant`` is done: drop its resume checkpoints, write its ensemble.

    Checkpoints of finished seeds are kept until then: DVC deletes a stage's outputs before
    re-running it, so an interrupted stage resumes from these.
    """
    shutil.rmtree(CHECKPOINT_ROOT / variant.stage / variant.name, ignore_errors=True)
    if len(seeds) > 1:
        write_ensemble(runs_root, variant, data, seeds, probs, cfg)


def write_ensemble(runs_root: Path, variant: Variant, data: TaskData, seeds: list[int], probs: list, cfg) -> dict:
    """The seed models as one ensemble (mean of their test probabilities), written next to
    the seed runs as ``ensemble.json``: the ensemble's metrics and the single-model mean."""
    import numpy as np

    from finch.io import write_json

    y = data.test.y.numpy()
    ensemble, _ = classification_metrics(y, np.mean(probs, axis=0), data.class_names, cfg.evaluate.ece_bins)
    singles = [classification_metrics(y, p, data.class_names, cfg.evaluate.ece_bins)[0] for p in probs]
    out = {
        "stage": variant.stage,
        "variant": variant.name,
        "seeds": list(seeds),
        "ensemble": {k: ensemble[k] for k in HEAD_METRICS if k in ensemble},
        "single_mean": {k: float(np.mean([m[k] for m in singles])) for k in HEAD_METRICS if k in ensemble},
    }
    write_json(Path(runs_root) / variant.stage / variant.name / "ensemble.json", out)
    return out


def _prediction_heads(model: torch.nn.Module, objective: Objective) -> dict[str, Callable]:
    if isinstance(model, FoldEnsemble):
        return model.readers()
    return {"main": objective.logits, **objective.heads()}


def test_once(model, objective: Objective | None, data: TaskData, recipe: RecipeConfig, cfg: FinchConfig, device):
    """Evaluate the selected model (or a k-fold run's :class:`FoldEnsemble`) on the test split,
    once: metrics, cost, confusion matrix and the test probabilities (for ensembles).

    The reported prediction is ``objective.logits``; extra heads (a distilled student's class
    and distillation heads) add their headline metrics with the head as suffix; a teacher
    adds the agreement between teacher and model.
    """
    objective = objective or Objective(recipe.loss, data.num_classes, mixing=False)
    heads = _prediction_heads(model, objective)
    probs, speed = predict_heads(
        model, data.test, data.to_inputs, recipe.eval_batch_size, device, heads, recipe.channels_last, recipe.tta
    )
    y = data.test.y.numpy()
    metrics, confusion = classification_metrics(y, probs["main"], data.class_names, cfg.evaluate.ece_bins)
    for head in heads:
        if head != "main":
            head_metrics, _ = classification_metrics(y, probs[head], data.class_names, cfg.evaluate.ece_bins)
            metrics.update({f"{k}.{head}": head_metrics[k] for k in HEAD_METRICS if k in head_metrics})
    metrics.update(parameter_counts(model))
    cost = {"eval_images_per_s": speed}
    teacher = getattr(objective, "teacher", None)
    if teacher is not None:
        extra_metrics, extra_cost = agreement_with(
            teacher, probs["main"], data.test, data.to_inputs, recipe.eval_batch_size, device
        )
        metrics.update(extra_metrics)
        cost.update(extra_cost)
    return metrics, cost, confusion, probs["main"]
