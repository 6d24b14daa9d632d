"""Transfer learning: cached features, and one model per freezing strategy.

Probes (``linear_probe``, ``mlp_probe``, ``vit_linear_probe``) train a head on features the
``extract_features`` stage computed once. Every other strategy trains a network in which a
freezing rule decides which parameters learn; frozen parameters get no gradient and are
not in the optimizer, and frozen BatchNorm layers stay in eval mode (see
:func:`finch.models.keep_frozen_norms_in_eval`), so they are bit-identical after training.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from finch.config import FinetuneConfig, ModelConfig
from finch.data.splits import Split, TaskData
from finch.errors import ModelError
from finch.io import load_tensors
from finch.models import build_model, classifier_prefix, freeze_all_but, load_backbone

PROBES = {"linear_probe": "cnn", "mlp_probe": "cnn", "vit_linear_probe": "vit"}
CNN_STRATEGIES = ("frozen_backbone", "partial", "full", "lp_ft", "scratch")
VIT_STRATEGIES = ("vit_last_block", "vit_attention_only", "vit_lora", "vit_full")


def backbone_of(strategy: str) -> str:
    """Which pretrained backbone a strategy starts from: ``cnn`` or ``vit``."""
    return PROBES.get(strategy) or ("vit" if strategy.startswith("vit_") else "cnn")


# ------------------------------------------------------------------------ feature cache
def feature_extractor(model_cfg: ModelConfig, weights: Path, in_chans: int) -> nn.Module:
    """The pretrained backbone with its head removed: images → pooled features."""
    model = build_model(model_cfg, num_classes=0, in_chans=in_chans)
    load_backbone(model, weights)
    return model.eval()


@torch.no_grad()
def extract_features(extractor: nn.Module, data: TaskData, device, batch_size: int = 500) -> dict[str, torch.Tensor]:
    """Pooled features and labels of every split: ``{train,val,test}_{x,y}``."""
    extractor = extractor.to(device).eval()
    out = {}
    for name in ("train", "val", "test"):
        split: Split = getattr(data, name)
        feats = [
            extractor(data.to_inputs(split.x[i : i + batch_size], device)).float().cpu()
            for i in range(0, len(split), batch_size)
        ]
        out[f"{name}_x"], out[f"{name}_y"] = torch.cat(feats), split.y.clone()
    return out


def feature_task(features: dict[str, torch.Tensor], data: TaskData, content_hash: str) -> TaskData:
    """The target task as cached feature vectors (for the probes)."""
    splits = {s: Split(features[f"{s}_x"], features[f"{s}_y"]) for s in ("train", "val", "test")}
    return TaskData(
        name=f"{data.name}-features",
        class_names=data.class_names,
        mean=(),
        std=(),
        content_hash=content_hash,
        kind="features",
        **splits,
    )


def probe_head(strategy: str, dim: int, num_classes: int, hidden: int) -> nn.Module:
    if strategy == "mlp_probe":
        return nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))
    return nn.Linear(dim, num_classes)


# ------------------------------------------------------------------------ freezing rules
def resnet_stages(model: nn.Module) -> list[str]:
    stages = [name for name in ("layer1", "layer2", "layer3", "layer4") if hasattr(model, name)]
    if not stages:
        raise ModelError(f"{type(model).__name__} has no ResNet stages (layer1..layer4) for the partial strategy")
    return stages


def trainable_rule(strategy: str, model: nn.Module, cfg: FinetuneConfig) -> Callable[[str], bool]:
    """name → trainable?, for the network strategies."""
    head = classifier_prefix(model) + "."

    def is_head(name: str) -> bool:
        return name.startswith(head)

    if strategy == "frozen_backbone":
        return is_head
    if strategy == "partial":
        last = tuple(f"{s}." for s in resnet_stages(model)[-cfg.partial_stages :])
        return lambda name: is_head(name) or name.startswith(last)
    if strategy == "vit_last_block":
        last_block = f"blocks.{len(model.blocks) - 1}."
        return lambda name: is_head(name) or name.startswith(last_block)
    if strategy == "vit_attention_only":
        return lambda name: is_head(name) or ".attn." in name
    return lambda name: True  # full, lp_ft, scratch, vit_full


def with_lora(model: nn.Module, cfg: FinetuneConfig) -> nn.Module:
    """LoRA adapters (peft) on the attention projections; the head is trained fully."""
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=cfg.lora.rank,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=cfg.lora.target_modules,
        modules_to_save=[classifier_prefix(model)],
    )
    return get_peft_model(model, lora)


def build_network(
    strategy: str,
    cfg: FinetuneConfig,
    model_cfg: ModelConfig,
    backbone: Path,
    data: TaskData,
    probe_weights: Path | None = None,
) -> nn.Module:
    """The network of one strategy, pretrained (except ``scratch``) and frozen by its rule."""
    model = build_model(model_cfg, data.num_classes, data.in_chans)
    if strategy != "scratch":
        load_backbone(model, backbone)
    if strategy == "lp_ft":
        if probe_weights is None or not probe_weights.is_file():
            raise ModelError(f"lp_ft starts from linear_probe's head, but {probe_weights} is missing")
        head = model.get_classifier()
        state = load_tensors(probe_weights)
        expected = {k: tuple(v.shape) for k, v in head.state_dict().items()}
        found = {k: tuple(v.shape) for k, v in state.items()}
        if found != expected:
            raise ModelError(
                f"{probe_weights}: the linear_probe head {found} does not fit this model's head {expected} "
                f"({data.num_classes} classes); re-run the finetune stage so linear_probe is trained first"
            )
        head.load_state_dict(state)
    if strategy == "vit_lora":
        return with_lora(model, cfg)
    freeze_all_but(model, trainable_rule(strategy, model, cfg))
    return model
