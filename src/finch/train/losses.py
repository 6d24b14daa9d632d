"""Losses and the objective a training run optimises.

Cross-entropy (with label smoothing) and focal loss share one formula over target
distributions, so they accept both class indices and mixup's soft targets:
``loss = -sum_k t_k (1 - p_k)^gamma log p_k``; gamma = 0 is cross-entropy.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F

from finch.config import LossConfig, PenaltyConfig


def smoothed_targets(y: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    """Class indices → distributions with ``smoothing`` spread evenly (as torch/timm do)."""
    if y.dtype.is_floating_point:
        return y
    off = smoothing / num_classes
    t = torch.full((len(y), num_classes), off, device=y.device)
    return t.scatter_(1, y[:, None], 1.0 - smoothing + off)


def focal_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, gamma: float) -> torch.Tensor:
    """Mean over the batch of ``-sum_k t_k (1-p_k)^gamma log p_k``."""
    log_p = F.log_softmax(logits.float(), dim=-1)
    weight = (1.0 - log_p.exp()).pow(gamma) if gamma > 0 else 1.0
    return -(targets * weight * log_p).sum(-1).mean()


class Objective:
    """What a run minimises and how its outputs become class logits.

    Stages change the objective (distillation adds a teacher term), never the loop.
    ``loss(outputs, targets, inputs)`` gets the augmented inputs too, for teachers.
    """

    def __init__(self, cfg: LossConfig, num_classes: int, mixing: bool):
        self.cfg = cfg
        self.num_classes = num_classes
        # with mixup, timm's Mixup already smoothed the targets
        self.smoothing = 0.0 if mixing else cfg.label_smoothing
        self.gamma = cfg.focal_gamma if cfg.name == "focal" else 0.0

    def loss(self, outputs, targets: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        t = smoothed_targets(targets, self.num_classes, self.smoothing)
        return focal_cross_entropy(self.logits(outputs), t, self.gamma)

    @staticmethod
    def logits(outputs) -> torch.Tensor:
        return outputs

    def heads(self) -> dict:
        """Extra prediction heads to evaluate besides :meth:`logits` (name → outputs-to-logits)."""
        return {}


class ParameterPenalty:
    """``weight * sum_i |w_i|^p`` over the trainable parameters whose names match ``params``:
    p = 1 is the L1 (lasso) penalty, p = 2 the coupled L2 penalty (unlike AdamW's decoupled
    weight decay, it passes through the optimizer's adaptive scaling)."""

    def __init__(self, model: torch.nn.Module, cfg: PenaltyConfig):
        pattern = re.compile(cfg.params)
        self.cfg = cfg
        self.names = [n for n, p in model.named_parameters() if p.requires_grad and pattern.search(n)]
        if cfg.weight > 0 and not self.names:
            raise ValueError(
                f"recipe.penalty.params {cfg.params!r} matches no trainable parameter; "
                f"names look like {[n for n, _ in model.named_parameters()][:4]}"
            )
        named = dict(model.named_parameters())
        self.params = [named[n] for n in self.names]

    def __call__(self) -> torch.Tensor:
        if self.cfg.p == 1.0:
            return self.cfg.weight * sum(w.abs().sum() for w in self.params)
        return self.cfg.weight * sum(w.abs().pow(self.cfg.p).sum() for w in self.params)
