"""Stage `finetune`: every freezing strategy over seeds."""

from __future__ import annotations

from finch.config import FinchConfig
from finch.pipeline.common import BACKBONE, FEATURES, MODELS, PREPARED, RUNS, VIT_BACKBONE, file_hash, probe_weights


def finetune(cfg: FinchConfig) -> None:
    """Every freezing strategy over every seed (probes on the cached features)."""
    from finch.data.splits import load_task
    from finch.io import load_tensors
    from finch.study import Variant, train_variant
    from finch.tracking import log_runs_safely
    from finch.train.runtime import configure
    from finch.transfer import PROBES, backbone_of, build_network, feature_extractor, feature_task, probe_head

    device = configure(cfg.runtime)
    data = load_task(PREPARED, "target")
    fc = cfg.finetune
    backbones = {"cnn": (cfg.pretrain.model, BACKBONE), "vit": (cfg.pretrain.vit_model, VIT_BACKBONE)}
    # a probe's total counts the frozen backbone that made its cached features
    backbone_size = {
        kind: sum(p.numel() for p in feature_extractor(m, w, data.in_chans).parameters())
        for kind, (m, w) in backbones.items()
    }
    folders = []
    for strategy in fc.strategies:
        kind = backbone_of(strategy)
        model_cfg, weights = backbones[kind]
        settings = {"strategy": strategy, "backbone": file_hash(weights), "model": model_cfg.model_dump()}
        if strategy in PROBES:
            cache = FEATURES / f"{kind}.safetensors"
            task = feature_task(load_tensors(cache), data, content_hash=file_hash(cache))
            recipe = fc.probe_recipe
            settings["mlp_hidden"] = fc.mlp_hidden if strategy == "mlp_probe" else None

            def build(seed, strategy=strategy, task=task):
                return probe_head(strategy, task.train.x.shape[1], task.num_classes, fc.mlp_hidden)
        else:
            task = data
            recipe = fc.vit_recipe if kind == "vit" else fc.recipe
            if strategy == "frozen_backbone":  # same head, same training budget as the probe: only the path differs
                recipe = recipe.model_copy(
                    update={"epochs": fc.probe_recipe.epochs, "optimizer": fc.probe_recipe.optimizer}
                )
            if strategy in ("full", "lp_ft"):
                recipe = recipe.model_copy(
                    update={
                        "optimizer": recipe.optimizer.model_copy(update={"backbone_lr_scale": fc.backbone_lr_scale})
                    }
                )
            settings.update(
                partial_stages=fc.partial_stages if strategy == "partial" else None,
                lora=fc.lora.model_dump() if strategy == "vit_lora" else None,
            )

            def build(seed, strategy=strategy, model_cfg=model_cfg, weights=weights):
                return build_network(strategy, fc, model_cfg, weights, data, probe_weights(seed))

        settings["recipe"] = recipe.model_dump()
        if strategy == "lp_ft":  # its start is each seed's linear probe
            settings["probe"] = {s: file_hash(probe_weights(s)) for s in cfg.seeds}
        variant = Variant(
            stage="finetune",
            name=strategy,
            recipe=recipe,
            settings=settings,
            build_model=build,
            frozen_outside=backbone_size[kind] if strategy in PROBES else 0,
        )
        folders += train_variant(variant, task, cfg.seeds, cfg, device, RUNS, MODELS / "finetune")
    log_runs_safely(folders, cfg.tracking, cfg.profile)
