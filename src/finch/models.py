"""Model factory (timm) and backbone weights in safetensors."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import timm
import torch
from timm.layers import HybridEmbed
from torch import nn

from finch.config import ModelConfig, TokenizerConfig
from finch.errors import ModelError
from finch.io import load_tensors, save_tensors


class ConvTokenizer(nn.Sequential):
    """CCT's tokenizer (Hassani et al. 2021, arXiv 2104.05704): conv–ReLU–max-pool blocks; timm's
    :class:`~timm.layers.HybridEmbed` turns its map into tokens (a 1x1 projection, every position one)."""

    def __init__(self, in_chans: int, cfg: TokenizerConfig):
        layers: list[nn.Module] = []
        for width in cfg.channels:
            layers += [
                nn.Conv2d(in_chans, width, cfg.kernel_size, padding=cfg.kernel_size // 2, bias=False),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(3, stride=2, padding=1),
            ]
            in_chans = width
        super().__init__(*layers)


def build_model(cfg: ModelConfig, num_classes: int, in_chans: int, pretrained: bool = False) -> nn.Module:
    """Create a timm model for ``in_chans``-channel images and ``num_classes`` classes."""
    kwargs = cfg.timm_kwargs()
    if cfg.tokenizer is not None:
        kwargs["embed_layer"] = partial(HybridEmbed, backbone=ConvTokenizer(in_chans, cfg.tokenizer))
    try:
        model = timm.create_model(cfg.name, pretrained=pretrained, num_classes=num_classes, in_chans=in_chans, **kwargs)
    except RuntimeError as err:
        if "Unknown model" in str(err):
            raise ModelError(f"model.name {cfg.name!r} is not a timm model ({err})") from None
        raise
    except TypeError as err:
        raise ModelError(
            f"model settings {cfg.timm_kwargs()} not accepted by timm's {cfg.name}: {err} "
            "(kwargs, drop_rate, drop_path_rate and attn_drop_rate must be arguments this model takes)"
        ) from None
    if cfg.small_input_stem:
        if not hasattr(model, "maxpool"):
            raise ModelError(f"model.small_input_stem needs a stem max-pool, which {cfg.name} has not")
        model.maxpool = nn.Identity()
    return model


def classifier_prefix(model: nn.Module) -> str:
    """Name of the classification head's module (``fc`` for ResNets, ``head`` for ViTs)."""
    return model.pretrained_cfg.get("classifier", "fc") if hasattr(model, "pretrained_cfg") else "fc"


def backbone_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """State dict without the classification head."""
    head = classifier_prefix(model)
    return {k: v for k, v in model.state_dict().items() if not k.startswith(head + ".")}


def save_backbone(model: nn.Module, path: Path | str, metadata: dict) -> None:
    save_tensors(path, backbone_state(model), metadata)


def build_from_backbone(
    cfg: ModelConfig, num_classes: int, in_chans: int, backbone: Path | str | None, seed: int | None = None
) -> nn.Module:
    """A run's model builder (``functools.partial`` of it maps a seed to a model; the caller has
    seeded already): ``cfg``'s model with the pretrained ``backbone`` loaded, or random weights
    where ``backbone`` is None."""
    model = build_model(cfg, num_classes, in_chans)
    if backbone is not None:
        load_backbone(model, backbone)
    return model


def load_backbone(model: nn.Module, path: Path | str) -> None:
    """Load backbone weights into ``model``; everything but its head must match exactly."""
    state = load_tensors(path)
    head = classifier_prefix(model)
    own = model.state_dict()
    unexpected = sorted(set(state) - set(own))
    missing = sorted(k for k in set(own) - set(state) if not k.startswith(head + "."))
    mismatched = [k for k in state if k in own and own[k].shape != state[k].shape]
    if unexpected or missing or mismatched:
        detail = "; ".join(
            f"{label}: {keys[:3]}{' ...' if len(keys) > 3 else ''}"
            for label, keys in (("unexpected", unexpected), ("missing", missing), ("shape differs", mismatched))
            if keys
        )
        raise ModelError(
            f"{path}: backbone does not fit this model ({detail}); the pretrain and teacher "
            "model settings (name, kwargs, channels) must agree — re-run the pretrain stage"
        )
    model.load_state_dict(state, strict=False)


def freeze_all_but(model: nn.Module, trainable) -> None:
    """Freeze every parameter whose name ``trainable(name)`` rejects."""
    for name, param in model.named_parameters():
        param.requires_grad_(bool(trainable(name)))


def keep_frozen_norms_in_eval(model: nn.Module) -> None:
    """Put BatchNorm layers whose parameters are all frozen back in eval mode.

    ``model.train()`` would otherwise update their running statistics: frozen layers
    would drift although no gradient touches them (the classic fine-tuning bug).
    """
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            params = list(module.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                module.eval()


def parameter_counts(model: nn.Module) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"params_total": total, "params_trainable": trainable}
