"""Training one run (a variant with one seed): build, fit, test once, record.

Every training stage trains through :func:`train_run` (one seed) — in this process with
:func:`train_variant`, or spread over worker processes by :mod:`finch.runner`; stages differ
in the model builder, the data and the objective they pass.
"""

from __future__ import annotations

import logging
import resource
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from finch import distributed
from finch.config import FinchConfig, KFoldConfig, RecipeConfig, config_hash
from finch.data.splits import TaskData
from finch.evaluate import HEAD_METRICS, agreement_with, classification_metrics, predict_heads
from finch.io import save_tensors
from finch.models import parameter_counts
from finch.runs import RunKind, RunRecord, run_key, run_name
from finch.train.engine import FitResult, fit
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


def peak_memory_mb(device: torch.device) -> float:
    """CUDA: peak allocated by torch; CPU: the process's peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_settings(variant: Variant, data: TaskData, cfg: FinchConfig, seed: int) -> dict:
    """Everything that defines the run of ``variant`` with ``seed`` (hashed into its key). The
    worker count is not part of it: a run's numbers depend on its own settings, seed and thread
    count only."""
    runtime = cfg.runtime.model_dump(exclude={"workers", "progress"})
    extra = variant.seed_settings(seed) if variant.seed_settings else {}
    return {**variant.settings, **extra, "data_hash": data.content_hash, "runtime": runtime}


def train_run(
    variant: Variant,
    data: TaskData,
    seed: int,
    cfg: FinchConfig,
    device: torch.device,
    runs_root: Path,
    models_root: Path,
) -> tuple[Path | None, object]:
    """Train ``variant`` with one seed: fit, test once, write weights and the run record.

    Returns the record's folder (None on a non-zero torchrun rank) and the test probabilities
    (for the seed ensemble). A checkpoint after every epoch lets a killed run resume.
    """
    settings = run_settings(variant, data, cfg, seed)
    key = run_key(variant.stage, variant.name, seed, config_hash(settings))
    name = run_name(variant.stage, variant.name, seed)
    seed_everything(seed)
    model = variant.build_model(seed)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    checkpoint = CHECKPOINT_ROOT / variant.stage / variant.name / f"seed={seed}.pt"
    objective = variant.objective(data, seed) if variant.objective else None
    kfold = None
    if variant.recipe.kfold.k >= 2:
        result, kfold = fit_kfold(variant, data, seed, objective, device, cfg, checkpoint, key, name)
    else:
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
    tested = time.perf_counter()
    metrics, cost, confusion, probs = test_once(result.model, objective, data, variant.recipe, cfg, device)
    test_time_s = time.perf_counter() - tested
    if not distributed.is_main():  # under torchrun, rank 0 alone writes and logs
        return None, probs
    metrics["params_total"] += variant.frozen_outside
    # one file per run; a k-fold run's holds every fold model, its keys prefixed "folds.<f>."
    weights = Path(models_root) / variant.name / f"seed={seed}.safetensors"
    meta = {"run_key": key, "stage": variant.stage, **({"kfold": variant.recipe.kfold.k} if kfold else {})}
    save_tensors(weights, result.model.state_dict(), meta)
    record = RunRecord.create(
        stage=variant.stage,
        variant=variant.name,
        seed=seed,
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
            "validate_time_s": result.train_time_s - result.train_loop_s,
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
        datasets=data.dataset_inputs(),
    )
    folder = record.write(runs_root)
    log.info("%s: test accuracy %.4f (best epoch %s)", name, metrics["accuracy"], result.best_epoch or "per fold")
    return folder, probs


LONGER = "longer.json"  # the convergence check's run, next to the variant's seed runs


def longer_run(
    variant: Variant, data: TaskData, seed: int, factor: float, cfg: FinchConfig, device: torch.device, runs_root: Path
) -> Path | None:
    """The convergence check: ``variant`` with ``seed`` again, its schedule ``factor`` times longer
    (same warm-up, the decay stretched over the extra epochs). Validation only — the test split is
    not touched — written to ``<runs_root>/<stage>/<variant>/longer.json``; the aggregate compares
    its best validation accuracy with the regular run of the same seed."""
    from finch.io import write_json

    epochs = max(variant.recipe.epochs + 1, round(variant.recipe.epochs * factor))
    recipe = variant.recipe.model_copy(update={"epochs": epochs, "kfold": KFoldConfig(k=0)})  # a model, not a dict
    settings = run_settings(replace(variant, recipe=recipe), data, cfg, seed)
    key = run_key(variant.stage, variant.name, seed, config_hash({**settings, "recipe": recipe.model_dump()}))
    name = f"{run_name(variant.stage, variant.name, seed)} (x{factor:g} schedule)"
    seed_everything(seed)
    model = variant.build_model(seed)
    result = fit(
        model,
        data,
        recipe,
        seed=seed,
        device=device,
        objective=variant.objective(data, seed) if variant.objective else None,
        checkpoint_path=CHECKPOINT_ROOT / variant.stage / variant.name / f"seed={seed}-longer.pt",
        fingerprint=key,
        progress=cfg.runtime.progress,
        desc=name,
    )
    if not distributed.is_main():
        return None
    best = result.history[result.best_epoch - 1]
    path = Path(runs_root) / variant.stage / variant.name / LONGER
    write_json(
        path,
        {
            "stage": variant.stage,
            "variant": variant.name,
            "seed": seed,
            "factor": factor,
            "epochs": recipe.epochs,
            "regular_epochs": variant.recipe.epochs,
            "best_epoch": result.best_epoch,
            "best_val_accuracy": best["val_accuracy"],
            "validation_images": len(data.val),
            "history": result.history,
        },
    )
    log.info("%s: best validation accuracy %.4f (epoch %d)", name, best["val_accuracy"], result.best_epoch)
    return path


def finish_variant(variant: Variant, data: TaskData, seeds: list[int], probs: list, cfg: FinchConfig, runs_root: Path):
    """Once every seed of ``variant`` is done: drop its resume checkpoints, write its ensemble.

    Checkpoints of finished seeds are kept until then: DVC deletes a stage's outputs before
    re-running it, so an interrupted stage resumes from these.
    """
    shutil.rmtree(CHECKPOINT_ROOT / variant.stage / variant.name, ignore_errors=True)
    if len(seeds) > 1:
        write_ensemble(runs_root, variant, data, seeds, probs, cfg)


def train_variant(
    variant: Variant,
    data: TaskData,
    seeds: list[int],
    cfg: FinchConfig,
    device: torch.device,
    runs_root: Path,
    models_root: Path,
) -> list[Path]:
    """Train ``variant`` once per seed in this process; return the record folders."""
    written, test_probs = [], []
    for seed in seeds:
        folder, probs = train_run(variant, data, seed, cfg, device, runs_root, models_root)
        if folder is not None:
            written.append(folder)
            test_probs.append(probs)
    distributed.barrier()
    if distributed.is_main():
        finish_variant(variant, data, seeds, test_probs, cfg, runs_root)
    return written


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


def kfold_splits(data: TaskData, k: int, seed: int) -> list[TaskData]:
    """``k`` stratified folds of train + val (scikit-learn): fold ``f`` validates on its own
    images and trains on the others; the test split is untouched."""
    import numpy as np
    from sklearn.model_selection import StratifiedKFold

    from finch.data.splits import Split

    x = torch.cat([data.train.x, data.val.x])
    y = torch.cat([data.train.y, data.val.y])
    folds = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(np.zeros(len(y)), y.numpy())
    return [
        replace(data, train=Split(x[tr], y[tr]), val=Split(x[va], y[va]))
        for tr, va in ((torch.as_tensor(a), torch.as_tensor(b)) for a, b in folds)
    ]


class FoldEnsemble(torch.nn.Module):
    """The k fold models as one predictor: for each head (name → outputs-to-logits), the mean of
    the folds' probabilities, returned as its logarithm (a softmax gives the mean back)."""

    def __init__(self, models: list[torch.nn.Module], heads: dict[str, Callable]):
        super().__init__()
        self.folds = torch.nn.ModuleList(models)
        self.heads = dict(heads)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        outputs = [model(x) for model in self.folds]
        return {
            name: torch.stack([torch.softmax(logits_of(o).float(), dim=-1) for o in outputs]).mean(0).log()
            for name, logits_of in self.heads.items()
        }

    def readers(self) -> dict[str, Callable]:
        """Each head's logits in this model's outputs (for :func:`predict_heads`)."""
        return {name: (lambda out, name=name: out[name]) for name in self.heads}


def _prediction_heads(model: torch.nn.Module, objective: Objective) -> dict[str, Callable]:
    if isinstance(model, FoldEnsemble):
        return model.readers()
    return {"main": objective.logits, **objective.heads()}


def _mean_history(histories: list[list[dict]]) -> list[dict]:
    """Per epoch, the mean of each column over the folds that reached it (early stopping)."""
    import numpy as np

    epochs = max(len(h) for h in histories)
    out = []
    for e in range(epochs):
        rows = [h[e] for h in histories if len(h) > e]
        out.append({k: float(np.mean([r[k] for r in rows])) for k in rows[0]})
    return out


def fit_kfold(variant: Variant, data: TaskData, seed: int, objective, device, cfg, checkpoint: Path, key: str, name):
    """Train one model per fold and predict with all of them: the returned model is their
    :class:`FoldEnsemble` (the mean of the k models' probabilities); no fold is selected on its
    validation score (that would select on noise). The summary keeps every fold's validation
    and test accuracy (the spread) and best epoch; the history is the folds' mean per epoch."""
    import numpy as np

    from finch.evaluate import predict_heads

    k = variant.recipe.kfold.k
    results, val_acc, test_acc = [], [], []
    readout = objective or Objective(variant.recipe.loss, data.num_classes, mixing=False)  # for predictions
    for f, fold_data in enumerate(kfold_splits(data, k, seed)):
        seed_everything(seed)
        model = variant.build_model(seed)
        result = fit(
            model,
            fold_data,
            variant.recipe,
            seed=seed,
            device=device,
            objective=objective,
            checkpoint_path=checkpoint.with_name(f"{checkpoint.stem}-fold={f}.pt"),
            fingerprint=f"{key}-fold{f}",
            progress=cfg.runtime.progress,
            desc=f"{name} fold {f + 1}/{k}",
        )
        best = result.history[result.best_epoch - 1]
        val_acc.append(float(best["val_accuracy"]))
        probs, _ = predict_heads(
            result.model, data.test, data.to_inputs, variant.recipe.eval_batch_size, device, {"main": readout.logits}
        )
        test_acc.append(float((probs["main"].argmax(1) == data.test.y.numpy()).mean()))
        results.append(result)
    summary = {
        "k": k,
        "prediction": "mean of the fold models' probabilities",
        "val_accuracy": val_acc,
        "test_accuracy": test_acc,
        "best_epoch": [r.best_epoch for r in results],
        "val_accuracy_mean": float(np.mean(val_acc)),
        "val_accuracy_std": float(np.std(val_acc, ddof=1)),
        "test_accuracy_mean": float(np.mean(test_acc)),
        "test_accuracy_std": float(np.std(test_acc, ddof=1)),
    }
    log.info(
        "%s: %d-fold validation accuracy %.4f ± %.4f; the %d fold models are ensembled",
        name,
        k,
        summary["val_accuracy_mean"],
        summary["val_accuracy_std"],
        k,
    )
    heads = {"main": readout.logits, **readout.heads()}
    ensemble = FitResult(
        model=FoldEnsemble([r.model for r in results], heads).eval(),
        history=_mean_history([r.history for r in results]),
        best_epoch=None,
        train_time_s=sum(r.train_time_s for r in results),
        train_images_per_s=float(np.mean([r.train_images_per_s for r in results])),
        stopped_early=any(r.stopped_early for r in results),
    )
    return ensemble, summary


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
    return metrics, cost, confusion, probs["main"]
