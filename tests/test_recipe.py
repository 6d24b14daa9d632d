"""Issue 7's knobs each change what they claim; ensembles, k-fold and the ablation variants."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from finch.config import FinchConfig, LossConfig, ModelConfig, PenaltyConfig, RandAugmentConfig, ablation_variant
from finch.errors import ConfigError, ModelError
from finch.io import load_tensors
from finch.kfold import kfold_splits
from finch.models import build_model
from finch.study import Variant, write_ensemble
from finch.train.augment import TensorRandAugment
from finch.train.engine import fit
from finch.train.losses import Objective, ParameterPenalty, focal_cross_entropy

from .conftest import TINY_MODEL, tiny_recipe, train_seeds

CPU = torch.device("cpu")


def test_l1_penalty_equals_hand_computed_value():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]]))
        model[1].weight.copy_(torch.tensor([[-1.0, 1.0], [2.0, 0.0]]))
        model[1].bias.copy_(torch.tensor([0.5, -0.5]))
    l1 = ParameterPenalty(model, PenaltyConfig(weight=0.01, p=1.0, params=r"weight$"))
    assert l1.names == ["0.weight", "1.weight"]  # biases excluded by the regex
    assert l1().item() == pytest.approx(0.01 * (1 + 2 + 0.5 + 0 + 3 + 1 + 1 + 1 + 2 + 0))
    l2 = ParameterPenalty(model, PenaltyConfig(weight=0.1, p=2.0, params=r"^1\."))
    assert l2().item() == pytest.approx(0.1 * (1 + 1 + 4 + 0 + 0.25 + 0.25))  # the second layer, bias included


def test_penalty_skips_frozen_parameters_and_rejects_empty_selection():
    model = torch.nn.Linear(3, 2)
    model.weight.requires_grad_(False)
    with pytest.raises(ValueError, match="matches no trainable parameter"):
        ParameterPenalty(model, PenaltyConfig(weight=0.1, params=r"weight$"))


def test_l1_penalty_shrinks_weights_in_training(toy_task):
    def total_abs(recipe):
        result = fit(build_model(TINY_MODEL, 2, 1), toy_task, recipe, seed=0, device=CPU, progress=False)
        return sum(p.abs().sum().item() for n, p in result.model.named_parameters() if n.endswith("weight"))

    plain = total_abs(tiny_recipe(epochs=2))
    sparse = total_abs(tiny_recipe(epochs=2, penalty={"weight": 0.01, "p": 1.0}))
    assert sparse < plain


def test_focal_with_gamma_zero_is_cross_entropy():
    logits = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 3, 1, 0])
    obj = Objective(LossConfig(name="focal", focal_gamma=0.0, label_smoothing=0.0), 4, mixing=False)
    assert obj.loss(logits, y, None).item() == pytest.approx(F.cross_entropy(logits, y).item(), abs=1e-6)
    assert focal_cross_entropy(logits, F.one_hot(y, 4).float(), 0.0).item() == pytest.approx(
        F.cross_entropy(logits, y).item(), abs=1e-6
    )


def test_dropout_knobs_reach_the_timm_model():
    cnn = build_model(ModelConfig(**{**TINY_MODEL.model_dump(), "drop_rate": 0.3}), 2, 1)
    assert cnn.drop_rate == 0.3
    vit_cfg = ModelConfig(
        name="vit_tiny_patch16_224",
        kwargs={"img_size": 12, "patch_size": 4, "embed_dim": 24, "depth": 2, "num_heads": 2},
        attn_drop_rate=0.2,
        drop_path_rate=0.1,
    )
    vit = build_model(vit_cfg, 2, 1)
    assert vit.blocks[0].attn.attn_drop.p == 0.2 and vit.blocks[-1].drop_path1.drop_prob == pytest.approx(0.1)
    vit.train()
    x = torch.randn(2, 1, 12, 12)
    assert not torch.equal(vit(x), vit(x))  # stochastic in training
    vit.eval()
    assert torch.equal(vit(x), vit(x))
    with pytest.raises(ModelError, match="attn_drop_rate"):
        build_model(ModelConfig(**{**TINY_MODEL.model_dump(), "attn_drop_rate": 0.1}), 2, 1)  # no attention


def test_randaugment_changes_images_per_sample_and_is_seeded():
    x = torch.randint(0, 256, (16, 1, 12, 12), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    ra = TensorRandAugment(RandAugmentConfig(num_ops=2, magnitude=9))
    torch.manual_seed(1)
    a = ra(x)
    torch.manual_seed(1)
    b = ra(x)
    assert a.dtype == torch.uint8 and a.shape == x.shape and torch.equal(a, b)
    assert (a != x).any(dim=(1, 2, 3)).float().mean() > 0.5  # most images changed
    with pytest.raises(TypeError, match="not cached features"):
        ra(x.float())


def test_ensemble_of_identical_models_equals_the_single_model(toy_task, tmp_path):
    rng = np.random.default_rng(0)
    p = rng.dirichlet([1.0, 1.0], size=len(toy_task.test))
    v = Variant(stage="toy", name="v", build_model=None, recipe=tiny_recipe(), settings={})
    out = write_ensemble(tmp_path, v, toy_task, [0, 1, 2], [p, p, p], FinchConfig())
    assert out["ensemble"] == pytest.approx(out["single_mean"])
    saved = json.loads((tmp_path / "toy" / "v" / "ensemble.json").read_text())
    assert saved["ensemble"]["accuracy"] == pytest.approx(float((p.argmax(1) == toy_task.test.y.numpy()).mean()))


def test_ensemble_of_different_models_is_their_mean_probability(toy_task, tmp_path):
    y = toy_task.test.y.numpy()
    right = np.eye(2)[y] * 0.6 + 0.2  # confident and right
    wrong = np.eye(2)[1 - y] * 0.2 + 0.4  # mildly wrong: the mean is still right
    v = Variant(stage="toy", name="v", build_model=None, recipe=tiny_recipe(), settings={})
    out = write_ensemble(tmp_path, v, toy_task, [0, 1], [right, wrong], FinchConfig())
    assert out["single_mean"]["accuracy"] == pytest.approx(0.5) and out["ensemble"]["accuracy"] == 1.0


def test_kfold_folds_are_disjoint_stratified_and_cover_the_training_split(toy_task):
    k = 4
    folds = kfold_splits(toy_task, k, seed=0)
    pool = torch.cat([toy_task.train.x, toy_task.val.x]).flatten(1)
    keys = [tuple(row.tolist()) for row in pool]
    val_keys = [tuple(r.tolist()) for f in folds for r in f.val.x.flatten(1)]
    assert sorted(val_keys) == sorted(keys)  # every image validates exactly once
    for f in folds:
        assert len(f.train) + len(f.val) == len(pool)
        train_keys = {tuple(r.tolist()) for r in f.train.x.flatten(1)}
        assert train_keys.isdisjoint({tuple(r.tolist()) for r in f.val.x.flatten(1)})
        assert abs(f.val.y.float().mean().item() - 0.5) < 0.1  # stratified
        assert torch.equal(f.test.x, toy_task.test.x)


def test_kfold_training_records_the_fold_spread(toy_task, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = tiny_recipe(epochs=1, kfold={"k": 3})
    v = Variant(
        stage="toy",
        name="kfold",
        recipe=recipe,
        settings={"recipe": recipe.model_dump()},
        build_model=lambda seed: build_model(TINY_MODEL, 2, 1),
    )
    cfg = FinchConfig(runtime={"progress": False})
    folder = train_seeds(v, toy_task, [0], cfg, CPU, tmp_path / "runs", tmp_path / "models")[0]
    kf = json.loads((folder / "record.json").read_text())["kfold"]
    assert kf["k"] == 3 and len(kf["val_accuracy"]) == 3 and len(kf["test_accuracy"]) == 3
    assert kf["test_accuracy_std"] >= 0 and "selected_fold" not in kf
    record = json.loads((folder / "record.json").read_text())
    assert record["best_epoch"] is None and len(kf["best_epoch"]) == 3  # each fold has its own
    weights = load_tensors(tmp_path / "models" / "kfold" / "seed=0.safetensors")
    for f in range(3):  # every fold's weights, in one file, under "folds.<f>."
        fold = {name.split(".", 2)[2]: w for name, w in weights.items() if name.startswith(f"folds.{f}.")}
        build_model(TINY_MODEL, 2, 1).load_state_dict(fold)


def test_ablation_variant_merges_overrides_onto_the_teacher():
    cfg = FinchConfig.model_validate(
        {
            "ablation": {
                "run": ["sgd", "drop"],
                "variants": {
                    "sgd": {"recipe": {"optimizer": {"name": "sgd", "lr": 0.05}}},
                    "drop": {"model": {"drop_rate": 0.2}},
                },
            }
        }
    )
    model, recipe = ablation_variant(cfg, "sgd")
    assert recipe.optimizer.name == "sgd" and recipe.optimizer.lr == 0.05
    assert recipe.optimizer.weight_decay == cfg.teacher.recipe.optimizer.weight_decay  # the rest is the teacher's
    assert recipe.epochs == cfg.teacher.recipe.epochs and model == cfg.teacher.model
    assert ablation_variant(cfg, "drop")[0].drop_rate == 0.2


@pytest.mark.parametrize(
    "ablation, message",
    [
        ({"run": ["nope"], "variants": {}}, "not in ablation.variants"),
        ({"run": ["x"], "variants": {"x": {"recipe": {"loss": {"name": "hinge"}}}}}, "ablation.variants.x: loss.name"),
        ({"run": ["x"], "variants": {"x": {"data": {}}}}, "only `model` and `recipe`"),
    ],
)
def test_bad_ablation_is_a_clear_error(ablation, message):
    from finch.config import parse_params

    with pytest.raises(ConfigError, match=message):
        parse_params({"ablation": ablation})
