"""Optimizers and learning-rate schedules, built by timm from the recipe."""

from __future__ import annotations

import warnings

import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.scheduler.scheduler import Scheduler
from timm.scheduler.wsd_lr import WSDLRScheduler

from finch.config import OptimizerConfig, SchedulerConfig
from finch.models import classifier_prefix

# timm's "sgd" is Nesterov SGD; "momentum" is plain heavy-ball SGD.
_TIMM_OPT = {"adam": "adam", "adamw": "adamw"}


def build_optimizer(model: torch.nn.Module, cfg: OptimizerConfig) -> torch.optim.Optimizer:
    """Optimizer over the trainable parameters (no weight decay on biases and norms).

    With ``backbone_lr_scale`` < 1, everything but the classification head learns at
    ``lr * backbone_lr_scale`` (timm's schedulers honour the groups' ``lr_scale``).
    """
    name = _TIMM_OPT.get(cfg.name) or ("sgd" if cfg.nesterov else "momentum")
    extra = {"momentum": cfg.momentum} if cfg.name == "sgd" else {}
    params = model if cfg.backbone_lr_scale == 1.0 else _scaled_groups(model, cfg)
    # one kernel per parameter tensor and operation (foreach=False) is what a CPU run has always
    # done, and keeps its numbers; on a GPU those launches cost more than the step itself
    # (Finch 0.71-0.77x timm's step on an H100 with ResNet-50), so there torch's default applies
    on_gpu = any(p.is_cuda for p in model.parameters())
    return create_optimizer_v2(
        params, opt=name, lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=None if on_gpu else False, **extra
    )


def _scaled_groups(model: torch.nn.Module, cfg: OptimizerConfig) -> list[dict]:
    head = classifier_prefix(model) + "."
    groups: dict[tuple[float, float], list] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        scale = 1.0 if name.startswith(head) else cfg.backbone_lr_scale
        decay = 0.0 if param.ndim <= 1 or name.endswith(".bias") else cfg.weight_decay
        groups.setdefault((scale, decay), []).append(param)
    return [
        {"params": ps, "lr": cfg.lr * scale, "lr_scale": scale, "weight_decay": decay}
        for (scale, decay), ps in groups.items()
    ]


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    cfg: SchedulerConfig,
    epochs: int,
    steps_per_epoch: int,
    total_steps: int | None = None,
) -> Scheduler | None:
    """A timm scheduler stepped every update (``step_update``) and every epoch (``step``).

    ``wsd`` (warm-up, stable, decay: timm's ``WSDLRScheduler``, stepped per update) ends its decay at
    ``total_steps`` (default ``epochs * steps_per_epoch``); :func:`end_wsd_at` moves that end to a
    shorter budget for a decay branch.
    """
    if cfg.name == "none":
        return None
    if cfg.name == "wsd":
        total = total_steps or epochs * steps_per_epoch
        warmup = cfg.warmup_epochs * steps_per_epoch
        check_wsd_budget(total, warmup, cfg)
        return WSDLRScheduler(
            optimizer,
            t_initial=total - warmup,
            decay_t=wsd_decay_steps(total, cfg),
            lr_min=cfg.min_lr,
            decay_fn=cfg.decay_shape,
            warmup_t=warmup,
            warmup_lr_init=cfg.warmup_lr,
            t_in_epochs=False,
        )
    common = dict(
        warmup_epochs=cfg.warmup_epochs,
        warmup_lr=cfg.warmup_lr,
        min_lr=cfg.min_lr,
        updates_per_epoch=steps_per_epoch,
    )
    if cfg.name == "cosine":
        sched, _ = create_scheduler_v2(optimizer, "cosine", num_epochs=epochs, step_on_epochs=False, **common)
    elif cfg.name == "cosine_restarts":
        cycle = max(1, epochs // cfg.restarts)
        sched, _ = create_scheduler_v2(
            optimizer,
            "cosine",
            num_epochs=cycle,
            cycle_limit=cfg.restarts,
            cycle_decay=1.0,
            step_on_epochs=False,
            **common,
        )
    elif cfg.name == "multistep":
        sched, _ = create_scheduler_v2(
            optimizer,
            "multistep",
            num_epochs=epochs,
            decay_milestones=cfg.milestones,
            decay_rate=cfg.decay_rate,
            step_on_epochs=True,
            **common,
        )
    else:  # plateau, on validation loss
        with warnings.catch_warnings():
            # timm warns that it does not checkpoint the plateau state; scheduler_state() does
            warnings.filterwarnings("ignore", "PlateauLRScheduler is deprecated", FutureWarning)
            sched, _ = create_scheduler_v2(
                optimizer,
                "plateau",
                num_epochs=epochs,
                patience_epochs=cfg.patience_epochs,
                decay_rate=cfg.decay_rate,
                plateau_mode="min",
                cooldown_epochs=0,
                **common,
            )
    return sched


def wsd_decay_steps(budget: int, cfg: SchedulerConfig) -> int:
    """Steps of the decay that ends a ``budget``-step run: ``decay_fraction`` of it."""
    return max(1, round(cfg.decay_fraction * budget))


def check_wsd_budget(budget: int, warmup: int, cfg: SchedulerConfig) -> None:
    """A budget's decay must start after the warm-up has ended."""
    decay = wsd_decay_steps(budget, cfg)
    if budget - decay < warmup:
        raise ValueError(
            f"a budget of {budget} optimizer steps decays over its last {decay}, which would start inside the "
            f"warm-up ({warmup} steps = scheduler.warmup_epochs x steps per epoch): raise the budget, or lower "
            "scheduler.warmup_epochs or scheduler.decay_fraction"
        )


def end_wsd_at(sched: WSDLRScheduler, budget: int, cfg: SchedulerConfig) -> None:
    """Make ``sched`` decay to its end at step ``budget`` (a decay branch); the stable rate up to
    the branch point is the same whatever the end, so a branch starts where the main run is."""
    check_wsd_budget(budget, sched.warmup_t, cfg)
    sched.t_initial = budget - sched.warmup_t
    sched.decay_t = wsd_decay_steps(budget, cfg)


def scheduler_state(sched: Scheduler | None) -> dict:
    """Full scheduler state, including the plateau counters timm leaves out."""
    if sched is None:
        return {}
    state = {"timm": sched.state_dict()}
    if hasattr(sched, "lr_scheduler"):  # timm's plateau wraps torch's ReduceLROnPlateau
        state["torch_plateau"] = sched.lr_scheduler.state_dict()
    return state


def load_scheduler_state(sched: Scheduler | None, state: dict) -> None:
    if sched is None:
        return
    sched.load_state_dict(state["timm"])
    if "torch_plateau" in state:
        sched.lr_scheduler.load_state_dict(state["torch_plateau"])


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    return float(optimizer.param_groups[0]["lr"])
