"""Stage `finetune`: every freezing strategy over seeds."""

from __future__ import annotations

from functools import partial

from finch.config import FinchConfig
from finch.pipeline.paths import BACKBONE, FEATURES, MODELS, PREPARED, VIT_BACKBONE, file_hash, probe_weights


def plan(cfg: FinchConfig, device) -> list:
    """Every freezing strategy over every seed (probes on the cached features); lp_ft's run of a
    seed waits for linear_probe's run of that seed (its head starts from it)."""
    from finch.data.splits import load_task
    from finch.io import load_tensors
    from finch.probe import PROBE_C_GRID, fit_logistic_probe
    from finch.runner import PlannedVariant
    from finch.study import Variant
    from finch.transfer import STRATEGIES, feature_extractor, feature_task

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
        # a closed-form probe is defined by its C grid, not by a training recipe
        settings.update(
            {"fit": "LogisticRegression", "C": list(PROBE_C_GRID)}
            if spec.closed_form
            else {"recipe": recipe.model_dump()}
        )
        if spec.is_probe:
            cache = FEATURES / f"{spec.backbone}.safetensors"
            task = feature_task(load_tensors(cache), data, content_hash=file_hash(cache))
            build = partial(probe_head, spec, task.train.x.shape[1], task.num_classes, fc.mlp_hidden)
        else:
            task = data
            build = partial(network, strategy, fc, model_cfg, weights, data)

        variant = Variant(
            stage="finetune",
            name=strategy,
            recipe=recipe,
            settings=settings,
            build_model=build,
            frozen_outside=backbone_size[spec.backbone] if spec.is_probe else 0,
            # its start is the seed's linear probe
            seed_settings=probe_settings if spec.head_from_probe else None,
            fit=fit_logistic_probe if spec.closed_form else None,
        )
        needs = ("linear_probe",) if spec.head_from_probe else ()
        planned.append(PlannedVariant(variant, task, cfg.seeds, MODELS / "finetune", needs=needs))
    return planned


def probe_head(spec, in_features: int, num_classes: int, hidden: int, seed: int):
    """A probe's head on ``in_features`` cached features (the caller has seeded)."""
    return spec.head(in_features, num_classes, hidden)


def network(strategy: str, fc, model_cfg, weights, data, seed: int):
    """Strategy ``strategy``'s network from the pretrained ``weights`` (lp_ft: the seed's probe as its head)."""
    from finch.transfer import build_network

    return build_network(strategy, fc, model_cfg, weights, data, probe_weights(seed))


def probe_settings(seed: int) -> dict:
    """What the seed's linear probe adds to the settings of a run that starts from it."""
    return {"probe": file_hash(probe_weights(seed))}


def run(cfg: FinchConfig) -> None:
    """Every freezing strategy over every seed (probes on the cached features)."""
    from finch.pipeline.training import run_training_stage

    run_training_stage(plan, cfg, "finetune")
