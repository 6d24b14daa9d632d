"""DeiT-style distillation: the student's two heads, the teacher, and the losses.

The student is timm's distilled ViT (class token + distillation token, two heads). It is
wrapped so both heads come out in training *and* evaluation; timm's own forward averages
them in eval mode, which would hide the per-head metrics.

Variants (``student.variants``):

- ``none``: no teacher. Both heads are trained on the labels (mean of the two losses) and
  the prediction is their average, as for the distilled variants: the architecture, the
  parameter count and the compute are identical, so a paired difference against ``none``
  measures the teacher's signal and nothing else.
- ``soft``: (1-a) CE(class head, y) + a tau^2 KL(softmax(teacher/tau) || softmax(dist head/tau))
- ``hard``: (1-a) CE(class head, y) + a CE(dist head, argmax teacher)
- ``class_token``: a plain ViT (no distillation token) whose single head gets the hard (or
  soft) teacher term: DeiT's ablation of what the token adds.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from finch.config import LossConfig, ModelConfig, StudentConfig
from finch.errors import ModelError
from finch.io import load_tensors
from finch.models import build_model
from finch.train.losses import Objective, focal_cross_entropy, smoothed_targets

DISTILLED = ("none", "soft", "hard")


class TwoHeadStudent(nn.Module):
    """timm's distilled ViT, returning ``(class_logits, dist_logits)`` in every mode."""

    def __init__(self, vit: nn.Module):
        super().__init__()
        if not hasattr(vit, "head_dist"):
            raise ModelError(f"{type(vit).__name__} has no distillation head; use a timm *_distilled_* model")
        self.vit = vit

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.vit.forward_features(x)
        return self.vit.head(tokens[:, 0]), self.vit.head_dist(tokens[:, 1])


def build_student(cfg: StudentConfig, variant: str, num_classes: int, in_chans: int) -> nn.Module:
    """The distilled ViT (two heads) for none/soft/hard; a plain ViT for class_token."""
    if variant == "class_token":
        return build_model(cfg.model.model_copy(update={"name": cfg.class_token_model}), num_classes, in_chans)
    vit = build_model(cfg.model, num_classes, in_chans, pretrained=cfg.pretrained)
    return TwoHeadStudent(vit)


def kl_distillation(student_logits: torch.Tensor, teacher_logits: torch.Tensor, tau: float, normalisation: str):
    """tau^2 KL(softmax(teacher/tau) || softmax(student/tau)).

    ``batchmean`` (our default, as in timm and PyTorch's definition of KL): the sum over
    classes averaged over the batch, i.e. the true per-sample KL divergence. ``per_logit``
    (DeiT's code: ``reduction='sum'`` then ``/ student.numel()``): additionally divided by
    the number of classes, so the same alpha weighs the teacher term C times less.
    """
    kl = F.kl_div(
        F.log_softmax(student_logits.float() / tau, dim=-1),
        F.log_softmax(teacher_logits.float() / tau, dim=-1),
        reduction="sum",
        log_target=True,
    )
    denom = student_logits.shape[0] if normalisation == "batchmean" else student_logits.numel()
    return kl * tau * tau / denom


class DistillationObjective(Objective):
    """The student's loss for one variant; the teacher sees exactly the student's batch."""

    def __init__(
        self,
        loss_cfg: LossConfig,
        num_classes: int,
        mixing: bool,
        variant: str,
        cfg: StudentConfig,
        teacher: nn.Module | None,
    ):
        super().__init__(loss_cfg, num_classes, mixing)
        if variant != "none" and teacher is None:
            raise ModelError(f"student variant {variant!r} needs a teacher")
        self.variant, self.cfg, self.teacher = variant, cfg, teacher
        signal = cfg.class_token_signal if variant == "class_token" else variant
        self.signal = None if variant == "none" else signal
        self.alpha = cfg.soft.alpha if signal == "soft" else cfg.hard.alpha

    def label_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        t = smoothed_targets(targets, self.num_classes, self.smoothing)
        return focal_cross_entropy(logits, t, self.gamma)

    def teacher_loss(self, logits: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            teacher_logits = self.teacher(inputs)
        if self.signal == "soft":
            return kl_distillation(logits, teacher_logits, self.cfg.soft.tau, self.cfg.kl_normalisation)
        return F.cross_entropy(logits.float(), teacher_logits.argmax(dim=-1))

    def loss(self, outputs, targets, inputs):
        if self.variant == "none":
            cls, dist = outputs
            return 0.5 * (self.label_loss(cls, targets) + self.label_loss(dist, targets))
        if self.variant == "class_token":
            cls = dist = outputs
        else:
            cls, dist = outputs
        a = self.alpha
        return (1 - a) * self.label_loss(cls, targets) + a * self.teacher_loss(dist, inputs)

    @staticmethod
    def logits(outputs) -> torch.Tensor:
        """The reported prediction: the average of both heads for two-head students (DeiT)."""
        if isinstance(outputs, tuple):
            return 0.5 * (outputs[0] + outputs[1])
        return outputs

    def heads(self) -> dict:
        if self.variant == "class_token":
            return {}
        return {"head_cls": lambda o: o[0], "head_dist": lambda o: o[1]}


def load_teacher(model_cfg: ModelConfig, weights: Path, num_classes: int, in_chans: int, device) -> nn.Module:
    """The frozen teacher of one seed, in eval mode; a shape mismatch fails clearly."""
    state = load_tensors(weights)
    teacher = build_model(model_cfg, num_classes, in_chans)
    expected = teacher.state_dict()
    wrong = [
        (k, tuple(v.shape), tuple(expected[k].shape))
        for k, v in state.items()
        if k in expected and v.shape != expected[k].shape
    ]
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if wrong or missing or unexpected:
        detail = ", ".join(f"{k}: file {a} vs model {b}" for k, a, b in wrong[:3]) or (
            f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        )
        raise ModelError(
            f"{weights}: teacher does not fit the student's data ({num_classes} classes, {in_chans} channel(s)): "
            f"{detail}. Re-run train_teacher on the same prepared data."
        )
    teacher.load_state_dict(state)
    teacher.eval().requires_grad_(False)
    return teacher.to(device)
