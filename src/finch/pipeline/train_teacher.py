"""Stage `train_teacher`: the CNN teacher over seeds."""

from __future__ import annotations

from functools import partial

from finch.config import FinchConfig, ModelConfig, RecipeConfig
from finch.pipeline.paths import BACKBONE, MODELS, PREPARED, file_hash


def backbone_cnn_variant(stage: str, name: str, model_cfg: ModelConfig, recipe: RecipeConfig, data):
    """A CNN fine-tuned from the pretrained backbone with ``recipe``: the teacher, and every
    recipe variant of the ablation stage."""
    from finch.models import build_from_backbone
    from finch.study import Variant

    return Variant(
        stage=stage,
        name=name,
        build_model=partial(build_from_backbone, model_cfg, data.num_classes, data.in_chans, BACKBONE),
        recipe=recipe,
        settings={"model": model_cfg.model_dump(), "recipe": recipe.model_dump(), "backbone_hash": file_hash(BACKBONE)},
    )


def plan(cfg: FinchConfig, device) -> list:
    """The teacher: the CNN fine-tuned from the pretrained backbone, once per seed."""
    from finch.data.splits import load_task
    from finch.runner import PlannedVariant

    data = load_task(PREPARED, "target")
    variant = backbone_cnn_variant("teacher", "default", cfg.teacher.model, cfg.teacher.recipe, data)
    return [PlannedVariant(variant, data, cfg.seeds, MODELS / "teacher")]


def run(cfg: FinchConfig) -> None:
    """Fine-tune the CNN teacher from the pretrained backbone, once per seed."""
    from finch.pipeline.training import run_training_stage

    run_training_stage(plan, cfg, "train_teacher")
