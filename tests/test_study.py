"""A variant over seeds: records, weights, and resume of an interrupted stage."""

import pytest
import torch

from finch.config import FinchConfig
from finch.io import load_tensors
from finch.models import build_model
from finch.runs import RunKind, find_records
from finch.study import CHECKPOINT_ROOT, Variant
from finch.train.losses import Objective

from .conftest import TINY_MODEL, tiny_recipe, train_seeds

CPU = torch.device("cpu")


class CrashOnSeed:
    """Objective factory whose objective dies mid-run on the n-th build (the n-th seed)."""

    def __init__(self, recipe, crash_build: int):
        self.recipe, self.crash_build, self.builds = recipe, crash_build, 0

    def __call__(self, data, seed):
        self.builds += 1
        obj = Objective(self.recipe.loss, data.num_classes, mixing=False)
        if self.builds == self.crash_build:
            calls = {"n": 0}
            inner = obj.loss

            def loss(outputs, targets, inputs):
                calls["n"] += 1
                if calls["n"] == 6:
                    raise KeyboardInterrupt("killed")
                return inner(outputs, targets, inputs)

            obj.loss = loss
        return obj


def variant(task, recipe, objective=None):
    return Variant(
        stage="toy",
        name="default",
        recipe=recipe,
        settings={"recipe": recipe.model_dump()},
        build_model=lambda seed: build_model(TINY_MODEL, task.num_classes, task.in_chans),
        objective=objective,
    )


def test_records_and_weights_per_seed(toy_task, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = FinchConfig(runtime={"progress": False})
    folders = train_seeds(
        variant(toy_task, tiny_recipe(epochs=2)), toy_task, [0, 1], cfg, CPU, tmp_path / "runs", tmp_path / "models"
    )
    records = find_records(tmp_path / "runs")
    assert [r.seed for r in records] == [0, 1] and len(folders) == 2
    rec = records[0]
    assert rec.tags["finch.run_key"] == rec.run_key and rec.run_name == "toy/seed=0"
    assert rec.kind == RunKind.CLASSIFIER and rec.tags["finch.kind"] == "classifier"
    assert {"accuracy", "f1_macro", "auroc_macro", "ece", "params_total", "class_acc.dark"} <= set(rec.metrics)
    assert {"train_time_s", "train_images_per_s", "eval_images_per_s", "peak_memory_mb"} <= set(rec.cost)
    assert len(records[0].history) == 2
    weights = load_tensors(tmp_path / "models" / "default" / "seed=0.safetensors")
    model = build_model(TINY_MODEL, 2, 1)
    model.load_state_dict(weights)
    assert records[0].key != records[1].key
    assert not (tmp_path / CHECKPOINT_ROOT / "toy" / "default").exists()  # cleaned once the variant is done


def test_interrupted_stage_resumes_and_matches(toy_task, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = FinchConfig(runtime={"progress": False})
    recipe = tiny_recipe(epochs=3)
    train_seeds(variant(toy_task, recipe), toy_task, [0, 1], cfg, CPU, tmp_path / "a", tmp_path / "ma")
    with pytest.raises(KeyboardInterrupt):
        train_seeds(
            variant(toy_task, recipe, CrashOnSeed(recipe, 2)),
            toy_task,
            [0, 1],
            cfg,
            CPU,
            tmp_path / "b",
            tmp_path / "mb",
        )
    assert (tmp_path / CHECKPOINT_ROOT / "toy" / "default" / "seed=0.pt").is_file()
    train_seeds(variant(toy_task, recipe), toy_task, [0, 1], cfg, CPU, tmp_path / "b", tmp_path / "mb")
    for a, b in zip(find_records(tmp_path / "a"), find_records(tmp_path / "b"), strict=True):
        assert a.metrics == b.metrics
        assert [r["val_loss"] for r in a.history] == [r["val_loss"] for r in b.history]


def test_cas_and_its_real_reference_start_from_random_weights(toy_task, tmp_path, monkeypatch):
    """The classification accuracy score trains on generated images only, from random
    initialisation; its reference (`real_scratch`) is the same model and recipe from random
    initialisation on the real images. Only the mixes start from the pretrained backbone."""
    import finch.models
    import finch.pipeline.train_augmented as augmented
    from finch.io import save_tensors

    backbone = tmp_path / "backbone.safetensors"
    save_tensors(backbone, {"unused": torch.zeros(1)})
    monkeypatch.setattr(augmented, "BACKBONE", backbone)
    loaded = []
    monkeypatch.setattr(finch.models, "load_backbone", lambda model, path: loaded.append(path))
    synthetic = tmp_path / "synthetic.safetensors"
    save_tensors(synthetic, {"train_x": toy_task.train.x.flip(-1), "train_y": toy_task.train.y})
    cfg = FinchConfig.model_validate(
        {"teacher": {"model": TINY_MODEL.model_dump()}, "synthetic": {"ratios": [0.5], "synthetic_only": True}}
    )
    variants = {v.name: (v, task) for v, task in augmented.augmented_variants(cfg, toy_task, str(synthetic))}
    assert set(variants) == {"synthetic_only", "real_scratch", "real", "mix_0.5"}
    for name, (variant, _task) in variants.items():
        loaded.clear()
        torch.manual_seed(0)
        model = variant.build_model(0)
        pretrained = name.startswith("mix_") or name == "real"
        assert loaded == ([backbone] if pretrained else []), name
        assert ("backbone_hash" in variant.settings) == pretrained, name
        if not pretrained:  # the same fresh, seeded initialisation
            torch.manual_seed(0)
            fresh = build_model(TINY_MODEL, toy_task.num_classes, toy_task.in_chans)
            pairs = zip(model.state_dict().values(), fresh.state_dict().values(), strict=True)
            assert all(torch.equal(a, b) for a, b in pairs)
    assert torch.equal(variants["real_scratch"][1].train.x, toy_task.train.x)
    assert torch.equal(variants["real"][1].train.x, toy_task.train.x)
    flipped, y = toy_task.train.x.flip(-1), toy_task.train.y
    assert torch.equal(variants["synthetic_only"][1].train.x, torch.cat([flipped[y == 0], flipped[y == 1]]))


def test_kfold_predicts_with_the_mean_of_the_fold_models(toy_task, tmp_path, monkeypatch):
    """k-fold is an ensemble: the test probabilities are the mean of the k fold models'
    probabilities, not those of the fold with the best validation score."""
    import copy

    import numpy as np

    import finch.kfold
    from finch.evaluate import predict_proba
    from finch.study import execute, study_run

    monkeypatch.chdir(tmp_path)
    fold_models = []
    real_fit = finch.kfold.fit

    def fit(*args, **kwargs):
        result = real_fit(*args, **kwargs)
        fold_models.append(copy.deepcopy(result.model))
        return result

    monkeypatch.setattr(finch.kfold, "fit", fit)
    recipe = tiny_recipe(epochs=1, kfold={"k": 3})
    cfg = FinchConfig(runtime={"progress": False})
    v = variant(toy_task, recipe)
    folder, probs = execute(study_run(v, 0), v, toy_task, cfg, CPU, tmp_path / "runs", tmp_path / "models")
    assert len(fold_models) == 3
    each = [predict_proba(m, toy_task.test, toy_task.to_inputs, 64, CPU, tta=recipe.tta)[0] for m in fold_models]
    np.testing.assert_allclose(probs, np.mean(each, axis=0), atol=1e-6)
    kf = find_records(tmp_path / "runs")[0].kfold
    assert "selected_fold" not in kf and len(kf["val_accuracy"]) == len(kf["test_accuracy"]) == 3
    best = int(np.argmax(kf["val_accuracy"]))
    assert not np.allclose(probs, each[best])


def test_scarce_data_regime_keeps_the_first_images_of_each_class_and_the_other_splits(toy_task):
    """`synthetic.real_per_class`: the GAN study's real images are the first N of each class
    (the prepared order is a random draw); validation and test are the other studies'."""
    from finch.data.splits import first_per_class
    from finch.errors import DataError

    assert first_per_class(toy_task, None) is toy_task
    scarce = first_per_class(toy_task, 2)
    assert torch.bincount(scarce.train.y).tolist() == [2] * toy_task.num_classes
    for c in range(toy_task.num_classes):
        assert torch.equal(scarce.train.x[scarce.train.y == c], toy_task.train.x[toy_task.train.y == c][:2])
    assert scarce.val is toy_task.val and scarce.test is toy_task.test
    assert scarce.content_hash != toy_task.content_hash  # runs on it are keyed apart
    too_many = int(torch.bincount(toy_task.train.y).min()) + 1
    with pytest.raises(DataError, match="synthetic.real_per_class"):
        first_per_class(toy_task, too_many)


def test_scarce_data_regime_larger_than_the_training_split_fails_at_load():
    with pytest.raises(ValueError, match="synthetic.real_per_class is 900 .* at most 800"):
        FinchConfig.model_validate({"data": {"per_class_train": 1000}, "synthetic": {"real_per_class": 900}})


def test_a_run_with_budgets_records_each_budgets_test_accuracy_and_bits(toy_task, tmp_path, monkeypatch):
    """A wsd recipe's run tests its model at the end of every budget's decay: each budget's row holds
    the validation and test accuracy and which test images it got right; the last budget is the
    model the record reports (same bits, same accuracy); a k-fold run of it ensembles its folds."""
    import warnings

    from finch.runs import unpack_correct
    from finch.study import execute, study_run

    monkeypatch.chdir(tmp_path)
    cfg = FinchConfig(runtime={"progress": False})
    recipe = tiny_recipe(budgets=[1.5, 3], scheduler={"name": "wsd", "warmup_epochs": 0}, select_on="last")
    v = variant(toy_task, recipe)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no pydantic serializer warning when the settings are hashed
        folder, probs = execute(study_run(v, 0), v, toy_task, cfg, CPU, tmp_path / "runs", tmp_path / "models")
    rec = find_records(tmp_path / "runs")[0]
    assert [b["steps"] for b in rec.budgets] == [6, 12] and [b["epochs"] for b in rec.budgets] == [1.5, 3.0]
    n = len(toy_task.test)
    for row in rec.budgets:
        bits = unpack_correct(row["test_correct"], n)
        assert row["test_accuracy"] == bits.mean() and 0.0 <= row["val_accuracy"] <= 1.0
    assert rec.budgets[-1]["test_correct"] == rec.test_correct
    assert rec.metrics["accuracy"] == rec.budgets[-1]["test_accuracy"]
    assert (probs.argmax(1) == toy_task.test.y.numpy()).mean() == rec.metrics["accuracy"]


def test_each_seed_draws_its_own_split_and_the_variants_of_a_seed_share_it(toy_task, tmp_path, monkeypatch):
    """Issue 26.4: seeds vary the data split (stratified, same sizes, test untouched); the same seed
    gives the same split, so the variants of a seed stay paired; image and feature tasks of the
    same images split alike (labels and seed only); data.split_per_seed false keeps one split."""
    from dataclasses import replace

    from finch.data.splits import Split

    a, b, again = toy_task.resplit(0), toy_task.resplit(1), toy_task.resplit(0)
    for split in (a, b):
        assert torch.equal(split.test.x, toy_task.test.x)
        assert sorted(split.val.y.tolist()) == sorted(toy_task.val.y.tolist())  # per-class counts kept
        assert len(split.train) == len(toy_task.train)
        union = torch.cat([split.train.x, split.val.x]).flatten(1).sum(1).sort().values
        assert torch.equal(union, torch.cat([toy_task.train.x, toy_task.val.x]).flatten(1).sum(1).sort().values)
    assert not torch.equal(a.val.x, b.val.x) and torch.equal(a.val.x, again.val.x)
    features = replace(
        toy_task,
        train=Split(toy_task.train.x.flatten(1).float(), toy_task.train.y),
        val=Split(toy_task.val.x.flatten(1).float(), toy_task.val.y),
        kind="features",
    )
    assert torch.equal(features.resplit(1).val.x, b.val.x.flatten(1).float())

    from finch.study import execute, study_run

    monkeypatch.chdir(tmp_path)
    v = variant(toy_task, tiny_recipe(epochs=1))
    for per_seed in (True, False):
        cfg = FinchConfig(runtime={"progress": False}, data={"split_per_seed": per_seed})
        execute(study_run(v, 1), v, toy_task, cfg, CPU, tmp_path / f"runs{per_seed}", tmp_path / "models")
        rec = find_records(tmp_path / f"runs{per_seed}")[0]
        assert rec.params["data_hash"] == ("toy+split1" if per_seed else "toy")


def test_flip_tta_is_the_mean_of_the_image_and_its_mirror_at_every_evaluation(toy_task, tmp_path, monkeypatch):
    """recipe.tta flip: the test probabilities a run records are the mean of the model's on the
    images and on their horizontal mirrors; the validation rows (and so the budgets' numbers) too."""
    import numpy as np

    from finch.data.splits import Split
    from finch.evaluate import predict_proba
    from finch.study import execute, study_run

    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    model = build_model(TINY_MODEL, toy_task.num_classes, toy_task.in_chans).eval()
    plain, _ = predict_proba(model, toy_task.test, toy_task.to_inputs, 64, CPU)
    mirrored = Split(toy_task.test.x.flip(-1), toy_task.test.y)
    mirror, _ = predict_proba(model, mirrored, toy_task.to_inputs, 64, CPU)
    tta, _ = predict_proba(model, toy_task.test, toy_task.to_inputs, 64, CPU, tta="flip")
    assert not np.allclose(plain, mirror)  # the toy images are not symmetric: the mirror tells
    np.testing.assert_allclose(tta, (plain + mirror) / 2, atol=1e-6)

    cfg = FinchConfig(runtime={"progress": False})
    runs = {}
    for mode in ("none", "flip"):
        v = variant(toy_task, tiny_recipe(epochs=1, tta=mode))
        runs[mode] = execute(study_run(v, 0), v, toy_task, cfg, CPU, tmp_path / mode, tmp_path / f"models-{mode}")
    weights = {mode: load_tensors(tmp_path / f"models-{mode}" / "default" / "seed=0.safetensors") for mode in runs}
    assert all(torch.equal(weights["none"][k], weights["flip"][k]) for k in weights["none"])  # same training
    trained = build_model(TINY_MODEL, toy_task.num_classes, toy_task.in_chans)
    trained.load_state_dict(weights["flip"])
    expected, _ = predict_proba(trained, toy_task.test, toy_task.to_inputs, 64, CPU, tta="flip")
    np.testing.assert_allclose(runs["flip"][1], expected, atol=1e-6)
    assert not np.allclose(runs["none"][1], runs["flip"][1])


def test_flip_tta_refuses_inputs_that_are_not_images():
    from finch.data.splits import Split as FeatureSplit
    from finch.evaluate import predict_proba

    features = FeatureSplit(torch.randn(8, 5), torch.zeros(8, dtype=torch.long))
    with pytest.raises(ValueError, match="mirrors images"):
        predict_proba(torch.nn.Linear(5, 2), features, lambda x, d: x.float(), 4, CPU, tta="flip")
    with pytest.raises(ValueError, match="finetune.probe_recipe.tta"):
        probe = {
            "tta": "flip",
            "budgets": [],
            "scheduler": {"name": "cosine"},
            "augment": {"flip": False, "translate": 0},
        }
        FinchConfig(finetune={"probe_recipe": probe})
