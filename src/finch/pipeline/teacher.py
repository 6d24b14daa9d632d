"""Stage `train_teacher`: the CNN teacher over seeds."""

from __future__ import annotations

from finch.config import FinchConfig
from finch.pipeline.common import BACKBONE, MODELS, PREPARED, RUNS, file_hash


def train_teacher(cfg: FinchConfig) -> None:
    """Fine-tune the CNN teacher from the pretrained backbone, once per seed."""
    from finch.data.splits import load_task
    from finch.models import build_model, load_backbone
    from finch.study import Variant, train_variant
    from finch.tracking import log_runs_safely
    from finch.train.runtime import configure

    device = configure(cfg.runtime)
    data = load_task(PREPARED, "target")
    tc = cfg.teacher

    def build(seed):
        model = build_model(tc.model, data.num_classes, data.in_chans)
        load_backbone(model, BACKBONE)
        return model

    variant = Variant(
        stage="teacher",
        name="default",
        build_model=build,
        recipe=tc.recipe,
        settings={
            "model": tc.model.model_dump(),
            "recipe": tc.recipe.model_dump(),
            "backbone_hash": file_hash(BACKBONE),
        },
    )
    folders = train_variant(variant, data, cfg.seeds, cfg, device, RUNS, MODELS / "teacher")
    log_runs_safely(folders, cfg.tracking, cfg.profile)
