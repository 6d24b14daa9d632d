"""A training recipe: epochs, batch size, optimizer, scheduler, loss, augmentation and the rest.

Every stage that trains (pretrain, teacher, student, finetune, ...) holds one or more of these.
The defaults, at every level, are the default profile's teacher recipe: ``RecipeConfig()`` is
that recipe, and every other recipe (in profiles/default.yaml and in the sections' defaults)
states only what differs from it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from finch.config.base import Strict


class OptimizerConfig(Strict):
    name: Literal["sgd", "adam", "adamw"] = "adamw"
    lr: float = Field(2e-3, gt=0.0, le=10.0)
    weight_decay: float = Field(0.05, ge=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    nesterov: bool = True
    backbone_lr_scale: float = Field(
        1.0, gt=0.0, le=1.0, description="learning rate of everything but the head, as a share of lr"
    )


class SchedulerConfig(Strict):
    name: Literal["cosine", "wsd", "multistep", "plateau", "cosine_restarts", "none"] = "wsd"
    warmup_epochs: int = Field(1, ge=0)
    warmup_lr: float = Field(1e-5, ge=0.0)
    min_lr: float = Field(1e-5, ge=0.0)
    milestones: list[int] = Field(
        default_factory=lambda: [10, 20],
        description="multistep: 1-based epochs from which the rate is multiplied by decay_rate",
    )
    decay_rate: float = Field(0.1, gt=0.0, le=1.0)
    patience_epochs: int = Field(2, ge=0)
    restarts: int = Field(2, ge=1, description="cycles for cosine_restarts")
    decay_fraction: float = Field(
        0.2, gt=0.0, le=1.0, description="wsd: the share of each budget spent decaying to min_lr (Hägele et al. 2024)"
    )
    decay_shape: Literal["1-sqrt", "linear", "cosine"] = Field("1-sqrt", description="wsd: the decay's shape")


class LossConfig(Strict):
    name: Literal["cross_entropy", "focal"] = "cross_entropy"
    label_smoothing: float = Field(0.1, ge=0.0, lt=1.0)
    focal_gamma: float = Field(2.0, ge=0.0)


class RandAugmentConfig(Strict):
    num_ops: int = Field(0, ge=0, le=8, description="RandAugment operations per image; 0 = off")
    magnitude: int = Field(9, ge=0, le=30)


class AugmentConfig(Strict):
    flip: bool = True
    translate: int = Field(2, ge=0, description="max shift in pixels")
    erasing: float = Field(0.0, ge=0.0, le=1.0, description="random erasing probability")
    mixup_alpha: float = Field(0.0, ge=0.0)
    cutmix_alpha: float = Field(0.0, ge=0.0)
    mix_prob: float = Field(1.0, ge=0.0, le=1.0)
    randaugment: RandAugmentConfig = RandAugmentConfig()

    @property
    def mixing(self) -> bool:
        """Whether mixup or cutmix is on: targets become soft label distributions."""
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0


class EmaConfig(Strict):
    enabled: bool = False
    decay: float = Field(0.998, gt=0.0, lt=1.0)


class PenaltyConfig(Strict):
    weight: float = Field(0.0, ge=0.0, description="lambda of lambda * sum |w|^p added to the loss; 0 = off")
    p: float = Field(1.0, gt=0.0, description="1 = L1 (sparsity), 2 = L2 (coupled, unlike weight_decay)")
    params: str = Field(
        r".*weight$", description="regex on parameter names (trainable ones only), e.g. '^fc\\.' for the head"
    )


class KFoldConfig(Strict):
    k: int = Field(0, ge=0, description="0 = the fixed validation split; k >= 2 = k folds of train+val")


class RecipeConfig(Strict):
    epochs: int = Field(40, ge=1, description="the run's length where it has no budgets")
    batch_size: int = Field(64, ge=2)
    optimizer: OptimizerConfig = OptimizerConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    loss: LossConfig = LossConfig()
    augment: AugmentConfig = AugmentConfig()
    ema: EmaConfig = EmaConfig()
    penalty: PenaltyConfig = PenaltyConfig()
    kfold: KFoldConfig = KFoldConfig()
    grad_clip: float | None = Field(None, gt=0.0)
    early_stopping_patience: int = Field(0, ge=0, description="0 = off")
    budgets: list[float] = Field(
        default_factory=lambda: [20.0, 40.0],
        description="wsd: where the run is evaluated, each at the end of its own decay branched off the one main "
        "run, in epochs of the stage's reference training set (its own; train_augmented: the real images), i.e. "
        "the same optimizer steps for every variant of a comparison; the largest is the run's length (epochs is "
        "then unused); [] = epochs",
    )
    select_on: Literal["val_accuracy", "val_loss", "last"] = Field(
        "last",
        description="the epoch kept: best val_accuracy | best val_loss | last (wsd: the end of the decay)",
    )
    amp: Literal["auto", "bf16", "fp16", "off"] = "auto"
    channels_last: bool = False
    eval_batch_size: int = Field(500, ge=1)
    tta: Literal["none", "flip"] = Field(
        "flip",
        description="test-time augmentation at every evaluation (validation, budgets, test): flip = the mean "
        "probability of the image and its horizontal mirror (twice the evaluation cost)",
    )

    @model_validator(mode="after")
    def _mix_needs_even_batch(self) -> RecipeConfig:
        if self.augment.mixing and self.batch_size % 2:
            raise ValueError(f"batch_size {self.batch_size} must be even when mixup/cutmix is on")
        return self

    @model_validator(mode="after")
    def _budgets_need_wsd(self) -> RecipeConfig:
        if self.budgets:
            if self.scheduler.name != "wsd":
                raise ValueError(f"budgets {self.budgets} need scheduler.name: wsd (a decay branch per budget)")
            if any(b <= 0 for b in self.budgets) or sorted(set(self.budgets)) != self.budgets:
                raise ValueError(f"budgets {self.budgets} must be positive epoch counts in increasing order")
        if self.scheduler.name == "wsd":
            if self.select_on != "last":
                raise ValueError(
                    "scheduler wsd evaluates each budget's model at the end of its decay: set select_on: last"
                )
            if self.early_stopping_patience:
                raise ValueError("scheduler wsd runs every budget to its end: set early_stopping_patience: 0")
        return self
