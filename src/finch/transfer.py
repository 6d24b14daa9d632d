"""Transfer learning: cached features, and one model per freezing strategy.

Every strategy is one entry of :data:`STRATEGIES`. Probes (``linear_probe``, ``mlp_probe``,
``vit_linear_probe``) train a head on features the ``extract_features`` stage computed once.
Every other strategy trains a network in which a freezing rule decides which parameters
learn; frozen parameters get no gradient and are not in the optimizer, and frozen BatchNorm
layers stay in eval mode (see :func:`finch.models.keep_frozen_norms_in_eval`), so they are
bit-identical after training.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from finch.config import FinetuneConfig, ModelConfig, RecipeConfig
from finch.data.splits import Split, TaskData
from finch.errors import ModelError
from finch.io import load_tensors
from finch.models import build_model, classifier_prefix, freeze_all_but, load_backbone


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


def feature_task(features: dict[str, torch.Tensor], data: TaskData, content_hash: str, origin: str = "") -> TaskData:
    """The target task as cached feature vectors (for the probes); ``origin``: the cache's file."""
    splits = {s: Split(features[f"{s}_x"], features[f"{s}_y"]) for s in ("train", "val", "test")}
    return TaskData(
        name=f"{data.name}-features",
        class_names=data.class_names,
        mean=(),
        std=(),
        content_hash=content_hash,
        kind="features",
        origin=origin,
        **splits,
    )


# ------------------------------------------------------------------------ probe heads
def linear_head(dim: int, num_classes: int, hidden: int) -> nn.Module:
    """A linear classifier on ``dim``-dim features (``hidden`` is not used)."""
    return nn.Linear(dim, num_classes)


def mlp_head(dim: int, num_classes: int, hidden: int) -> nn.Module:
    """One hidden ReLU layer of width ``hidden``, then the classifier."""
    return nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))


# ------------------------------------------------------------------------ freezing rules
TrainableRule = Callable[[str], bool]  # parameter name → does it learn?


def resnet_stages(model: nn.Module) -> list[str]:
    stages = [name for name in ("layer1", "layer2", "layer3", "layer4") if hasattr(model, name)]
    if not stages:
        raise ModelError(f"{type(model).__name__} has no ResNet stages (layer1..layer4) for the partial strategy")
    return stages


def head_only(model: nn.Module, cfg: FinetuneConfig) -> TrainableRule:
    head = classifier_prefix(model) + "."
    return lambda name: name.startswith(head)


def last_stages_and_head(model: nn.Module, cfg: FinetuneConfig) -> TrainableRule:
    """The last ``cfg.partial_stages`` ResNet stages and the head."""
    is_head = head_only(model, cfg)
    last = tuple(f"{s}." for s in resnet_stages(model)[-cfg.partial_stages :])
    return lambda name: is_head(name) or name.startswith(last)


def last_block_and_head(model: nn.Module, cfg: FinetuneConfig) -> TrainableRule:
    """The ViT's last block, the final norm(s) between it and the head (timm's ``norm``, and
    ``fc_norm`` with average pooling: whichever has parameters), and the head."""
    is_head = head_only(model, cfg)
    last = (f"blocks.{len(model.blocks) - 1}.", "norm.", "fc_norm.")
    return lambda name: is_head(name) or name.startswith(last)


def attention_and_head(model: nn.Module, cfg: FinetuneConfig) -> TrainableRule:
    is_head = head_only(model, cfg)
    return lambda name: is_head(name) or ".attn." in name


def everything(model: nn.Module, cfg: FinetuneConfig) -> TrainableRule:
    return lambda name: True


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


# ------------------------------------------------------------------------ the strategies
def _no_knobs(cfg: FinetuneConfig) -> dict:
    return {}


@dataclass(frozen=True)
class Strategy:
    """One freezing strategy: which backbone it starts from, what learns, which recipe trains it.

    A probe (``head`` set) trains a head on the cached features of the frozen backbone. Every
    other strategy trains the network, pretrained unless ``pretrained`` is off, in which
    ``trainable`` decides which parameters learn (or ``adapt`` adds adapters instead).
    """

    backbone: Literal["cnn", "vit"]
    recipe: Literal["probe_recipe", "recipe", "vit_recipe"]  # which recipe of finetune trains it
    head: Callable[[int, int, int], nn.Module] | None = None  # probes: (feature dim, classes, mlp_hidden) → head
    trainable: Callable[[nn.Module, FinetuneConfig], TrainableRule] = everything
    adapt: Callable[[nn.Module, FinetuneConfig], nn.Module] | None = None  # replaces freezing (LoRA)
    pretrained: bool = True  # False: random initialisation (the no-transfer floor)
    head_from_probe: bool = False  # the head starts as linear_probe's trained head of the same seed (LP-FT)
    closed_form: bool = False  # a linear probe fitted by fit_logistic_probe (C on validation), not the engine
    # epochs and optimizer of probe_recipe (no budgets: one run of its epochs), the rest (smoothing,
    # warm-up, schedule, augmentation) of its own recipe
    probe_budget: bool = False
    scaled_backbone_lr: bool = False  # everything but the head learns at lr x finetune.backbone_lr_scale
    lr_scale: str | None = None  # a FinetuneConfig key: the whole network learns at lr x its value (LP-FT)
    knobs: Callable[[FinetuneConfig], dict] = _no_knobs  # its own settings, part of what defines its runs

    @property
    def is_probe(self) -> bool:
        return self.head is not None

    def recipe_of(self, cfg: FinetuneConfig) -> RecipeConfig:
        """The recipe this strategy trains with."""
        recipe: RecipeConfig = getattr(cfg, self.recipe)
        if self.probe_budget:
            recipe = recipe.model_copy(
                update={"epochs": cfg.probe_recipe.epochs, "optimizer": cfg.probe_recipe.optimizer, "budgets": []}
            )
        if self.scaled_backbone_lr:
            optimizer = recipe.optimizer.model_copy(update={"backbone_lr_scale": cfg.backbone_lr_scale})
            recipe = recipe.model_copy(update={"optimizer": optimizer})
        if self.lr_scale is not None:
            optimizer = recipe.optimizer.model_copy(update={"lr": recipe.optimizer.lr * getattr(cfg, self.lr_scale)})
            recipe = recipe.model_copy(update={"optimizer": optimizer})
        return recipe

    def settings(self, cfg: FinetuneConfig) -> dict:
        """The knobs of its kind (probe or network): its own set, the others None."""
        of_kind = (
            {"mlp_hidden": None} if self.is_probe else {"partial_stages": None, "lora": None, "lp_ft_lr_scale": None}
        )
        return {**of_kind, **self.knobs(cfg)}

    def freeze(self, model: nn.Module, cfg: FinetuneConfig) -> nn.Module:
        """``model`` with this strategy's parameters frozen (or its adapters added)."""
        if self.adapt is not None:
            return self.adapt(model, cfg)
        freeze_all_but(model, self.trainable(model, cfg))
        return model


# Every strategy of the transfer study, in config.TRANSFER_STRATEGIES' order (a test keeps them equal).
STRATEGIES: dict[str, Strategy] = {
    "linear_probe": Strategy("cnn", "probe_recipe", head=linear_head, closed_form=True),
    "mlp_probe": Strategy("cnn", "probe_recipe", head=mlp_head, knobs=lambda cfg: {"mlp_hidden": cfg.mlp_hidden}),
    "frozen_backbone": Strategy("cnn", "recipe", trainable=head_only, probe_budget=True),
    "partial": Strategy(
        "cnn", "recipe", trainable=last_stages_and_head, knobs=lambda cfg: {"partial_stages": cfg.partial_stages}
    ),
    "full": Strategy("cnn", "recipe", scaled_backbone_lr=True),
    # LP-FT (Kumar et al. 2022): linear probe, then the whole network fine-tuned at a small learning rate
    "lp_ft": Strategy(
        "cnn",
        "recipe",
        head_from_probe=True,
        lr_scale="lp_ft_lr_scale",
        knobs=lambda cfg: {"lp_ft_lr_scale": cfg.lp_ft_lr_scale},
    ),
    "scratch": Strategy("cnn", "recipe", pretrained=False),
    "vit_linear_probe": Strategy("vit", "probe_recipe", head=linear_head, closed_form=True),
    "vit_last_block": Strategy("vit", "vit_recipe", trainable=last_block_and_head),
    "vit_attention_only": Strategy("vit", "vit_recipe", trainable=attention_and_head),
    "vit_lora": Strategy("vit", "vit_recipe", adapt=with_lora, knobs=lambda cfg: {"lora": cfg.lora.model_dump()}),
    "vit_full": Strategy("vit", "vit_recipe"),
}
PROBES = {name: s.backbone for name, s in STRATEGIES.items() if s.is_probe}  # probe → its backbone


def backbone_of(strategy: str) -> str:
    """Which pretrained backbone a strategy starts from: ``cnn`` or ``vit``."""
    return STRATEGIES[strategy].backbone


def probe_head(strategy: str, dim: int, num_classes: int, hidden: int) -> nn.Module:
    """The head a probe trains on ``dim``-dim cached features."""
    head = STRATEGIES[strategy].head
    if head is None:
        raise ModelError(f"{strategy} is not a probe (probes: {', '.join(PROBES)}); build it with build_network")
    return head(dim, num_classes, hidden)


def trainable_rule(strategy: str, model: nn.Module, cfg: FinetuneConfig) -> TrainableRule:
    """name → trainable?, for the network strategies."""
    return STRATEGIES[strategy].trainable(model, cfg)


def build_network(
    strategy: str,
    cfg: FinetuneConfig,
    model_cfg: ModelConfig,
    backbone: Path,
    data: TaskData,
    probe_weights: Path | None = None,
) -> nn.Module:
    """The network of one strategy, pretrained (unless it says not) and frozen by its rule."""
    spec = STRATEGIES[strategy]
    if spec.is_probe:
        raise ModelError(f"{strategy} trains a head on cached features; build it with probe_head")
    model = build_model(model_cfg, data.num_classes, data.in_chans)
    if spec.pretrained:
        load_backbone(model, backbone)
    if spec.head_from_probe:
        load_probe_head(model, probe_weights, strategy, data.num_classes)
    return spec.freeze(model, cfg)


def load_probe_head(model: nn.Module, probe_weights: Path | None, strategy: str, num_classes: int) -> None:
    """Start ``model``'s head from linear_probe's trained head."""
    if probe_weights is None or not probe_weights.is_file():
        raise ModelError(f"{strategy} starts from linear_probe's head, but {probe_weights} is missing")
    head = model.get_classifier()
    state = load_tensors(probe_weights)
    expected = {k: tuple(v.shape) for k, v in head.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state.items()}
    if found != expected:
        raise ModelError(
            f"{probe_weights}: the linear_probe head {found} does not fit this model's head {expected} "
            f"({num_classes} classes); re-run the finetune stage so linear_probe is trained first"
        )
    head.load_state_dict(state)
