"""Each training run records its models' parameters (with its stage's freezing), and the
aggregate writes reports/models/ from those records."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from finch.config import FinchConfig, config_hash
from finch.io import save_tensors, write_json
from finch.model_summary import SUMMARY_DEPTH, run_summary
from finch.models import build_model, freeze_all_but
from finch.report.model_tables import summary_markdown, write_model_tables
from finch.runs import RunKind, RunRecord, find_records, run_key
from finch.study import Variant, execute, run_settings, study_run

from .conftest import TINY_MODEL, squares, tiny_recipe

CPU = torch.device("cpu")


def frozen_cnn(task, seed: int) -> nn.Module:
    """The tiny CNN with only its last stage and head trainable."""
    model = build_model(TINY_MODEL, task.num_classes, task.in_chans)
    freeze_all_but(model, lambda name: name.startswith(("layer4.", "fc.")))
    return model


def pixel_head(task, seed: int) -> nn.Module:
    """A linear head on the flattened image: stands in for a probe on cached features."""
    return nn.Sequential(nn.Flatten(), nn.Linear(task.image_size**2 * task.in_chans, task.num_classes))


def _variant(task, build, recipe, frozen_outside: int = 0) -> Variant:
    return Variant(
        stage="toy",
        name="default",
        recipe=recipe,
        settings={"recipe": recipe.model_dump()},
        build_model=lambda seed: build(task, seed),
        frozen_outside=frozen_outside,
    )


def _run(task, variant, tmp_path) -> RunRecord:
    cfg = FinchConfig(runtime={"progress": False})
    folder, _ = execute(study_run(variant, 0), variant, task, cfg, CPU, tmp_path / "runs", tmp_path / "models")
    (record,) = find_records(tmp_path / "runs")
    assert record.path == folder
    # the summary describes the run, it does not define it: key and params as without it
    settings = run_settings(variant, task, cfg, 0)
    assert record.run_key == run_key("toy", "default", 0, config_hash(settings))
    assert not any("summar" in k for k in record.params)
    return record


def test_a_classifier_run_records_what_it_trained(toy_task, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    record = _run(toy_task, _variant(toy_task, frozen_cnn, tiny_recipe(epochs=1)), tmp_path)
    summary = record.model_summaries["model"]
    assert summary["total"] == record.metrics["params_total"]
    assert summary["trainable"] == record.metrics["params_trainable"] < summary["total"]  # the stage's freezing
    assert summary["depth"] == SUMMARY_DEPTH and "frozen_outside" not in summary
    assert sum(r["trainable"] for r in summary["layers"]) == summary["trainable"]
    rows = {r["name"]: r for r in summary["layers"]}
    assert rows["layer1.0"]["trainable"] == 0 and rows["fc"]["trainable"] == rows["fc"]["params"]


def test_a_probe_records_its_head_and_the_frozen_backbone_outside_it(toy_task, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    record = _run(toy_task, _variant(toy_task, pixel_head, tiny_recipe(epochs=1), frozen_outside=1000), tmp_path)
    summary = record.model_summaries["model"]
    assert summary["model"] == "Sequential" and summary["frozen_outside"] == 1000
    assert summary["total"] == summary["trainable"] == record.metrics["params_trainable"]
    assert summary["total"] == record.metrics["params_total"] - 1000  # params_total counts the backbone
    assert "backbone's 1,000 parameters are not in this table" in summary_markdown("probe", summary)


def test_a_kfold_run_records_one_fold_model(toy_task, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    record = _run(toy_task, _variant(toy_task, frozen_cnn, tiny_recipe(epochs=1, kfold={"k": 2})), tmp_path)
    summary = record.model_summaries["model"]
    assert summary["model"] == "ResNet"  # a fold model, not the FoldEnsemble
    assert 2 * summary["total"] == record.metrics["params_total"]
    assert 2 * summary["trainable"] == record.metrics["params_trainable"]


def _record(stage: str, variant: str, seed: int, kind=RunKind.CLASSIFIER, **fields) -> RunRecord:
    return RunRecord.create(
        stage=stage,
        variant=variant,
        seed=seed,
        kind=kind,
        settings={"stage": stage, "variant": variant},
        profile="test",
        device="cpu",
        numerics="test numerics",
        metrics={"accuracy": 0.5 + 0.01 * seed} if kind == RunKind.CLASSIFIER else {"final_d_loss": 0.5},
        cost={"train_time_s": 1.0},
        class_names=["a", "b"],
        **fields,
    )


KFOLD = {  # a 3-fold run's summary, as finch.kfold.fit_kfold writes it
    "k": 3,
    "val_accuracy": [0.5, 0.6, 0.7],
    "test_accuracy": [0.5, 0.5, 0.6],
    "best_epoch": [1, 1, 1],
    "val_accuracy_mean": 0.6,
    "val_accuracy_std": 0.1,
    "test_accuracy_mean": 0.533,
    "test_accuracy_std": 0.058,
}


def _model_records() -> list[RunRecord]:
    cnn = build_model(TINY_MODEL, 2, 1)
    wide = nn.Linear(8, 2)
    head = nn.Linear(4, 2)
    return [
        _record("teacher", "default", 1, model_summaries={"model": run_summary(wide)}),  # a later seed: not shown
        _record("teacher", "default", 0, model_summaries={"model": run_summary(cnn)}),
        _record("finetune", "linear_probe", 0, model_summaries={"model": run_summary(head, frozen_outside=99)}),
        _record("finetune", "full", 0, kfold=KFOLD, model_summaries={"model": run_summary(cnn)}),
        _record("ablation", "focal", 0),  # recorded before runs kept their summaries: no table
        _record(
            "gan",
            "default",
            0,
            kind=RunKind.GAN,
            model_summaries={"generator": run_summary(wide), "discriminator": run_summary(head)},
        ),
    ]


def test_model_tables_come_from_the_first_seed_of_each_variant(tmp_path):
    folder = tmp_path / "models"
    (folder / "stale.md").parent.mkdir()
    (folder / "stale.md").write_text("from an earlier run")
    write_model_tables(_model_records(), folder)
    names = ["teacher", "finetune_full", "finetune_linear_probe", "gan_generator", "gan_discriminator"]
    assert sorted(p.name for p in folder.iterdir()) == sorted([f"{n}.md" for n in names] + ["summary.json"])
    summary = json.loads((folder / "summary.json").read_text())
    assert list(summary) == names  # the report's study order, then variants by name
    cnn = sum(p.numel() for p in build_model(TINY_MODEL, 2, 1).parameters())
    assert summary["teacher"]["total"] == cnn  # seed 0's, not seed 1's
    assert (
        summary["gan_discriminator"]["total"] == 4 * 2 + 2 and summary["finetune_linear_probe"]["frozen_outside"] == 99
    )
    teacher = (folder / "teacher.md").read_text()
    assert (
        teacher.startswith("# teacher\n") and "stage `teacher`, seed 0's run" in teacher and f"**{cnn:,}**" in teacher
    )
    assert "One of the 3 fold models" in (folder / "finetune_full.md").read_text()
    assert "(generator): stage `gan`" in (folder / "gan_generator.md").read_text()


def test_the_aggregate_stage_writes_the_model_tables(tmp_path, monkeypatch):
    from finch.pipeline.aggregate import run as aggregate

    from .test_report import _gan_record
    from .test_report import _record as full_record

    monkeypatch.chdir(tmp_path)
    cnn, head = build_model(TINY_MODEL, 2, 1), nn.Linear(4, 2)
    records = [
        full_record("teacher", "default", s, 0.7 + 0.01 * s, model_summaries={"model": run_summary(cnn)})
        for s in (0, 1)
    ]
    records.append(_gan_record(model_summaries={"generator": run_summary(head), "discriminator": run_summary(head)}))
    for rec in records:
        rec.write(tmp_path / "reports/runs")
    cfg = FinchConfig.model_validate({"profile": "test", "tracking": {"enabled": False}})
    aggregate(cfg)
    summary = json.loads((tmp_path / "reports/models/summary.json").read_text())
    assert list(summary) == ["teacher", "gan_generator", "gan_discriminator"]
    assert summary["teacher"] == json.loads(json.dumps(run_summary(cnn)))
    assert (tmp_path / "reports/models/teacher.md").is_file() and (tmp_path / "reports/results.md").is_file()


@pytest.fixture
def gan_workspace(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    splits = {"train": squares(8, 16, 1), "val": squares(4, 16, 2), "test": squares(4, 16, 3)}
    tensors = {f"{s}_{k}": t for s, (x, y) in splits.items() for k, t in (("x", x), ("y", y))}
    save_tensors("data/prepared/target.safetensors", tensors)
    card = {"target": {"classes": ["dark", "bright"], "counts": {}, "content_hash": "toy"}, "source_task": None}
    write_json("data/prepared/card.json", {**card, "mean": [0.3], "std": [0.3]})
    return tmp_path


def test_the_gan_run_records_its_generator_and_discriminator(gan_workspace):
    from finch.gan import Discriminator
    from finch.pipeline.train_gan import run as train_gan

    cfg = FinchConfig.model_validate(
        {
            "profile": "test",
            "runtime": {"device": "cpu", "threads": 1, "deterministic": False, "progress": False},
            "data": {"image_size": 16},
            "gan": {"width": 8, "z_dim": 8, "embed_dim": 4, "epochs": 1, "batch_size": 4},
            "synthetic": {"real_per_class": None},
            "tracking": {"enabled": False},
        }
    )
    train_gan(cfg)
    (record,) = find_records(gan_workspace / "reports/runs", "gan")
    assert set(record.model_summaries) == {"generator", "discriminator"}
    assert not any("summar" in k for k in record.params)
    gen = record.model_summaries["generator"]
    assert gen["model"] == "Generator" and gen["trainable"] == gen["total"] > 0
    disc = Discriminator(2, 1, 16, cfg.gan)
    assert record.model_summaries["discriminator"]["total"] == sum(p.numel() for p in disc.parameters())
