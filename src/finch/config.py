"""Typed, validated configuration read from ``params.yaml``.

Every stage calls :func:`load_params` first: an unknown key, a wrong type or an
out-of-range value fails before any work, naming the key and what is allowed.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from finch.errors import ConfigError

FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(Strict):
    source: Literal["fashion_mnist", "image_folder", "cub200"] = "fashion_mnist"
    root: str | None = Field(None, description="data folder; null = the source's default location")
    image_size: int = Field(28, ge=8, le=1024)
    channels: Literal[1, 3] = 1
    target_classes: list[str] | None = Field(
        None, description="class names of the fine-grained target task; null = all"
    )
    source_classes: list[str] | Literal["rest"] = Field(
        "rest", description="classes for pretraining; 'rest' = all not in the target"
    )
    per_class_train: int | None = Field(300, ge=2, description="null = all images")
    per_class_pretrain: int | None = Field(1000, ge=2, description="null = all images")
    per_class_test: int | None = Field(
        None, ge=1, description="at most this many test images per class, the first in the source's order; null = all"
    )
    val_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0, description="image_folder without a test/ folder only")
    data_seed: int = Field(0, ge=0)
    on_bad_image: Literal["fail", "skip"] = "fail"
    mean: list[float] = Field(default_factory=lambda: [0.2860])
    std: list[float] = Field(default_factory=lambda: [0.3530])

    @model_validator(mode="after")
    def _norm_matches_channels(self) -> DataConfig:
        for key in ("mean", "std"):
            if len(getattr(self, key)) != self.channels:
                raise ValueError(
                    f"data.{key} has {len(getattr(self, key))} values but data.channels is "
                    f"{self.channels}; give one value per channel"
                )
        if any(s <= 0 for s in self.std):
            raise ValueError("data.std values must be > 0")
        return self


class ModelConfig(Strict):
    name: str = Field("resnet18", description="a timm model name")
    kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="extra timm.create_model arguments; null = unset (timm's default), which lets a profile "
        "unset a kwarg it inherits",
    )
    small_input_stem: bool = Field(False, description="drop the stem's max-pool (for 28-64 px images)")
    drop_rate: float | None = Field(None, ge=0.0, lt=1.0, description="dropout before the classifier; null = timm's")
    drop_path_rate: float | None = Field(None, ge=0.0, lt=1.0, description="stochastic depth; null = timm's")
    attn_drop_rate: float | None = Field(None, ge=0.0, lt=1.0, description="ViT attention dropout; null = timm's")

    @field_validator("kwargs")
    @classmethod
    def _drop_unset(cls, kwargs: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in kwargs.items() if v is not None}

    def timm_kwargs(self) -> dict[str, Any]:
        """``kwargs`` plus the regularisation rates that are set."""
        rates = {k: getattr(self, k) for k in ("drop_rate", "drop_path_rate", "attn_drop_rate")}
        return {**self.kwargs, **{k: v for k, v in rates.items() if v is not None}}

    def fitted_to(self, image_size: int, key: str) -> ModelConfig:
        """This ViT with ``img_size`` and ``patch_size`` filled in where its kwargs leave them unset:
        ``img_size`` = ``image_size``, ``patch_size`` = :func:`vit_patch_size` of it. ``key`` (e.g.
        ``student.model``) names the setting in errors: an ``img_size`` the data does not have, or a
        ``patch_size`` that does not divide it, fails here, before any work."""
        kwargs = dict(self.kwargs)
        size = kwargs.setdefault("img_size", image_size)
        if size != image_size and not kwargs.get("dynamic_img_size"):
            raise ValueError(
                f"{key}.kwargs.img_size is {size} but data.image_size is {image_size}: the ViT would reject "
                f"every image. Set {key}.kwargs.img_size to {image_size} (with a patch_size that divides it), "
                f"or to null, and it follows data.image_size"
            )
        if kwargs.get("patch_size") is None:
            patch = vit_patch_size(size)
            if patch is None:
                raise ValueError(
                    f"{key}: no patch size from 2 to 16 divides {key}.kwargs.img_size {size} into at least "
                    f"{MIN_PATCHES_PER_SIDE} patches per side; set {key}.kwargs.patch_size, or use an "
                    f"image size with such a divisor (data.image_size: 28, 32, 64, 224, ...)"
                )
            kwargs["patch_size"] = patch
        elif not isinstance(kwargs["patch_size"], int) or size % kwargs["patch_size"]:
            raise ValueError(
                f"{key}.kwargs.patch_size {kwargs['patch_size']!r} does not divide img_size {size}: the border "
                f"pixels would be dropped. Set it to a divisor of {size} "
                f"(e.g. {vit_patch_size(size) or 'another image size'}), or to null and Finch picks one"
            )
        return self.model_copy(update={"kwargs": kwargs})


# ViT input sizes: see ModelConfig.fitted_to and the README's "Your own dataset".
MAX_AUTO_PATCH = 16  # the patch of timm's *_patch16_* ViTs
MIN_PATCHES_PER_SIDE = 4


def vit_patch_size(image_size: int) -> int | None:
    """The patch size Finch picks for a ViT on ``image_size`` px images when none is set: the
    largest divisor of ``image_size`` up to 16 (timm's ``*_patch16_*``) that leaves at least 4
    patches per side (28 → 7, 32 → 8, 48 → 12, 64 → 16, 224 → 16); None if no divisor ≥ 2 does."""
    for patch in range(min(MAX_AUTO_PATCH, image_size // MIN_PATCHES_PER_SIDE), 1, -1):
        if image_size % patch == 0:
            return patch
    return None


class OptimizerConfig(Strict):
    name: Literal["sgd", "adam", "adamw"] = "adamw"
    lr: float = Field(1e-3, gt=0.0, le=10.0)
    weight_decay: float = Field(0.05, ge=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    nesterov: bool = True
    backbone_lr_scale: float = Field(
        1.0, gt=0.0, le=1.0, description="learning rate of everything but the head, as a share of lr"
    )


class SchedulerConfig(Strict):
    name: Literal["cosine", "multistep", "plateau", "cosine_restarts", "none"] = "cosine"
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


class LossConfig(Strict):
    name: Literal["cross_entropy", "focal"] = "cross_entropy"
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
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
    epochs: int = Field(15, ge=1)
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
    select_on: Literal["val_accuracy", "val_loss"] = "val_accuracy"
    amp: Literal["auto", "bf16", "fp16", "off"] = "auto"
    channels_last: bool = False
    eval_batch_size: int = Field(500, ge=1)

    @model_validator(mode="after")
    def _mix_needs_even_batch(self) -> RecipeConfig:
        if self.augment.mixing and self.batch_size % 2:
            raise ValueError(f"batch_size {self.batch_size} must be even when mixup/cutmix is on")
        return self


VIT_BACKBONE = ModelConfig(  # img_size and patch_size follow data.image_size (FinchConfig._models_fit_the_data)
    name="vit_tiny_patch16_224", kwargs={"embed_dim": 96, "depth": 4, "num_heads": 3}
)


class PretrainConfig(Strict):
    weights: Literal["source", "timm"] = Field(
        "source", description="train on the source classes, or take timm's ImageNet weights"
    )
    seed: int = Field(0, ge=0)
    model: ModelConfig = ModelConfig()
    recipe: RecipeConfig = RecipeConfig()
    vit_model: ModelConfig = Field(VIT_BACKBONE, description="the ViT backbone for the transfer study")
    vit_recipe: RecipeConfig = RecipeConfig()


class TeacherConfig(Strict):
    model: ModelConfig = ModelConfig()
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
    model: ModelConfig = ModelConfig(
        name="deit_tiny_distilled_patch16_224",
        kwargs={"embed_dim": 96, "depth": 4, "num_heads": 3},  # img_size, patch_size: from data.image_size
    )
    class_token_model: str = Field(
        "vit_tiny_patch16_224", description="timm ViT without a distillation token (class_token variant)"
    )
    pretrained: bool = Field(False, description="start from timm's weights (GPU profile)")
    variants: list[StudentVariant] = Field(default_factory=lambda: list(STUDENT_VARIANTS), min_length=1)
    soft: SoftDistillConfig = SoftDistillConfig()
    hard: HardDistillConfig = HardDistillConfig()
    class_token_signal: Literal["hard", "soft"] = "hard"
    kl_normalisation: Literal["batchmean", "per_logit"] = "batchmean"
    recipe: RecipeConfig = RecipeConfig()


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
    strategies: list[TransferStrategy] = Field(default_factory=lambda: list(TRANSFER_STRATEGIES), min_length=1)
    partial_stages: int = Field(1, ge=1, le=4, description="partial: the last k ResNet stages + head train")
    backbone_lr_scale: float = Field(0.1, gt=0.0, le=1.0, description="full: backbone lr = lr x this")
    lp_ft_lr_scale: float = Field(
        0.1, gt=0.0, le=1.0, description="lp_ft's fine-tuning phase: the whole network at lr x this"
    )
    mlp_hidden: int = Field(256, ge=1)
    lora: LoraConfig = LoraConfig()
    probe_recipe: RecipeConfig = RecipeConfig()
    recipe: RecipeConfig = RecipeConfig()
    vit_recipe: RecipeConfig = RecipeConfig()

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
        return self


class GanConfig(Strict):
    seed: int = Field(0, ge=0)
    grid_per_class: int = Field(8, ge=1, description="columns of the per-epoch sample grid")
    z_dim: int = Field(64, ge=1)
    width: int = Field(64, ge=8, description="channels of the widest generator layer / 2")
    embed_dim: int = Field(16, ge=1)
    conditioning: Literal["concat", "projection"] = "concat"
    epochs: int = Field(60, ge=1)
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
        default_factory=lambda: [0.5, 1.0], description="synthetic-to-real ratios of train_augmented"
    )
    synthetic_only: bool = Field(True, description="also train on synthetic images only (the CAS)")
    pr_k: int = Field(3, ge=1, description="k of the k-NN precision/recall")
    real_per_class: int | None = Field(
        None,
        ge=1,
        description="the scarce-data regime of the GAN study: the GAN and every train_augmented variant see "
        "only the first N real training images of each class; null = all of them",
    )
    epochs: int | None = Field(
        None, ge=1, description="train_augmented's epochs (its recipe is the teacher's); null = the teacher's"
    )

    @model_validator(mode="after")
    def _ratios_positive(self) -> SyntheticConfig:
        if any(r <= 0 for r in self.ratios):
            raise ValueError(f"synthetic.ratios {self.ratios}: every ratio must be > 0")
        return self


class RuntimeConfig(Strict):
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int = Field(1, ge=1, description="torch CPU threads per worker (fixed: part of determinism)")
    workers: int = Field(
        2, ge=1, description="processes a training stage spreads its runs over (results do not depend on it)"
    )
    deterministic: bool = True
    progress: bool = True
    launcher: str = Field(
        "python",
        description="how the training stages start: python, or torchrun --standalone --nproc_per_node=N (DDP)",
    )


class EvaluateConfig(Strict):
    ece_bins: int = Field(15, ge=2)


class TrackingConfig(Strict):
    enabled: bool = True
    uri: str | None = Field(None, description="null = sqlite mlflow.db at the repo root")
    experiment_prefix: str = "finch"
    log_weights: bool = True


class AggregateConfig(Strict):
    confidence: float = Field(0.95, gt=0.5, lt=1.0)
    bootstrap_resamples: int = Field(9999, ge=100)
    bootstrap_seed: int = 0
    headline_metrics: list[str] = Field(default_factory=lambda: ["accuracy", "f1_macro", "auroc_macro", "ece"])
    baselines: dict[str, list[str]] = Field(
        default_factory=lambda: {
            "student": ["none"],
            "finetune": ["linear_probe", "scratch"],
            "augmented": ["real"],
            "ablation": ["teacher/default"],
        },
        description="stage → variants (or other stage/variant) every variant is compared with, paired by seed",
    )
    variant_baselines: dict[str, dict[str, list[str]]] = Field(
        default_factory=lambda: {"augmented": {"synthetic_only": ["real_scratch"], "real_scratch": [], "real": []}},
        description="stage → {variant: its own baselines, replacing the stage's `baselines` ([] = none)}",
    )


class AblationConfig(Strict):
    base: Literal["teacher"] = Field("teacher", description="the stage whose model and recipe are varied")
    run: list[str] = Field(
        default_factory=list, description="which named variants the stage trains (each over every seed)"
    )
    variants: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
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


class ConvergenceConfig(Strict):
    """The convergence check: one seed of every variant trained again with a longer schedule."""

    enabled: bool = True
    factor: float = Field(2.0, gt=1.0, description="the longer schedule: epochs x this (warm-up and decay stretched)")


# The ViTs whose img_size / patch_size follow data.image_size unless their kwargs set them
# (student.model's kwargs also build the class_token variant's plain ViT).
VIT_SLOTS = ("pretrain.vit_model", "student.model")


class FinchConfig(Strict):
    profile: str = "default"
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2, 3, 4], min_length=1)
    runtime: RuntimeConfig = RuntimeConfig()
    data: DataConfig = DataConfig()
    pretrain: PretrainConfig = PretrainConfig()
    teacher: TeacherConfig = TeacherConfig()
    student: StudentConfig = StudentConfig()
    finetune: FinetuneConfig = FinetuneConfig(probe_recipe=RecipeConfig(augment=AugmentConfig(flip=False, translate=0)))
    gan: GanConfig = GanConfig()
    synthetic: SyntheticConfig = SyntheticConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    tracking: TrackingConfig = TrackingConfig()
    aggregate: AggregateConfig = AggregateConfig()
    ablation: AblationConfig = AblationConfig()
    explain: ExplainConfig = ExplainConfig()
    verify: VerifyConfig = VerifyConfig()
    convergence: ConvergenceConfig = ConvergenceConfig()

    @model_validator(mode="after")
    def _cross_checks(self) -> FinchConfig:
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds {self.seeds} repeat a value; list each seed once")
        if self.pretrain.weights == "source" and self.data.source_classes != "rest" and not self.data.source_classes:
            raise ValueError(
                "pretrain.weights is 'source' but data.source_classes is empty: "
                "name source classes, or set pretrain.weights: timm"
            )
        for name in self.ablation.run:
            ablation_variant(self, name)  # raises with the variant's name and key
        scarce, per_class = self.synthetic.real_per_class, self.data.per_class_train
        if scarce is not None and per_class is not None:
            train_per_class = per_class - max(1, round(self.data.val_fraction * per_class))
            if scarce > train_per_class:
                raise ValueError(
                    f"synthetic.real_per_class is {scarce} but data.per_class_train {per_class} leaves "
                    f"{train_per_class} training images per class after the validation split; "
                    f"set it to at most {train_per_class}, or null (all)"
                )
        # a k-fold run is an ensemble of k models per seed; these runs' weights are loaded later
        # as one model (the backbones, the students' teacher, explain's student, lp_ft's probe)
        loaded = {
            "pretrain.recipe": self.pretrain.recipe,
            "pretrain.vit_recipe": self.pretrain.vit_recipe,
            "teacher.recipe": self.teacher.recipe,
            "student.recipe": self.student.recipe,
            "finetune.probe_recipe": self.finetune.probe_recipe,
        }
        for where, recipe in loaded.items():
            if recipe.kfold.k >= 2:
                raise ValueError(
                    f"{where}.kfold.k is {recipe.kfold.k}: a k-fold run is an ensemble of k models per seed, "
                    "and a later stage loads this run's weights as one model; set k to 0 here and try k-fold "
                    "as an ablation variant (ablation.variants, e.g. kfold_5)"
                )
        return self

    @model_validator(mode="after")
    def _models_fit_the_data(self) -> FinchConfig:
        """Every model takes the data's channels (``in_chans`` = data.channels, passed by Finch),
        and the ViTs (:data:`VIT_SLOTS`) its image size: unset ``img_size`` / ``patch_size`` are
        filled in from data.image_size (:meth:`ModelConfig.fitted_to`), a mismatch fails here."""
        for key in ("pretrain.model", "pretrain.vit_model", "teacher.model", "student.model"):
            section, slot = key.split(".")
            model: ModelConfig = getattr(getattr(self, section), slot)
            owned = sorted({"in_chans", "num_classes"} & set(model.kwargs))
            if owned:
                raise ValueError(
                    f"{key}.kwargs sets {', '.join(owned)}; Finch passes them (data.channels, the task's "
                    f"classes): remove {' and '.join(owned)} from {key}.kwargs"
                )
            if key in VIT_SLOTS:
                fitted = model.fitted_to(self.data.image_size, key)
                # frozen: the validated config is rebuilt section by section, never mutated in place
                object.__setattr__(self, section, getattr(self, section).model_copy(update={slot: fitted}))
            elif model.kwargs.get("img_size", self.data.image_size) != self.data.image_size:
                raise ValueError(
                    f"{key}.kwargs.img_size is {model.kwargs['img_size']} but data.image_size is "
                    f"{self.data.image_size}; set it to {self.data.image_size}, or remove it"
                )
        return self


def deep_merge(base: dict, override: dict) -> dict:
    """A copy of ``base`` with ``override``'s keys replaced, recursing into nested mappings;
    shares no mutable value with either input."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def ablation_variant(cfg: FinchConfig, name: str) -> tuple[ModelConfig, RecipeConfig]:
    """The model and recipe of ablation variant ``name``: the base stage's, with its overrides."""
    base = getattr(cfg, cfg.ablation.base)
    override = cfg.ablation.variants[name]
    try:
        model = ModelConfig.model_validate(deep_merge(base.model.model_dump(), override.get("model", {})))
        recipe = RecipeConfig.model_validate(deep_merge(base.recipe.model_dump(), override.get("recipe", {})))
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors())
        raise ValueError(f"ablation.variants.{name}: {problems}") from None
    return model, recipe


def _format_error(path: Path, err: ValidationError, model: type[BaseModel]) -> str:
    lines = [f"{path}: invalid params ({err.error_count()} problem(s)):"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            allowed = _allowed_keys(model, e["loc"][:-1])
            lines.append(f"  - {key}: unknown key; allowed here: {', '.join(allowed)}")
        else:
            got = e.get("input")
            got_txt = "" if isinstance(got, dict) else f" (got {got!r})"
            lines.append(f"  - {key}: {e['msg']}{got_txt}")
    return "\n".join(lines)


def _allowed_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    current: Any = model
    for part in loc:
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return []
        current = field.annotation
    return sorted(getattr(current, "model_fields", {}))


def parse_params(raw: dict, source: Path | str = "params.yaml") -> FinchConfig:
    """Validate a params mapping into a :class:`FinchConfig` or raise ConfigError."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(raw).__name__}")
    try:
        return FinchConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_error(Path(source), err, FinchConfig)) from None


def load_params(path: Path | str = "params.yaml") -> FinchConfig:
    """Read and validate ``params.yaml``."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found; run from the repository root")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    return parse_params(raw, path)


def config_hash(obj: Any) -> str:
    """Stable short hash of a config section (pydantic model or plain data)."""
    data = obj.model_dump(mode="json") if isinstance(obj, BaseModel) else obj
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Flatten nested dicts into dotted keys (for MLflow params)."""
    if isinstance(data, BaseModel):
        data = data.model_dump(mode="json")
    out: dict[str, Any] = {}
    if isinstance(data, dict):
        for k, v in data.items():
            out.update(flatten(v, f"{prefix}{k}."))
    else:
        out[prefix.rstrip(".")] = data
    return out
