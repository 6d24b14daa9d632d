"""Stage `ablation`: named recipe variants of the teacher, each over every seed.

Each variant is the teacher's model and recipe with a few overrides from
``ablation.variants``; the aggregate pairs each with the teacher itself by seed.
"""

from __future__ import annotations

from finch.config import FinchConfig
from finch.pipeline.common import METRICS, MODELS, PREPARED, RUNS, log


def train_ablation(cfg: FinchConfig) -> None:
    """Train every variant in ``ablation.run`` over the seeds."""
    from finch.config import ablation_variant
    from finch.data.splits import load_task
    from finch.distributed import is_main
    from finch.pipeline.teacher import backbone_cnn_variant
    from finch.runs import write_stage_metrics
    from finch.study import train_variant
    from finch.tracking import log_runs_safely
    from finch.train.runtime import configure

    device = configure(cfg.runtime)
    data = load_task(PREPARED, "target")
    folders = []
    for i, name in enumerate(cfg.ablation.run, 1):
        model_cfg, recipe = ablation_variant(cfg, name)
        log.info(
            "ablation %d/%d: %s = %s + %s",
            i,
            len(cfg.ablation.run),
            name,
            cfg.ablation.base,
            cfg.ablation.variants[name],
        )
        variant = backbone_cnn_variant("ablation", name, model_cfg, recipe, data)
        folders += train_variant(variant, data, cfg.seeds, cfg, device, RUNS, MODELS / "ablation")
    log_runs_safely(folders, cfg.tracking, cfg.profile)
    if is_main():
        write_stage_metrics(RUNS, "ablation", METRICS / "ablation.json")
