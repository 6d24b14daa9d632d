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
from finch.evaluate import classification_metrics, predict_proba
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
    build_model: Callable[[], torch.nn.Module]
    recipe: RecipeConfig
    settings: dict  # everything that defines the run (hashed into the run key)
    objective: Callable[[TaskData], Objective] | None = None


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
        model = variant.build_model()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        checkpoint = CHECKPOINT_ROOT / variant.stage / variant.name / f"seed={seed}.pt"
        objective = variant.objective(data) if variant.objective else None
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
        logits_of = objective.logits if objective else Objective.logits
        probs, eval_speed = predict_proba(
            result.model,
            data.test,
            *data.normalisation(device),
            variant.recipe.eval_batch_size,
            device,
            logits_of,
            variant.recipe.channels_last,
        )
        metrics, confusion = classification_metrics(data.test.y.numpy(), probs, data.class_names, cfg.evaluate.ece_bins)
        metrics.update(parameter_counts(result.model))
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
                "eval_images_per_s": eval_speed,
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
