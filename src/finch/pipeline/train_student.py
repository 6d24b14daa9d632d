"""Stage `train_student`: the distilled ViT student, every variant over seeds."""

from __future__ import annotations

from functools import partial

from finch.config import FinchConfig, ModelConfig, StudentConfig
from finch.pipeline.paths import MODELS, PREPARED, file_hash, teacher_weights


def plan(cfg: FinchConfig, device) -> list:
    """The distilled ViT student: every variant in student.variants, once per seed; the teacher
    of a seed is that seed's CNN teacher."""
    from finch.data.splits import load_task
    from finch.runner import PlannedVariant
    from finch.study import Variant

    data = load_task(PREPARED, "target")
    sc = cfg.student
    planned = []
    for name in sc.variants:
        variant = Variant(
            stage="student",
            name=name,
            recipe=sc.recipe,
            settings={"student": sc.model_dump(exclude={"variants"}), "variant": name},
            objective=partial(student_objective, sc, name, cfg.teacher.model, device),
            build_model=partial(student_model, sc, name, data.num_classes, data.in_chans),
            # the teacher of the seed is part of what defines the run
            seed_settings=None if name == "none" else teacher_settings,
        )
        planned.append(PlannedVariant(variant, data, cfg.seeds, MODELS / "student"))
    return planned


def student_model(sc: StudentConfig, name: str, num_classes: int, in_chans: int, seed: int):
    """Variant ``name``'s ViT (the caller has seeded)."""
    from finch.distill import build_student

    return build_student(sc, name, num_classes, in_chans)


def student_objective(sc: StudentConfig, name: str, teacher_model: ModelConfig, device, data, seed: int):
    """Variant ``name``'s objective for ``seed``: distillation from that seed's teacher, or
    (``none``) the class token's loss alone."""
    from finch.distill import DistillationObjective, load_teacher

    teacher = None
    if name != "none":
        teacher = load_teacher(teacher_model, teacher_weights(seed), data.num_classes, data.in_chans, device)
    return DistillationObjective(sc.recipe.loss, data.num_classes, sc.recipe.augment.mixing, name, sc, teacher)


def teacher_settings(seed: int) -> dict:
    """What the seed's teacher adds to a distilled run's settings: the hash of its weights."""
    return {"teacher": file_hash(teacher_weights(seed))}


def run(cfg: FinchConfig) -> None:
    """The distilled ViT student: every variant in student.variants, once per seed."""
    from finch.pipeline.training import run_training_stage

    run_training_stage(plan, cfg, "train_student")
