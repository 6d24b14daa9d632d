"""Typed, validated configuration read from ``params.yaml``.

Every stage calls :func:`load_params` first: an unknown key, a wrong type or an
out-of-range value fails before any work, naming the key and what is allowed.

The sections live in modules by concern (``data``, ``model``, ``recipe``, ``stages``,
``runtime``, ``tune``; ``params`` holds the whole, ``load`` reads it); every name is importable from
``finch.config`` itself.
"""

from finch.config.base import Strict, deep_merge
from finch.config.data import FASHION_MNIST_CLASSES, DataConfig
from finch.config.load import config_hash, flatten, load_params, parse_params
from finch.config.model import MAX_AUTO_PATCH, MIN_PATCHES_PER_SIDE, ModelConfig, TokenizerConfig, vit_patch_size
from finch.config.params import VIT_SLOTS, FinchConfig, ablation_variant
from finch.config.recipe import (
    AugmentConfig,
    EmaConfig,
    KFoldConfig,
    LossConfig,
    OptimizerConfig,
    PenaltyConfig,
    RandAugmentConfig,
    RecipeConfig,
    SchedulerConfig,
)
from finch.config.runtime import (
    AggregateConfig,
    EvaluateConfig,
    RuntimeConfig,
    SlurmConfig,
    TrackingConfig,
    VerifyConfig,
)
from finch.config.stages import (
    ABLATION_VARIANTS,
    DEIT_STUDENT,
    RESNET10,
    STUDENT_VARIANTS,
    TRANSFER_STRATEGIES,
    VIT_BACKBONE,
    AblationConfig,
    ExplainConfig,
    FinetuneConfig,
    GanConfig,
    HardDistillConfig,
    LoraConfig,
    PretrainConfig,
    SoftDistillConfig,
    StudentConfig,
    StudentVariant,
    SyntheticConfig,
    TeacherConfig,
    TransferStrategy,
)
from finch.config.tune import SearchDimension, TuneConfig

__all__ = [
    "ABLATION_VARIANTS",
    "DEIT_STUDENT",
    "FASHION_MNIST_CLASSES",
    "MAX_AUTO_PATCH",
    "MIN_PATCHES_PER_SIDE",
    "RESNET10",
    "STUDENT_VARIANTS",
    "TRANSFER_STRATEGIES",
    "VIT_BACKBONE",
    "VIT_SLOTS",
    "AblationConfig",
    "AggregateConfig",
    "AugmentConfig",
    "DataConfig",
    "EmaConfig",
    "EvaluateConfig",
    "ExplainConfig",
    "FinchConfig",
    "FinetuneConfig",
    "GanConfig",
    "HardDistillConfig",
    "KFoldConfig",
    "LoraConfig",
    "LossConfig",
    "ModelConfig",
    "OptimizerConfig",
    "PenaltyConfig",
    "PretrainConfig",
    "RandAugmentConfig",
    "RecipeConfig",
    "RuntimeConfig",
    "SlurmConfig",
    "SchedulerConfig",
    "SearchDimension",
    "SoftDistillConfig",
    "Strict",
    "StudentConfig",
    "StudentVariant",
    "SyntheticConfig",
    "TeacherConfig",
    "TokenizerConfig",
    "TrackingConfig",
    "TransferStrategy",
    "TuneConfig",
    "VerifyConfig",
    "ablation_variant",
    "config_hash",
    "deep_merge",
    "flatten",
    "load_params",
    "parse_params",
    "vit_patch_size",
]
