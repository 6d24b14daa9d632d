"""Stage `ablation`: named recipe variants of the teacher, each over every seed.

Each variant is the teacher's model and recipe with a few overrides from
``ablation.variants``; the aggregate pairs each with the teacher itself by seed.
"""

from __future__ import annotations

import logging

from finch.config import FinchConfig
from finch.pipeline.paths import MODELS, PREPARED, RUNS, stage_metrics

log = logging.getLogger(__name__)
NOTHING_RUN = "nothing_run.txt"


def plan(cfg: FinchConfig, device) -> list:
    """Every variant in ``ablation.run``: the teacher's model and recipe with its overrides."""
    from finch.config import ablation_variant
    from finch.data.splits import load_task
    from finch.pipeline.train_teacher import backbone_cnn_variant
    from finch.runner import PlannedVariant

    data = load_task(PREPARED, "target")
    planned = []
    for name in cfg.ablation.run:
        model_cfg, recipe = ablation_variant(cfg, name)
        variant = backbone_cnn_variant("ablation", name, model_cfg, recipe, data)
        planned.append(PlannedVariant(variant, data, cfg.seeds, MODELS / "ablation"))
    return planned


def has_work(cfg: FinchConfig) -> bool:
    """The default study trains no ablation: then the stage imports neither torch nor MLflow."""
    return bool(cfg.ablation.run)


def run(cfg: FinchConfig) -> None:
    """Train every variant in ``ablation.run`` over the seeds."""
    for i, name in enumerate(cfg.ablation.run, 1):
        log.info(
            "ablation %d/%d: %s = %s + %s",
            i,
            len(cfg.ablation.run),
            name,
            cfg.ablation.base,
            cfg.ablation.variants[name],
        )
    # the declared outputs exist even when ablation.run is empty (the default study trains none)
    (MODELS / "ablation").mkdir(parents=True, exist_ok=True)
    (RUNS / "ablation").mkdir(parents=True, exist_ok=True)
    if not cfg.ablation.run:  # nothing to train: no torch, no MLflow (the stage's start-up stays small)
        from finch.runs import write_stage_metrics

        # a file, so that git keeps the (uncached) runs folder and a fresh clone's `dvc status`
        # finds the output it recorded instead of calling ablation and aggregate changed
        (RUNS / "ablation" / NOTHING_RUN).write_text("ablation.run is empty: this study trains no ablation\n")
        write_stage_metrics(RUNS, "ablation", stage_metrics("ablation"))
        return
    from finch.pipeline.training import run_training_stage

    run_training_stage(plan, cfg, "ablation")
