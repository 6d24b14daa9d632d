"""The one training engine. Every stage trains through :func:`fit`.

Stages differ only in the model, the data and the :class:`Objective`; the loop below is
the whole of training: batched augmentation, optimizer and schedule, EMA, AMP on CUDA,
gradient clipping, validation every epoch with best-checkpoint selection and early
stopping, resume from the last epoch's checkpoint, and a clear stop on a non-finite loss.
The test split is not seen here: callers evaluate it once, after ``fit``.
"""

from __future__ import annotations

import copy
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from timm.utils import ModelEmaV3
from tqdm.auto import tqdm

from finch import distributed
from finch.config import RecipeConfig
from finch.data.splits import TaskData
from finch.errors import NonFiniteLossError
from finch.evaluate import autocast_for, predict_proba
from finch.models import keep_frozen_norms_in_eval
from finch.train.augment import BatchAugment, TensorRandAugment
from finch.train.checkpoint import load_resume_state, save_resume_state
from finch.train.losses import Objective, ParameterPenalty
from finch.train.optim import (
    build_optimizer,
    build_scheduler,
    current_lr,
    load_scheduler_state,
    scheduler_state,
)
from finch.train.runtime import restore_rng_state, rng_state, seed_everything

log = logging.getLogger(__name__)


@dataclass
class FitResult:
    """The selected model (best validation epoch) and how training went."""

    model: torch.nn.Module
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    train_time_s: float = 0.0
    train_images_per_s: float = 0.0
    stopped_early: bool = False
    resumed_from_epoch: int | None = None


def _score(row: dict, select_on: str) -> float:
    return row["val_accuracy"] if select_on == "val_accuracy" else -row["val_loss"]


def validate(model, data: TaskData, recipe: RecipeConfig, device, objective) -> dict:
    split = data.val
    probs, _ = predict_proba(
        model, split, data.to_inputs, recipe.eval_batch_size, device, objective.logits, recipe.channels_last
    )
    y = split.y.numpy()
    p_true = np.clip(probs[np.arange(len(y)), y], 1e-12, 1.0)
    return {"val_loss": float(-np.log(p_true).mean()), "val_accuracy": float((probs.argmax(1) == y).mean())}


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
) -> FitResult:
    """Train ``model`` on ``data.train``, select on ``data.val``; return the selected model."""
    generator = seed_everything(seed)
    mixing = recipe.augment.mixup_alpha > 0 or recipe.augment.cutmix_alpha > 0
    objective = objective or Objective(recipe.loss, data.num_classes, mixing)
    model = model.to(device)
    if recipe.channels_last:
        model = model.to(memory_format=torch.channels_last)
    forward = distributed.wrap(model, device)  # DDP under torchrun: gradients averaged over ranks
    world = distributed.world_size()
    train = data.train
    per_rank = len(train) // world  # each rank trains on its shard of every epoch's permutation
    batch = min(recipe.batch_size, per_rank - per_rank % 2)
    steps_per_epoch = max(1, per_rank // batch)  # drop the ragged last batch (BatchNorm, mixup)

    optimizer = build_optimizer(model, recipe.optimizer)
    scheduler = build_scheduler(optimizer, recipe.scheduler, recipe.epochs, steps_per_epoch)
    ema = ModelEmaV3(model, decay=recipe.ema.decay) if recipe.ema.enabled else None
    augment = BatchAugment(recipe.augment, data.num_classes, recipe.loss.label_smoothing, device)
    rand_augment = TensorRandAugment(recipe.augment.randaugment) if recipe.augment.randaugment.num_ops else None
    penalty = ParameterPenalty(model, recipe.penalty) if recipe.penalty.weight > 0 else None
    amp_dtype = _amp_dtype(recipe.amp, device)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None

    result = FitResult(model=model)
    start_epoch, global_step = 0, 0
    train_images, train_seconds = 0, 0.0
    best_score, best_state, stale = -math.inf, None, 0
    resume = load_resume_state(checkpoint_path, fingerprint) if checkpoint_path else None
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        load_scheduler_state(scheduler, resume["scheduler"])
        if ema is not None:
            ema.module.load_state_dict(resume["ema"])
        if scaler is not None:
            scaler.load_state_dict(resume["scaler"])
        restore_rng_state(resume["rng"], generator)
        start_epoch, global_step = resume["epoch"], resume["global_step"]
        best_score, best_state, stale = resume["best_score"], resume["best_state"], resume["stale"]
        result.history, result.best_epoch = list(resume["history"]), resume["best_epoch"]
        result.train_time_s = resume["train_time_s"]
        train_images, train_seconds = resume["train_images"], resume["train_seconds"]
        result.resumed_from_epoch = start_epoch
        log.info("%s: resumed from the checkpoint after epoch %d", desc, start_epoch)

    # a live bar on a terminal; one log line per epoch when output goes to a file or CI log
    use_bar = progress and sys.stderr.isatty()
    bar = tqdm(
        range(start_epoch, recipe.epochs),
        desc=desc,
        disable=not use_bar,
        unit="epoch",
        initial=start_epoch,
        total=recipe.epochs,
        leave=False,
        dynamic_ncols=True,
    )
    for epoch in bar:
        epoch_start = time.perf_counter()
        model.train()
        keep_frozen_norms_in_eval(model)
        order = torch.randperm(len(train), generator=generator)  # the same on every rank
        if world > 1:
            order = distributed.shard(order)
        loss_sum = 0.0
        for step in range(steps_per_epoch):
            idx = order[step * batch : (step + 1) * batch]
            raw = train.x[idx]
            if rand_augment is not None:
                raw = rand_augment(raw)
            x = data.to_inputs(raw, device)
            y = train.y[idx].to(device, non_blocking=True)
            x, y = augment(x, y, generator)
            if recipe.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast_for(device, amp_dtype) if amp_dtype else torch.autocast(device.type, enabled=False):
                outputs = forward(x)
                loss = objective.loss(outputs, y, x)
                if penalty is not None:
                    loss = loss + penalty()
            if not torch.isfinite(loss):
                raise NonFiniteLossError(
                    f"{desc}: loss is {loss.item()} at epoch {epoch + 1}, step {step + 1}; "
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
            global_step += 1
            if ema is not None:
                ema.update(model, step=global_step)
            if scheduler is not None:
                scheduler.step_update(num_updates=global_step)
            loss_sum += loss.item()
        train_seconds += time.perf_counter() - epoch_start
        train_images += steps_per_epoch * batch * world

        eval_model = ema.module if ema is not None else model
        row = {
            "epoch": epoch + 1,
            "train_loss": distributed.mean_over_ranks(loss_sum / steps_per_epoch),
            **validate(eval_model, data, recipe, device, objective),
            "lr": current_lr(optimizer),
        }
        if scheduler is not None:
            scheduler.step(epoch + 1, row["val_loss"])
        row["epoch_time_s"] = time.perf_counter() - epoch_start
        result.history.append(row)
        result.train_time_s += row["epoch_time_s"]
        bar.set_postfix(loss=f"{row['train_loss']:.3f}", val_acc=f"{row['val_accuracy']:.3f}")
        if progress and not use_bar:
            log.info(
                "%s: epoch %d/%d train_loss %.3f val_loss %.3f val_acc %.3f (%.1fs)",
                desc,
                epoch + 1,
                recipe.epochs,
                row["train_loss"],
                row["val_loss"],
                row["val_accuracy"],
                row["epoch_time_s"],
            )

        score = _score(row, recipe.select_on)
        if score > best_score:
            best_score, best_state, stale = score, copy.deepcopy(eval_model.state_dict()), 0
            result.best_epoch = epoch + 1
        else:
            stale += 1
        stop = recipe.early_stopping_patience and stale >= recipe.early_stopping_patience
        if checkpoint_path is not None and distributed.is_main():  # written once
            save_resume_state(
                checkpoint_path,
                {
                    "fingerprint": fingerprint,
                    "epoch": epoch + 1,
                    "global_step": global_step,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler_state(scheduler),
                    "ema": ema.module.state_dict() if ema is not None else {},
                    "scaler": scaler.state_dict() if scaler is not None else {},
                    "rng": rng_state(generator),
                    "best_score": best_score,
                    "best_state": best_state,
                    "best_epoch": result.best_epoch,
                    "stale": stale,
                    "history": result.history,
                    "train_time_s": result.train_time_s,
                    "train_images": train_images,
                    "train_seconds": train_seconds,
                },
            )
        if stop:
            result.stopped_early = True
            log.info("%s: early stop after epoch %d (best epoch %d)", desc, epoch + 1, result.best_epoch)
            break
    bar.close()

    model.load_state_dict(best_state)
    result.model = model.eval()
    result.train_images_per_s = train_images / train_seconds if train_seconds else 0.0
    return result


def _amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    if device.type != "cuda" or amp == "off":
        return None
    if amp == "fp16":
        return torch.float16
    if amp == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16
