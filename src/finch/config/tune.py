"""The ``tune`` section: what ``finch tune`` searches (Optuna), on the validation split only."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from finch.config.base import Strict


class SearchDimension(Strict):
    """One searched key: a range (``low``..``high``, ``log`` for rates, ``step`` for a grid;
    integers when both ends are) or a list of ``choices``."""

    low: int | float | None = None
    high: int | float | None = None
    log: bool = False
    step: float | None = Field(None, gt=0.0)
    choices: list[Any] | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _range_or_choices(self) -> SearchDimension:
        if self.choices is not None:
            if self.low is not None or self.high is not None:
                raise ValueError("give either low/high or choices, not both")
            return self
        if self.low is None or self.high is None:
            raise ValueError("give low and high (a range) or choices (a list)")
        if self.low >= self.high:
            raise ValueError(f"low {self.low} must be below high {self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"log: true needs low > 0, not {self.low}")
        if self.log and self.step is not None:
            raise ValueError("log and step cannot both be set (Optuna samples a log range continuously)")
        return self

    @property
    def integer(self) -> bool:
        return isinstance(self.low, int) and isinstance(self.high, int) and (self.step is None or self.step == 1)


class TuneConfig(Strict):
    stage: Literal["teacher", "student", "finetune", "augmented"] = Field(
        "teacher", description="the training stage whose variant is searched"
    )
    variant: str = Field("default", description="which of the stage's variants (teacher: default; student: hard...)")
    trials: int = Field(20, ge=1, description="finished trials (complete or pruned) the search runs to")
    seed: int = Field(0, ge=0, description="the training seed (and train/validation split) of every trial")
    sampler: Literal["tpe", "grid"] = Field(
        "tpe", description="tpe: Optuna's TPE; grid: every combination of the choices once (choices only)"
    )
    sampler_seed: int = Field(0, ge=0, description="seed of Optuna's sampler")
    pruner: Literal["successive_halving", "hyperband", "none"] = Field(
        "successive_halving", description="stops trials at their budget branches (validation accuracy)"
    )
    reduction_factor: int = Field(2, ge=2, description="successive halving / Hyperband: keep 1 in this many")
    fixed: dict[str, Any] = Field(
        default_factory=lambda: {"teacher.recipe.budgets": [5, 10, 20]},
        description="params every trial sets (dotted keys of params.yaml, e.g. teacher.recipe.budgets: the "
        "search's budgets: each is a branch a trial is pruned at)",
    )
    space: dict[str, SearchDimension] = Field(
        default_factory=lambda: {
            "teacher.recipe.optimizer.lr": SearchDimension(low=3e-4, high=1e-2, log=True),
            "teacher.recipe.optimizer.weight_decay": SearchDimension(low=1e-3, high=0.2, log=True),
            "teacher.recipe.loss.label_smoothing": SearchDimension(low=0.0, high=0.3, step=0.05),
            "teacher.recipe.batch_size": SearchDimension(choices=[32, 64, 128]),
        },
        description="dotted keys of params.yaml → their range or choices",
        min_length=1,
    )

    @model_validator(mode="after")
    def _grid_needs_choices(self) -> TuneConfig:
        ranges = [key for key, dim in self.space.items() if dim.choices is None]
        if self.sampler == "grid" and ranges:
            raise ValueError(f"tune.sampler grid needs choices for every key; {', '.join(ranges)} has a range")
        return self

    @model_validator(mode="after")
    def _keys_apart(self) -> TuneConfig:
        both = sorted(set(self.fixed) & set(self.space))
        if both:
            raise ValueError(f"tune: {', '.join(both)} is both fixed and searched; keep it in one of the two")
        return self
