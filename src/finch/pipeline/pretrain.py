"""Stage `pretrain`: the CNN and ViT backbones."""

from __future__ import annotations

from functools import partial

from finch.config import FinchConfig
from finch.errors import ConfigError
from finch.pipeline.paths import BACKBONE, MODELS, PREPARED, RUNS, VIT_BACKBONE, stage_metrics


def run(cfg: FinchConfig) -> None:
    """The CNN and ViT backbones: trained on the source classes, or timm's ImageNet weights."""
    from finch.data.splits import load_task
    from finch.distributed import is_main
    from finch.io import load_tensors, write_json
    from finch.models import build_model, save_backbone
    from finch.pipeline.training import run_training_stage

    pc = cfg.pretrain
    if pc.weights == "timm":
        target = load_task(PREPARED, "target")
        for _, model_cfg, _, path in backbones(cfg):
            try:
                model = build_model(model_cfg, target.num_classes, target.in_chans, pretrained=True)
            except Exception as err:
                raise ConfigError(
                    f"pretrain.weights is timm but timm's weights for {model_cfg.name!r} could not be "
                    f"loaded ({err}); they need network access or a filled Hugging Face cache"
                ) from None
            save_backbone(model, path, {"origin": f"timm:{model_cfg.name}"})
        # no training run to record; the declared output folder says where the weights came from
        write_json(RUNS / "pretrain" / "origin.json", {"weights": [f"timm:{b[1].name}" for b in backbones(cfg)]})
        from finch.runs import write_stage_metrics

        write_stage_metrics(RUNS, "pretrain", stage_metrics("pretrain"))  # no runs: empty, but declared
        return
    run_training_stage(plan, cfg, "pretrain")
    if not is_main():
        return
    source = load_task(PREPARED, "source")
    for name, model_cfg, _, path in backbones(cfg):
        model = build_model(model_cfg, source.num_classes, source.in_chans)
        model.load_state_dict(load_tensors(MODELS / "pretrain" / name / f"seed={pc.seed}.safetensors"))
        save_backbone(model, path, {"origin": "source classes", "source_classes": ",".join(source.class_names)})


def backbones(cfg: FinchConfig) -> list[tuple]:
    """(name, model, recipe, where the backbone goes) of the CNN and the ViT."""
    pc = cfg.pretrain
    return [("source", pc.model, pc.recipe, BACKBONE), ("vit_source", pc.vit_model, pc.vit_recipe, VIT_BACKBONE)]


def plan(cfg: FinchConfig, device) -> list:
    """The CNN and the ViT, each trained on the source classes with ``pretrain.seed`` (side by side
    when there are two workers)."""
    from finch.data.splits import load_task
    from finch.models import build_from_backbone
    from finch.runner import PlannedVariant
    from finch.study import Variant

    source = load_task(PREPARED, "source")
    planned = []
    for name, model_cfg, recipe, _ in backbones(cfg):
        variant = Variant(
            stage="pretrain",
            name=name,
            build_model=partial(build_from_backbone, model_cfg, source.num_classes, source.in_chans, None),
            recipe=recipe,
            settings={"model": model_cfg.model_dump(), "recipe": recipe.model_dump()},
            resplit=False,  # the backbone is fixed across the study's seeds (named in results.md)
        )
        planned.append(PlannedVariant(variant, source, [cfg.pretrain.seed], MODELS / "pretrain"))
    return planned
