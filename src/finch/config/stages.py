"""The study stages' sections: pretrain, teacher, student, finetune, gan, synthetic, ablation,
explain.

Their defaults are the default profile's values (profiles/default.yaml; tests/test_config.py
checks that the two agree). A recipe states only what differs from ``RecipeConfig()``, the
teacher's, as the profile does.
"""

from __future__ import annotations

import copy
from typing import Any, Literal, get_args

from pydantic import Field, model_validator

from finch.config.base import Strict
from finch.config.model import ModelConfig, TokenizerConfig
from finch.config.recipe import AugmentConfig, LossConfig, OptimizerConfig, RecipeConfig, SchedulerConfig

# a recipe without budgets on a cosine schedule, keeping its best validation epoch: pretraining
# (a means to the backbone, not a finding) and the feature probes
BEST_EPOCH_COSINE = {"budgets": [], "scheduler": SchedulerConfig(name="cosine"), "select_on": "val_accuracy"}

# ResNet-10 (timm's ResNet with one basic block per stage, widths 32..256): the backbone and the teacher
RESNET10 = ModelConfig(name="resnet18", kwargs={"channels": [32, 64, 128, 256], "layers": [1, 1, 1, 1]})
# img_size and patch_size of the ViTs follow data.image_size (FinchConfig._models_fit_the_data)
VIT_BACKBONE = ModelConfig(name="vit_tiny_patch16_224", kwargs={"embed_dim": 96, "depth": 4, "num_heads": 3})
# the default student: DeiT-style (class and distillation tokens) on a CCT-style convolutional
# tokenizer, three conv-ReLU-max-pool blocks taking 28 px to 4 x 4 tokens (reports/tune/student-none.md)
DEIT_STUDENT = ModelConfig(
    name="deit_tiny_distilled_patch16_224",
    kwargs={"embed_dim": 96, "depth": 4, "num_heads": 3, "drop_path_rate": 0.0, "attn_drop_rate": 0.0},
    tokenizer=TokenizerConfig(channels=[32, 64, 96]),
)


class PretrainConfig(Strict):
    weights: Literal["source", "timm"] = Field(
        "source", description="train on the source classes, or take timm's ImageNet weights"
    )
    seed: int = Field(0, ge=0)
    model: ModelConfig = RESNET10
    recipe: RecipeConfig = RecipeConfig(epochs=6, batch_size=128, **BEST_EPOCH_COSINE)
    vit_model: ModelConfig = Field(VIT_BACKBONE, description="the ViT backbone for the transfer study")
    vit_recipe: RecipeConfig = RecipeConfig(epochs=8, batch_size=128, **BEST_EPOCH_COSINE)


class TeacherConfig(Strict):
    model: ModelConfig = RESNET10
    recipe: RecipeConfig = RecipeConfig()


class SoftDistillConfig(Strict):
    alpha: float = Field(
        0.1, ge=0.0, le=1.0, description="weight of the teacher term (DeiT paper: 0.1; DeiT's code: 0.5)"
    )
    tau: float = Field(3.0, gt=0.0, description="temperature (DeiT paper: 3; DeiT's code: 1)")


class HardDistillConfig(Strict):
    alpha: float = Field(0.5, ge=0.0, le=1.0, description="weight of the teacher term (DeiT: 0.5)")


StudentVariant = Literal["none", "soft", "hard", "class_token"]
STUDENT_VARIANTS: tuple[str, ...] = get_args(StudentVariant)


class StudentConfig(Strict):
    model: ModelConfig = DEIT_STUDENT
    class_token_model: str = Field(
        "vit_tiny_patch16_224", description="timm ViT without a distillation token (class_token variant)"
    )
    pretrained: bool = Field(False, description="start from timm's weights (GPU profile)")
    variants: list[StudentVariant] = Field(default_factory=lambda: ["none", "hard"], min_length=1)
    soft: SoftDistillConfig = SoftDistillConfig()
    hard: HardDistillConfig = HardDistillConfig()
    class_token_signal: Literal["hard", "soft"] = "hard"
    kl_normalisation: Literal["batchmean", "per_logit"] = "batchmean"
    recipe: RecipeConfig = RecipeConfig(epochs=20, budgets=[10, 20], scheduler=SchedulerConfig(warmup_epochs=2))


class LoraConfig(Strict):
    rank: int = Field(8, ge=1)
    alpha: float = Field(16.0, gt=0.0)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: str = Field(r".*\.attn\.(qkv|proj)", description="peft regex: the attention projections")


TransferStrategy = Literal[
    "linear_probe",
    "mlp_probe",
    "frozen_backbone",
    "partial",
    "full",
    "lp_ft",
    "scratch",
    "vit_linear_probe",
    "vit_last_block",
    "vit_attention_only",
    "vit_lora",
    "vit_full",
]
TRANSFER_STRATEGIES: tuple[str, ...] = get_args(TransferStrategy)


class FinetuneConfig(Strict):
    strategies: list[TransferStrategy] = Field(
        default_factory=lambda: ["linear_probe", "partial", "full", "scratch"], min_length=1
    )
    partial_stages: int = Field(2, ge=1, le=4, description="partial: the last k ResNet stages + head train")
    backbone_lr_scale: float = Field(1.0, gt=0.0, le=1.0, description="full: backbone lr = lr x this")
    lp_ft_lr_scale: float = Field(
        0.1, gt=0.0, le=1.0, description="lp_ft's fine-tuning phase: the whole network at lr x this"
    )
    mlp_hidden: int = Field(256, ge=1)
    lora: LoraConfig = LoraConfig()
    probe_recipe: RecipeConfig = RecipeConfig(  # on cached features: no image augmentation
        epochs=40,
        budgets=[],
        select_on="val_accuracy",
        optimizer=OptimizerConfig(lr=0.003, weight_decay=0.0001),
        scheduler=SchedulerConfig(name="cosine", warmup_epochs=0),
        loss=LossConfig(label_smoothing=0.0),
        augment=AugmentConfig(flip=False, translate=0),
        tta="none",
    )
    recipe: RecipeConfig = RecipeConfig(epochs=20, budgets=[10, 20])
    vit_recipe: RecipeConfig = RecipeConfig(epochs=12, budgets=[])

    @model_validator(mode="after")
    def _checks(self) -> FinetuneConfig:
        if len(set(self.strategies)) != len(self.strategies):
            raise ValueError("finetune.strategies lists a strategy twice")
        if "lp_ft" in self.strategies and (
            "linear_probe" not in self.strategies
            or self.strategies.index("linear_probe") > self.strategies.index("lp_ft")
        ):
            raise ValueError("finetune.strategies: lp_ft starts from linear_probe's head; list linear_probe before it")
        aug = self.probe_recipe.augment
        if aug.flip or aug.translate or aug.erasing or aug.mixing:
            raise ValueError(
                "finetune.probe_recipe.augment must be all off: probes train on cached features, not images"
            )
        if self.probe_recipe.tta != "none":
            raise ValueError("finetune.probe_recipe.tta must be none: probes read cached features, not images")
        return self


class GanConfig(Strict):
    seed: int = Field(0, ge=0)
    grid_per_class: int = Field(8, ge=1, description="columns of the per-epoch sample grid")
    z_dim: int = Field(64, ge=1)
    width: int = Field(32, ge=8, description="channels of the widest generator layer / 2")
    embed_dim: int = Field(16, ge=1)
    conditioning: Literal["concat", "projection"] = "concat"
    epochs: int = Field(100, ge=1)
    batch_size: int = Field(64, ge=2)
    lr: float = Field(2e-4, gt=0)
    beta1: float = Field(0.5, ge=0, lt=1)
    beta2: float = Field(0.999, ge=0, lt=1)
    collapse_ratio: float = Field(0.1, ge=0, description="warn below this share of real within-class spread")
    d_loss_floor: float = Field(0.05, ge=0, description="warn when the discriminator loss stays below this")
    d_loss_patience: int = Field(5, ge=1, description="... for this many epochs")


class SyntheticConfig(Strict):
    per_class: int | None = Field(
        None, ge=1, description="generated images per class; null = enough for the largest ratio"
    )
    seed: int = Field(0, ge=0)
    ratios: list[float] = Field(
        default_factory=lambda: [1.0], description="synthetic-to-real ratios of train_augmented"
    )
    synthetic_only: bool = Field(True, description="also train on synthetic images only (the CAS)")
    pr_k: int = Field(3, ge=1, description="k of the k-NN precision/recall")
    real_per_class: int | None = Field(
        100,
        ge=1,
        description="the scarce-data regime of the GAN study: the GAN and every train_augmented variant see "
        "only the first N real training images of each class; null = all of them",
    )
    budgets: list[float] | None = Field(
        default_factory=lambda: [40.0, 80.0],
        description="train_augmented's budgets in epochs of the real images (the same optimizer steps for every "
        "variant, whatever its images; its recipe is the teacher's); null = the teacher's",
    )

    @model_validator(mode="after")
    def _ratios_positive(self) -> SyntheticConfig:
        if any(r <= 0 for r in self.ratios):
            raise ValueError(f"synthetic.ratios {self.ratios}: every ratio must be > 0")
        return self


# The ablation's named variants: overrides of the teacher's `model` and `recipe` (the lab notes' tricks)
ABLATION_VARIANTS: dict[str, dict[str, Any]] = {
    "sgd_cosine": {
        "recipe": {
            "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 0.0005},
            "scheduler": {"name": "cosine"},
        }
    },
    "adam_cosine": {"recipe": {"optimizer": {"name": "adam", "weight_decay": 0.0}, "scheduler": {"name": "cosine"}}},
    "adamw_plateau": {"recipe": {"scheduler": {"name": "plateau", "patience_epochs": 2, "decay_rate": 0.5}}},
    "adamw_multistep": {"recipe": {"scheduler": {"name": "multistep", "milestones": [30, 40], "decay_rate": 0.1}}},
    "adamw_restarts": {"recipe": {"scheduler": {"name": "cosine_restarts", "restarts": 2}}},
    "no_smoothing": {"recipe": {"loss": {"label_smoothing": 0.0}}},
    "focal": {"recipe": {"loss": {"name": "focal", "focal_gamma": 2.0, "label_smoothing": 0.0}}},
    "mixup_cutmix": {"recipe": {"augment": {"mixup_alpha": 0.2, "cutmix_alpha": 1.0, "mix_prob": 0.5}}},
    "erasing": {"recipe": {"augment": {"erasing": 0.25}}},
    "randaugment": {"recipe": {"augment": {"randaugment": {"num_ops": 2, "magnitude": 9}}}},
    "no_augment": {"recipe": {"augment": {"flip": False, "translate": 0}}},
    "l1": {"recipe": {"penalty": {"weight": 0.00001, "p": 1.0}}},
    "l2_coupled": {"recipe": {"optimizer": {"weight_decay": 0.0}, "penalty": {"weight": 0.0001, "p": 2.0}}},
    "dropout": {"model": {"drop_rate": 0.3}},
    "drop_path": {"model": {"drop_path_rate": 0.1}},
    "ema": {"recipe": {"ema": {"enabled": True, "decay": 0.99}}},
    "early_stopping": {"recipe": {"early_stopping_patience": 4, "scheduler": {"name": "cosine"}}},
    "batch_128": {"recipe": {"batch_size": 128}},
    "kfold_5": {"recipe": {"kfold": {"k": 5}}},
}


class AblationConfig(Strict):
    base: Literal["teacher"] = Field("teacher", description="the stage whose model and recipe are varied")
    run: list[str] = Field(
        default_factory=list, description="which named variants the stage trains (each over every seed)"
    )
    variants: dict[str, dict[str, Any]] = Field(
        default_factory=lambda: copy.deepcopy(ABLATION_VARIANTS),
        description="name → overrides of the base's `model` and `recipe` (nested keys, merged); "
        "the default profile lists the lab notes' tricks",
    )

    @model_validator(mode="after")
    def _run_names_exist(self) -> AblationConfig:
        missing = [name for name in self.run if name not in self.variants]
        if missing:
            raise ValueError(f"ablation.run names {missing} not in ablation.variants ({', '.join(self.variants)})")
        for name, override in self.variants.items():
            extra = set(override) - {"model", "recipe"}
            if extra:
                raise ValueError(f"ablation.variants.{name}: only `model` and `recipe` can be overridden, not {extra}")
        return self


class ExplainConfig(Strict):
    images_per_class: int = Field(2, ge=1, le=16, description="fixed test images per class in the figure")
    seed: int | None = Field(None, description="which seed's models to explain; null = the first of `seeds`")
    student_variant: str = Field("hard", description="the student variant whose attention is shown")


class VerifyConfig(Strict):
    abs_tolerance: float = Field(0.01, ge=0.0, description="allowed |fresh - committed| per metric")
