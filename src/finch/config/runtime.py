"""How runs execute and are reported: runtime, evaluate, tracking, aggregate, verify."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from finch.config.base import Strict


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
    plateau_delta: float = Field(
        0.01,
        gt=0.0,
        lt=1.0,
        description="plateau rule: a variant is at a plateau when the 95% interval of its gain between its last "
        "two budgets lies below this (accuracy; 0.01 = one point, about the binomial SE of 4,000 test images)",
    )
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


class VerifyConfig(Strict):
    abs_tolerance: float = Field(0.01, ge=0.0, description="allowed |fresh - committed| per metric")
