"""Training one variant over seeds: build, fit, test once, record, log.

Every training stage calls :func:`train_variant`; they differ in the model builder, the
data and the objective they pass.
"""

from __future__ import annotations

import logging
import os
import resource
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from finch.config import FinchConfig, RecipeConfig, config_hash, flatten
from finch.data.splits import TaskData
from finch.evaluate import HEAD_METRICS, agreement_with, classification_metrics, predict_heads
from finch.io import repo_root, save_tensors
from finch.models import parameter_counts
from finch.runs import run_dir, run_key, run_name, write_record
from finch.train.engine import fit
from finch.train.losses import Objective
from finch.train.runtime import seed_everything

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


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, cwd=repo_root())
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def peak_memory_mb(device: torch.device) -> float:
    """CUDA: peak allocated by torch; CPU: the process's peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def train_variant(
    variant: Variant,
    data: TaskData,
    seeds: list[int],
    cfg: FinchConfig,
    device: torch.device,
    runs_root: Path,
    models_root: Path,
) -> list[Path]:
    """Train ``variant`` once per seed; write weights and run records; return record dirs."""
    settings = {**variant.settings, "data_hash": data.content_hash, "runtime": cfg.runtime.model_dump()}
    params_hash = config_hash(settings)
    commit = git_commit()
    written = []
    for seed in seeds:
        key = run_key(variant.stage, variant.name, seed, params_hash)
        name = run_name(variant.stage, variant.name, seed)
        seed_everything(seed)
        model = variant.build_model(seed)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        checkpoint = CHECKPOINT_ROOT / variant.stage / variant.name / f"seed={seed}.pt"
        objective = variant.objective(data, seed) if variant.objective else None
        result = fit(
            model,
            data,
            variant.recipe,
            seed=seed,
            device=device,
            objective=objective,
            checkpoint_path=checkpoint,
            fingerprint=key,
            progress=cfg.runtime.progress,
            desc=name,
        )
        metrics, cost, confusion = test_once(result.model, objective, data, variant.recipe, cfg, device)
        metrics["params_total"] += variant.frozen_outside
        folder = run_dir(runs_root, variant.stage, variant.name, seed)
        weights = Path(models_root) / variant.name / f"seed={seed}.safetensors"
        save_tensors(weights, result.model.state_dict(), {"run_key": key, "stage": variant.stage})
        record = {
            "stage": variant.stage,
            "variant": variant.name,
            "seed": seed,
            "run_key": key,
            "run_name": name,
            "params_hash": params_hash,
            "params": flatten(settings),
            "tags": {
                "finch.stage": variant.stage,
                "finch.variant": variant.name,
                "finch.seed": str(seed),
                "finch.profile": cfg.profile,
                "finch.dvc_stage": os.environ.get("DVC_STAGE", "(run outside dvc)"),
                "finch.git_commit": commit,
                "finch.params_hash": params_hash,
                "finch.run_key": key,
                "finch.device": str(device),
            },
            "metrics": metrics,
            "cost": {
                "train_time_s": result.train_time_s,
                "train_images_per_s": result.train_images_per_s,
                **cost,
                "peak_memory_mb": peak_memory_mb(device),
            },
            "best_epoch": result.best_epoch,
            "epochs_run": len(result.history),
            "stopped_early": result.stopped_early,
            "class_names": data.class_names,
            "confusion": confusion,
            "weights": str(weights),
        }
        write_record(folder, record, result.history)
        log.info("%s: test accuracy %.4f (best epoch %d)", name, metrics["accuracy"], result.best_epoch)
        written.append(folder)
    # checkpoints of finished seeds are kept until the whole variant is done: DVC deletes a
    # stage's outputs before re-running it, so an interrupted stage resumes from these
    shutil.rmtree(CHECKPOINT_ROOT / variant.stage / variant.name, ignore_errors=True)
    return written


def test_once(model, objective: Objective | None, data: TaskData, recipe: RecipeConfig, cfg: FinchConfig, device):
    """Evaluate the selected model on the test split, once: metrics, cost and confusion matrix.

    The reported prediction is ``objective.logits``; extra heads (a distilled student's class
    and distillation heads) add their headline metrics with the head as suffix; a teacher
    adds the agreement between teacher and model.
    """
    objective = objective or Objective(recipe.loss, data.num_classes, mixing=False)
    heads = {"main": objective.logits, **objective.heads()}
    probs, speed = predict_heads(
        model, data.test, data.to_inputs, recipe.eval_batch_size, device, heads, recipe.channels_last
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
    return metrics, cost, confusion
