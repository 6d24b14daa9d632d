"""Stage `finetune`: every freezing strategy over seeds."""

from __future__ import annotations

from finch.config import FinchConfig
from finch.pipeline.paths import BACKBONE, FEATURES, MODELS, PREPARED, VIT_BACKBONE, file_hash, probe_weights


def plan(cfg: FinchConfig, device) -> list:
    """Every freezing strategy over every seed (probes on the cached features); lp_ft's run of a
    seed waits for linear_probe's run of that seed (its head starts from it)."""
    from finch.data.splits import load_task
    from finch.io import load_tensors
    from finch.runner import PlannedVariant
    from finch.study import Variant
    from finch.transfer import STRATEGIES, build_network, feature_extractor, feature_task

    data = load_task(PREPARED, "target")
    fc = cfg.finetune
    backbones = {"cnn": (cfg.pretrain.model, BACKBONE), "vit": (cfg.pretrain.vit_model, VIT_BACKBONE)}
    # a probe's total counts the frozen backbone that made its cached features
    backbone_size = {
        kind: sum(p.numel() for p in feature_extractor(m, w, data.in_chans).parameters())
        for kind, (m, w) in backbones.items()
    }
    planned = []
    for strategy in fc.strategies:
        spec = STRATEGIES[strategy]
        model_cfg, weights = backbones[spec.backbone]
        settings = {"strategy": strategy, "backbone": file_hash(weights), "model": model_cfg.model_dump()}
        settings.update(spec.settings(fc))
        recipe = spec.recipe_of(fc)
        settings["recipe"] = recipe.model_dump()
        if spec.is_probe:
            cache = FEATURES / f"{spec.backbone}.safetensors"
            task = feature_task(load_tensors(cache), data, content_hash=file_hash(cache))

            def build(seed, spec=spec, task=task):
                return spec.head(task.train.x.shape[1], task.num_classes, fc.mlp_hidden)
        else:
            task = data

            def build(seed, strategy=strategy, model_cfg=model_cfg, weights=weights):
                return build_network(strategy, fc, model_cfg, weights, data, probe_weights(seed))

        variant = Variant(
            stage="finetune",
            name=strategy,
            recipe=recipe,
            settings=settings,
            build_model=build,
            frozen_outside=backbone_size[spec.backbone] if spec.is_probe else 0,
            # its start is the seed's linear probe
            seed_settings=(lambda seed: {"probe": file_hash(probe_weights(seed))}) if spec.head_from_probe else None,
        )
        needs = ("linear_probe",) if spec.head_from_probe else ()
        planned.append(PlannedVariant(variant, task, cfg.seeds, MODELS / "finetune", needs=needs))
    return planned


def run(cfg: FinchConfig) -> None:
    """Every freezing strategy over every seed (probes on the cached features)."""
    from finch.pipeline.training import run_training_stage

    run_training_stage(plan, cfg, "finetune")
