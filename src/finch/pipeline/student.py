"""Stage `train_student`: the distilled ViT student, every variant over seeds."""

from __future__ import annotations

from finch.config import FinchConfig
from finch.pipeline.common import METRICS, MODELS, PREPARED, RUNS, file_hash, teacher_weights


def train_student(cfg: FinchConfig) -> None:
    """The distilled ViT student: every variant in student.variants, once per seed."""
    from finch.data.splits import load_task
    from finch.distill import DistillationObjective, build_student, load_teacher
    from finch.distributed import is_main
    from finch.runs import write_stage_metrics
    from finch.study import Variant, train_variant
    from finch.tracking import log_runs_safely
    from finch.train.runtime import configure

    device = configure(cfg.runtime)
    data = load_task(PREPARED, "target")
    sc = cfg.student
    recipe = sc.recipe
    folders = []
    for name in sc.variants:

        def objective(data, seed, name=name):
            teacher = None
            if name != "none":
                teacher = load_teacher(
                    cfg.teacher.model, teacher_weights(seed), data.num_classes, data.in_chans, device
                )
            return DistillationObjective(recipe.loss, data.num_classes, recipe.augment.mixing, name, sc, teacher)

        settings = {"student": sc.model_dump(exclude={"variants"}), "variant": name}
        if name != "none":  # the teacher of each seed is part of what defines the run
            settings["teacher"] = {str(s): file_hash(teacher_weights(s)) for s in cfg.seeds}
        variant = Variant(
            stage="student",
            name=name,
            recipe=recipe,
            settings=settings,
            objective=objective,
            build_model=lambda seed, name=name: build_student(sc, name, data.num_classes, data.in_chans),
        )
        folders += train_variant(variant, data, cfg.seeds, cfg, device, RUNS, MODELS / "student")
    log_runs_safely(folders, cfg.tracking, cfg.profile)
    if is_main():
        write_stage_metrics(RUNS, "student", METRICS / "train_student.json")
