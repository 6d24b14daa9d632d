"""Transfer strategies: frozen means frozen, trainable counts, LoRA, the feature cache."""

import pytest
import torch
from torch import nn

from finch.config import TRANSFER_STRATEGIES, FinetuneConfig, ModelConfig, RecipeConfig
from finch.errors import ModelError
from finch.io import save_tensors
from finch.models import backbone_state, build_model, parameter_counts
from finch.train.engine import fit
from finch.transfer import (
    PROBES,
    STRATEGIES,
    build_network,
    extract_features,
    feature_extractor,
    feature_task,
    probe_head,
)

from .conftest import TINY_MODEL, tiny_recipe

CPU = torch.device("cpu")
TINY_VIT = ModelConfig(
    name="vit_tiny_patch16_224", kwargs={"img_size": 12, "patch_size": 4, "embed_dim": 16, "depth": 2, "num_heads": 2}
)
FT = FinetuneConfig(
    probe_recipe=RecipeConfig(augment={"flip": False, "translate": 0}, tta="none"), lora={"rank": 2}, partial_stages=1
)


@pytest.fixture
def backbones(tmp_path, toy_task):
    torch.manual_seed(0)
    paths = {}
    for kind, cfg in (("cnn", TINY_MODEL), ("vit", TINY_VIT)):
        model = build_model(cfg, 5, toy_task.in_chans)  # pretrained on a 5-class "source" task
        paths[kind] = tmp_path / f"{kind}.safetensors"
        save_tensors(paths[kind], backbone_state(model))
    probe = tmp_path / "probe.safetensors"
    save_tensors(probe, nn.Linear(16, 2).state_dict())  # TINY_MODEL's pooled features are 16-d
    paths["probe"] = probe
    return paths


def expected_trainable(strategy: str, model: nn.Module) -> int:
    """Counted independently of the freezing code, by module."""
    head = sum(p.numel() for p in model.get_classifier().parameters())
    if strategy == "frozen_backbone":
        return head
    if strategy == "partial":
        return head + sum(p.numel() for p in model.layer4.parameters())
    if strategy == "vit_last_block":  # the last block, the final norm(s) after it, and the head
        norms = [p for m in (model.norm, getattr(model, "fc_norm", None)) if m is not None for p in m.parameters()]
        assert norms, "the ViT has a final norm"
        return head + sum(p.numel() for p in model.blocks[-1].parameters()) + sum(p.numel() for p in norms)
    if strategy == "vit_attention_only":
        return head + sum(p.numel() for b in model.blocks for p in b.attn.parameters())
    return sum(p.numel() for p in model.parameters())


NETWORKS = [
    "frozen_backbone",
    "partial",
    "full",
    "lp_ft",
    "scratch",
    "vit_last_block",
    "vit_attention_only",
    "vit_full",
]


def test_registry_holds_exactly_the_configurable_strategies():
    assert tuple(STRATEGIES) == TRANSFER_STRATEGIES  # same names, same (default) order
    assert PROBES == {"linear_probe": "cnn", "mlp_probe": "cnn", "vit_linear_probe": "vit"}
    networks = {name for name, s in STRATEGIES.items() if not s.is_probe}
    assert networks == set(NETWORKS) | {"vit_lora"}  # a new strategy needs a freezing test here
    for name, spec in STRATEGIES.items():
        assert spec.backbone in ("cnn", "vit"), name
        expected = "probe_recipe" if spec.is_probe else {"cnn": "recipe", "vit": "vit_recipe"}[spec.backbone]
        assert spec.recipe == expected, name


def test_each_strategy_trains_with_its_recipe_and_settings():
    fc = FinetuneConfig(
        probe_recipe=RecipeConfig(epochs=3, augment={"flip": False, "translate": 0}, optimizer={"lr": 0.5}, tta="none"),
        recipe=RecipeConfig(epochs=7),
        vit_recipe=RecipeConfig(epochs=9),
        backbone_lr_scale=0.2,
        lp_ft_lr_scale=0.05,
    )
    recipes = {name: spec.recipe_of(fc) for name, spec in STRATEGIES.items()}
    assert recipes["linear_probe"] == recipes["mlp_probe"] == recipes["vit_linear_probe"] == fc.probe_recipe
    assert recipes["frozen_backbone"].epochs == 3 and recipes["frozen_backbone"].optimizer == fc.probe_recipe.optimizer
    assert recipes["frozen_backbone"].augment == fc.recipe.augment  # images, unlike the probe's cached features
    assert recipes["full"].optimizer.backbone_lr_scale == 0.2 and recipes["full"].epochs == 7
    # LP-FT (Kumar et al. 2022): after the probe, the whole network fine-tunes at a small learning rate
    lp_ft = recipes["lp_ft"].optimizer
    assert lp_ft.lr == pytest.approx(fc.recipe.optimizer.lr * 0.05) and lp_ft.backbone_lr_scale == 1.0
    assert recipes["lp_ft"].model_dump(exclude={"optimizer"}) == fc.recipe.model_dump(exclude={"optimizer"})
    assert FinetuneConfig.model_fields["lp_ft_lr_scale"].default == 0.1
    assert recipes["partial"] == recipes["scratch"] == fc.recipe
    assert recipes["vit_full"] == recipes["vit_lora"] == fc.vit_recipe
    assert STRATEGIES["linear_probe"].settings(fc) == {"mlp_hidden": None}
    assert STRATEGIES["mlp_probe"].settings(fc) == {"mlp_hidden": fc.mlp_hidden}
    none = {"partial_stages": None, "lora": None, "lp_ft_lr_scale": None}
    assert STRATEGIES["full"].settings(fc) == none
    assert STRATEGIES["lp_ft"].settings(fc) == {**none, "lp_ft_lr_scale": 0.05}
    assert STRATEGIES["partial"].settings(fc) == {**none, "partial_stages": fc.partial_stages}
    assert STRATEGIES["vit_lora"].settings(fc) == {**none, "lora": fc.lora.model_dump()}


def test_probes_and_networks_are_not_mixed_up(toy_task, backbones):
    with pytest.raises(ModelError, match="cached features"):
        build_network("linear_probe", FT, TINY_MODEL, backbones["cnn"], toy_task)
    with pytest.raises(ModelError, match="not a probe"):
        probe_head("full", 16, 2, 8)


@pytest.mark.parametrize("strategy", NETWORKS)
def test_frozen_means_frozen(strategy, toy_task, backbones):
    kind = "vit" if strategy.startswith("vit") else "cnn"
    cfg = TINY_VIT if kind == "vit" else TINY_MODEL
    torch.manual_seed(0)
    model = build_network(strategy, FT, cfg, backbones[kind], toy_task, backbones["probe"])
    assert parameter_counts(model)["params_trainable"] == expected_trainable(strategy, model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    fit(model, toy_task, tiny_recipe(epochs=2), seed=0, device=CPU, progress=False)
    after = model.state_dict()
    for name, value in before.items():
        owner = name.rsplit(".", 1)[0]
        learns = name in trainable or any(t.rsplit(".", 1)[0] == owner for t in trainable)
        if not learns:  # frozen parameters and the running statistics of frozen BatchNorm layers
            assert torch.equal(after[name], value), f"{strategy}: {name} changed"
    changed = [n for n in trainable if not torch.equal(after[n], before[n])]
    assert changed, f"{strategy}: nothing trained"


def test_partial_keeps_frozen_batchnorm_statistics(toy_task, backbones):
    model = build_network("partial", FT, TINY_MODEL, backbones["cnn"], toy_task)
    frozen, trained = model.layer1[0].bn1, model.layer4[0].bn1
    frozen_stats, trained_stats = frozen.running_mean.clone(), trained.running_mean.clone()
    fit(model, toy_task, tiny_recipe(epochs=2), seed=0, device=CPU, progress=False)
    assert torch.equal(frozen.running_mean, frozen_stats)  # frozen layer: statistics untouched
    assert not torch.equal(trained.running_mean, trained_stats)  # trainable layer: statistics follow the data


def test_lora_trains_adapters_and_head_only(toy_task, backbones):
    torch.manual_seed(0)
    model = build_network("vit_lora", FT, TINY_VIT, backbones["vit"], toy_task)
    named = dict(model.named_parameters())
    trainable = {n for n, p in named.items() if p.requires_grad}
    assert trainable and all("lora_" in n or "head" in n for n in trainable)
    assert any("attn.qkv.lora_A" in n for n in trainable) and any("attn.proj.lora_B" in n for n in trainable)
    assert not any("patch_embed" in n for n in trainable)
    base_before = {n: p.detach().clone() for n, p in named.items() if n not in trainable}
    lora_before = {n: named[n].detach().clone() for n in trainable if "lora_B" in n}
    fit(model, toy_task, tiny_recipe(epochs=2), seed=0, device=CPU, progress=False)
    named = dict(model.named_parameters())
    assert all(torch.equal(named[n], v) for n, v in base_before.items())
    assert any(not torch.equal(named[n], v) for n, v in lora_before.items())  # B starts at 0 and learns


def test_lp_ft_starts_from_the_probe_head(toy_task, backbones):
    model = build_network("lp_ft", FT, TINY_MODEL, backbones["cnn"], toy_task, backbones["probe"])
    probe = nn.Linear(16, 2)
    from finch.io import load_tensors

    probe.load_state_dict(load_tensors(backbones["probe"]))
    assert torch.equal(model.fc.weight, probe.weight)
    with pytest.raises(Exception, match="linear_probe's head"):
        build_network("lp_ft", FT, TINY_MODEL, backbones["cnn"], toy_task, backbones["probe"].parent / "nope")


def test_probe_on_cached_features_learns(toy_task, backbones):
    extractor = feature_extractor(TINY_MODEL, backbones["cnn"], toy_task.in_chans)
    features = extract_features(extractor, toy_task, CPU)
    assert features["train_x"].shape == (len(toy_task.train), 16)
    task = feature_task(features, toy_task, "h")
    assert not task.is_images and torch.equal(task.to_inputs(task.train.x[:3], CPU), task.train.x[:3])
    head = probe_head("linear_probe", 16, 2, 8)
    recipe = tiny_recipe(epochs=20, augment={"flip": False, "translate": 0}, tta="none")
    result = fit(head, task, recipe, seed=0, device=CPU, progress=False)
    assert max(r["val_accuracy"] for r in result.history) >= 0.9
    assert sum(p.numel() for p in probe_head("mlp_probe", 16, 2, 8).parameters()) == 16 * 8 + 8 + 8 * 2 + 2


def test_finetune_config_checks():
    from finch.config import parse_params
    from finch.errors import ConfigError

    with pytest.raises(ConfigError, match="list linear_probe before it"):
        parse_params(
            {
                "finetune": {
                    "strategies": ["lp_ft", "linear_probe"],
                    "probe_recipe": {"augment": {"flip": False, "translate": 0}, "tta": "none"},
                }
            }
        )
    with pytest.raises(ConfigError, match="probe_recipe.augment must be all off"):
        parse_params({"finetune": {"probe_recipe": {"augment": {"flip": True}}}})


@pytest.mark.parametrize("global_pool", ["token", "avg"])
def test_vit_last_block_trains_the_final_norm_too(global_pool, toy_task):
    """The final norm (timm's `norm`, or `fc_norm` with average pooling) sits between the last
    block and the head; leaving it frozen would fix the scale of what the head sees."""
    from finch.transfer import trainable_rule

    cfg = TINY_VIT.model_copy(update={"kwargs": {**TINY_VIT.kwargs, "global_pool": global_pool}})
    model = build_model(cfg, 2, toy_task.in_chans)
    rule = trainable_rule("vit_last_block", model, FT)
    trainable = {n for n, _ in model.named_parameters() if rule(n)}
    norm = "norm" if global_pool == "token" else "fc_norm"
    assert {f"{norm}.weight", f"{norm}.bias", "head.weight", "head.bias"} <= trainable
    assert all(n.startswith(("blocks.1.", f"{norm}.", "head.")) for n in trainable)


def test_linear_probe_is_a_logistic_regression_trained_to_the_end_with_c_chosen_on_validation():
    """Issue 26.5: the probe is scikit-learn's LogisticRegression on the cached features, C from
    its grid by validation accuracy; the torch head gives sklearn's own predictions; convex, so
    every seed gets the same model."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from finch.data.splits import Split, TaskData
    from finch.probe import PROBE_C_GRID, fit_logistic_probe
    from finch.transfer import linear_head

    rng = np.random.default_rng(0)

    def split(n):
        y = rng.integers(0, 3, n)
        x = rng.normal(0, 1, (n, 16)) * np.linspace(0.1, 10, 16) + 2.0 * y[:, None] + 5.0  # unscaled features
        return Split(torch.tensor(x, dtype=torch.float32), torch.tensor(y))

    task = TaskData(
        name="feats", class_names=["a", "b", "c"], train=split(300), val=split(100), test=split(100),
        mean=(), std=(), content_hash="f", kind="features",
    )  # fmt: skip
    result = fit_logistic_probe(linear_head(16, 3, 0), task, seed=0)
    again = fit_logistic_probe(linear_head(16, 3, 0), task, seed=1)
    assert torch.equal(result.model.weight, again.model.weight)
    x = task.train.x.numpy().astype(np.float64)
    scaler = StandardScaler().fit(x)
    val = {
        c: LogisticRegression(C=c, max_iter=5000).fit(scaler.transform(x), task.train.y.numpy()) for c in PROBE_C_GRID
    }
    scores = {c: m.score(scaler.transform(task.val.x.numpy()), task.val.y.numpy()) for c, m in val.items()}
    best = max(PROBE_C_GRID, key=lambda c: (scores[c], -PROBE_C_GRID.index(c)))
    assert result.history[0]["C"] == best and result.history[0]["val_accuracy"] == scores[best]
    sklearn_pred = val[best].predict(scaler.transform(task.test.x.numpy()))
    with torch.no_grad():
        torch_pred = result.model(task.test.x).argmax(1).numpy()
    assert (torch_pred == sklearn_pred).mean() >= 0.99  # float32 head vs float64 sklearn: ties may round apart
