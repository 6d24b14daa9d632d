"""Stage `train_student`: the distilled ViT student, every variant over seeds."""

from __future__ import annotations

from finch.config import FinchConfig
from finch.pipeline.paths import MODELS, PREPARED, file_hash, teacher_weights


def plan(cfg: FinchConfig, device) -> list:
    """The distilled ViT student: every variant in student.variants, once per seed; the teacher
    of a seed is that seed's CNN teacher."""
    from finch.data.splits import load_task
    from finch.distill import DistillationObjective, build_student, load_teacher
    from finch.runner import PlannedVariant
    from finch.study import Variant

    data = load_task(PREPARED, "target")
    sc = cfg.student
    recipe = sc.recipe
    planned = []
    for name in sc.variants:

        def objective(data, seed, name=name):
            teacher = None
            if name != "none":
                teacher = load_teacher(
                    cfg.teacher.model, teacher_weights(seed), data.num_classes, data.in_chans, device
                )
            return DistillationObjective(recipe.loss, data.num_classes, recipe.augment.mixing, name, sc, teacher)

        variant = Variant(
            stage="student",
            name=name,
            recipe=recipe,
            settings={"student": sc.model_dump(exclude={"variants"}), "variant": name},
            objective=objective,
            build_model=lambda seed, name=name: build_student(sc, name, data.num_classes, data.in_chans),
            # the teacher of the seed is part of what defines the run
            seed_settings=None if name == "none" else lambda seed: {"teacher": file_hash(teacher_weights(seed))},
        )
        planned.append(PlannedVariant(variant, data, cfg.seeds, MODELS / "student"))
    return planned


def run(cfg: FinchConfig) -> None:
    """The distilled ViT student: every variant in student.variants, once per seed."""
    from finch.pipeline.training import run_training_stage

    run_training_stage(plan, cfg, "train_student")
