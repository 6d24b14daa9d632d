"""The report: the study registry, the tables built from typed records, and the results.md template."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from finch.config import AggregateConfig
from finch.report import figures, tables
from finch.report.comparisons import all_comparisons
from finch.report.markdown import render_results
from finch.report.results import build_report, write_reports
from finch.report.stats import summarize
from finch.report.studies import STUDIES, stage_order, study
from finch.runs import RunKind, RunRecord, find_records

REPO = Path(__file__).resolve().parents[1]
# the training stages whose runs the aggregate reads in the default profile, and what they are
DEFAULT_STAGES = {"pretrain", "teacher", "student", "finetune", "augmented", "ablation", "gan"}
CLASSIFIER_STAGES = DEFAULT_STAGES - {"gan"}


def _aggregate_run_stages() -> set[str]:
    deps = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["aggregate"]["deps"]
    return {d.split("/")[2] for d in deps if isinstance(d, str) and d.startswith("reports/runs/")}


def test_registry_covers_every_stage_that_writes_classifier_records():
    assert _aggregate_run_stages() == DEFAULT_STAGES  # dvc.yaml: the runs the aggregate reads
    missing = sorted(CLASSIFIER_STAGES - set(STUDIES))
    assert not missing, f"studies.py: no Study for {missing}; results.md would title them by their stage name"
    for s in STUDIES.values():
        assert s.title and s.title != s.key


def test_committed_records_of_registered_studies_are_classifiers():
    records = find_records(REPO / "reports/runs")
    kinds = {(r.stage, r.kind) for r in records}
    assert {stage for stage, kind in kinds if kind == RunKind.CLASSIFIER} <= set(STUDIES)
    assert all(kind == RunKind.GAN for stage, kind in kinds if stage not in STUDIES)


def test_unregistered_stage_is_titled_by_name_and_sorted_last():
    assert study("extra").title == "extra" and not study("extra").note
    assert sorted(["extra", "ablation", "pretrain"], key=stage_order) == ["pretrain", "ablation", "extra"]


def _gan_record(**fields) -> RunRecord:
    history = [{"epoch": float(e), "d_loss": 1.0 / e, "g_loss": 0.5 * e} for e in (1, 2)]
    return RunRecord.create(
        stage="gan",
        variant="default",
        seed=0,
        kind=RunKind.GAN,
        settings={"gan": 0},
        profile="test",
        device="cpu",
        numerics="test numerics",
        metrics={"final_d_loss": 0.5},
        cost={"train_time_s": 1.0},
        history=history,
        **fields,
    )


def _record(stage: str, variant: str, seed: int, accuracy: float, **fields) -> RunRecord:
    settings = {"stage": stage, "variant": variant, "seed": seed}
    history = [
        {"epoch": float(e), "train_loss": 1.0 / e, "val_loss": 1.2 / e, "val_accuracy": accuracy - 0.1 / e}
        for e in (1, 2, 3)
    ]
    return RunRecord.create(
        stage=stage,
        variant=variant,
        seed=seed,
        kind=RunKind.CLASSIFIER,
        settings=settings,
        profile="test",
        device="cpu",
        numerics="test numerics",
        metrics={"accuracy": accuracy, "f1_macro": accuracy - 0.01, "class_acc.a": accuracy, "class_acc.b": accuracy},
        cost={"params_total": 1000.0, "params_trainable": 1000.0 if variant != "probe" else 10.0, "train_time_s": 2.0},
        best_epoch=3,
        epochs_run=3,
        class_names=["a", "b"],
        confusion=[[4, 1], [1 + seed, 4]],
        history=history,
        **fields,
    )


def _records() -> list[RunRecord]:
    kfold = {
        "k": 2,
        "val_accuracy": [0.7, 0.72],
        "test_accuracy": [0.69, 0.7],
        "best_epoch": [3, 2],
        "val_accuracy_mean": 0.71,
        "val_accuracy_std": 0.014,
        "test_accuracy_mean": 0.695,
        "test_accuracy_std": 0.007,
    }
    recs = [_record("teacher", "default", s, 0.70 + 0.01 * s, kfold=kfold) for s in range(3)]
    recs += [_record("finetune", v, s, a + 0.01 * s) for v, a in (("full", 0.72), ("probe", 0.65)) for s in range(3)]
    recs.append(_gan_record(warnings=["discriminator won early"]))
    return recs


CFG = AggregateConfig(
    bootstrap_resamples=200, headline_metrics=["accuracy", "f1_macro"], baselines={"finetune": ["probe"]}
)


def _report(records):
    table = tables.runs_table(records)
    summary = summarize(table, CFG.confidence, CFG.bootstrap_resamples, CFG.bootstrap_seed)
    return build_report(records, summary, all_comparisons(table, summary, CFG), CFG), summary


def test_tables_read_typed_records():
    records = _records()
    runs = tables.runs_table(records)
    assert set(runs.stage) == {"teacher", "finetune", "gan"}
    assert list(runs.columns) == tables.RUN_COLUMNS
    teacher = [r for r in records if r.stage == "teacher"]
    assert tables.summed_confusion(teacher).tolist() == [[12, 3], [6, 12]]
    folds = tables.kfold_table(teacher)
    assert list(folds.seed) == [0, 1, 2] and folds.k.iloc[0] == 2
    seeds = tables.per_seed_table(teacher, ["accuracy", "ece"])
    assert seeds.accuracy.tolist() == [0.70, 0.71, 0.72] and pd.isna(seeds.ece).all()
    curve = tables.mean_curve(teacher)
    assert list(curve.epoch) == [1, 2, 3] and (curve.low <= curve.val_accuracy).all()


def test_template_renders_a_minimal_report():
    report, _ = _report(_records())
    assert [s.study.key for s in report.studies] == ["teacher", "finetune"]  # registry order; the GAN is no study
    text = render_results(report)
    assert text.startswith("# Finch results\n\n") and text.endswith("\n") and not text.endswith("\n\n\n")
    assert f"## {STUDIES['teacher'].title}\n\n" in text and STUDIES["finetune"].note in text
    assert "### teacher\n" in text and "### finetune/probe\n" in text
    assert "| accuracy | 3 | 0.7100 |" in text  # mean over seeds
    assert "| seed | accuracy | f1_macro | best epoch |\n|---:|---:|---:|---:|\n| 0 | 0.7000 | 0.6900 | 3 |" in text
    assert "2-fold ensemble" in text
    assert "| 1 | 0.700, 0.720 | 0.7100 ± 0.0140 | 0.690, 0.700 | 0.6950 ± 0.0070 | 0.7100 |" in text
    assert "Paired differences against `probe`" in text and "`full` beats `probe`" in text
    assert (
        "Pareto front (no other variant is both more accurate and has fewer trainable parameters): `probe`, `full`."
        in text
    )
    assert "![finetune/full confusion matrix](figures/finetune_full_confusion.png)" in text
    assert "![accuracy forest plot](figures/forest_accuracy.png)" in text
    assert "## Data" not in text and "Fréchet" not in text  # no card, no synthetic-data study
    assert "{{" not in text and "{%" not in text


def test_card_and_synthetic_quality_sections():
    records = [_record("augmented", "mix_1", s, 0.7) for s in range(2)] + _records()[-1:]
    report, _ = _report(records)
    report.card = {
        "source": "toy",
        "image_size": 12,
        "channels": 1,
        "target": {
            "classes": ["a", "b"],
            "counts": {"train": {"a": 3, "b": 4}, "val": {"a": 1}, "test": {"b": 2}},
            "content_hash": "0123456789abcdef",
        },
    }
    (section,) = report.studies
    section.quality = tables.quality_table(
        {
            "per_class_generated": 8,
            "overall": {
                **{"n": 16, "fid": 1.0, "kid": 0.1, "kid_std": 0.01, "precision": 0.5, "recall": 0.4},
                "reference": {"n": 16, "fid": 0.4, "kid": 0.04, "kid_std": 0.004, "precision": 0.8, "recall": 0.7},
            },
            "per_class": {
                "a": {
                    **{"n": 8, "fid": 2.0, "kid": 0.2, "kid_std": 0.02, "precision": 0.6, "recall": 0.3},
                    "reference": {"n": 5, "fid": 0.5, "kid": 0.05, "kid_std": 0.005, "precision": 0.9, "recall": 0.8},
                }
            },
        }
    )
    section.quality_generated = 8
    text = render_results(report)
    assert "7 training, 1 validation and 2 test images (content hash `0123456789ab`)" in text
    assert "Training warnings: 1.\n- discriminator won early\n" in text
    assert "![GAN losses](figures/gan_losses.png)" in text
    assert "| set | compared | images each | FD | KID | precision | recall |" in text
    assert "| all classes | generated vs real | 16 | 1.000 | 0.1000 ± 0.0100 | 0.500 | 0.400 |" in text
    assert "| all classes | *real vs real* | 16 | 0.400 | 0.0400 ± 0.0040 | 0.800 | 0.700 |" in text
    assert "| a | generated vs real | 8 | 2.000 | 0.2000 ± 0.0200 | 0.600 | 0.300 |" in text
    assert "| a | *real vs real* | 5 | 0.500 | 0.0500 ± 0.0050 | 0.900 | 0.800 |" in text


def test_write_reports_writes_the_figures_the_page_names(tmp_path: Path):
    records = [r for r in _records() if r.stage in ("teacher", "gan")]
    write_reports(records, tmp_path / "no-card.json", tmp_path, CFG)
    text = (tmp_path / "results.md").read_text()
    assert "\nTrained under `test numerics` (4 runs). Runs under the same numerics" in text  # which machine
    for name in ("teacher_confusion.png", "teacher_curves.png", "forest_accuracy.png"):
        assert f"figures/{name}" in text and (tmp_path / "figures" / name).is_file()
    assert figures.variant_figures(tmp_path / "figures", "teacher", "default") == [
        tmp_path / "figures/teacher_confusion.png",
        tmp_path / "figures/teacher_curves.png",
    ]
    assert figures.variant_figures(tmp_path / "figures", "gan", "default") == []  # no synthetic-data study ran
    assert figures.variant_figures(tmp_path / "figures", "student", "none") == []
    for name in ("runs.csv", "summary.json", "summary.csv", "comparisons.csv", "plots/accuracy.csv"):
        assert (tmp_path / name).is_file()


def _cannot_save(fig, path):
    raise OSError(f"disk full: {path}")


def test_figures_drawn_in_parallel_are_the_files_drawn_in_one_process(tmp_path: Path, monkeypatch):
    report, _ = _report(_records())
    figures.write_figures(report, tmp_path / "one", processes=1)
    figures.write_figures(report, tmp_path / "two", processes=2)
    names = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert len(names) >= 8 and names == sorted(p.name for p in (tmp_path / "two").iterdir())
    for name in names:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name
    monkeypatch.setattr(figures, "_save", _cannot_save)  # forked workers inherit the patch
    with pytest.raises(OSError, match="disk full"):
        figures.write_figures(report, tmp_path / "three", processes=2)


def test_cas_is_compared_with_its_scratch_reference_and_the_mixes_with_real_images_alone():
    records = [_record("teacher", "default", s, 0.70 + 0.01 * s) for s in range(3)]
    records += [
        _record("augmented", v, s, a + 0.01 * s)
        for v, a in (("synthetic_only", 0.5), ("real_scratch", 0.6), ("real", 0.68), ("mix_1", 0.71))
        for s in range(3)
    ]
    cfg = AggregateConfig(bootstrap_resamples=200, headline_metrics=["accuracy"])  # the declared defaults
    table = tables.runs_table(records)
    summary = summarize(table, cfg.confidence, cfg.bootstrap_resamples, cfg.bootstrap_seed)
    family = all_comparisons(table, summary, cfg)["augmented"]
    pairs = sorted(zip(family.variant, family.baseline, strict=True))
    assert pairs == [("mix_1", "real"), ("synthetic_only", "real_scratch")]
    assert family.set_index("variant").mean_diff["synthetic_only"] == pytest.approx(-0.1)


def test_differences_table_shows_the_probability_of_improvement_and_the_win_share():
    report, _ = _report(_records())
    text = render_results(report)
    assert "| P(X > Y) | seeds higher |" in text
    # full is higher than probe in every seed (0.72.. vs 0.65..) and in every pair of runs
    assert "| full | accuracy | 3 | +0.0700 |" in text and "| 1.00 | 100% |" in text


def test_each_unordered_pair_is_compared_once_in_the_holm_family():
    """finetune's baselines are [linear_probe, scratch]: `scratch − linear_probe` is declared
    (against the first-named baseline), its reverse is not tested or counted again."""
    records = [
        _record("finetune", v, s, a + 0.01 * s + 0.004 * k * (s % 2))  # differences that vary by seed
        for k, (v, a) in enumerate((("linear_probe", 0.6), ("scratch", 0.55), ("full", 0.7)))
        for s in range(3)
    ]
    cfg = AggregateConfig(bootstrap_resamples=200, headline_metrics=["accuracy"])
    table = tables.runs_table(records)
    summary = summarize(table, cfg.confidence, cfg.bootstrap_resamples, cfg.bootstrap_seed)
    family = all_comparisons(table, summary, cfg)["finetune"]
    pairs = sorted(zip(family.variant, family.baseline, strict=True))
    assert pairs == [("full", "linear_probe"), ("full", "scratch"), ("scratch", "linear_probe")]
    assert family.t_p.notna().all()
    smallest = family.t_p.min()  # Holm: the smallest p times the family's size, 3
    assert family.t_p_holm[family.t_p == smallest].iloc[0] == pytest.approx(min(1.0, 3 * smallest))


def test_the_scarce_data_study_is_shown_with_floors_fitted_on_its_own_images(tmp_path):
    """floors.json's `scarce` floors (fitted on synthetic.real_per_class images a class) are the
    floors of the augmented study; every other study keeps the full-data floors."""
    from finch.io import write_json

    runs = tmp_path / "runs"
    for stage, variant, accuracy in (("teacher", "default", 0.80), ("augmented", "real", 0.70)):
        for seed in range(3):
            _record(stage, variant, seed, accuracy + 0.01 * seed).write(runs)

    def floor(accuracy: float) -> dict:
        return {
            "label": "logistic regression on raw pixels",
            "param": "C",
            "value": 0.01,
            "val_accuracy": {"0.01": accuracy},
            "metrics": {"accuracy": accuracy, "f1_macro": accuracy},
        }

    doc = {"floors": {"pixel_logreg": floor(0.75)}}
    doc["scarce"] = {"per_class": 100, "stages": ["augmented"], "floors": {"pixel_logreg": floor(0.65)}}
    write_json(tmp_path / "floors.json", doc)
    cfg = AggregateConfig(bootstrap_resamples=200, headline_metrics=["accuracy"], baselines={})
    summary = write_reports(
        find_records(runs), tmp_path / "no-card.json", tmp_path / "out", cfg, floors_path=tmp_path / "floors.json"
    )
    floors = summary[(summary.stage == "floors") & (summary.metric == "accuracy")].set_index("variant")["mean"]
    assert floors.to_dict() == {"pixel_logreg": 0.75, "pixel_logreg_100_per_class": 0.65}
    results = (tmp_path / "out" / "results.md").read_text()
    sections = {part.split("\n", 1)[0]: part for part in results.split("\n## ")}
    teacher = next(v for k, v in sections.items() if k.startswith("CNN teacher"))
    augmented = next(v for k, v in sections.items() if k.startswith("Synthetic images"))
    assert "logistic regression on raw pixels (C = 0.01)*" in teacher and "training images a class" not in teacher
    assert "logistic regression on raw pixels, 100 training images a class (C = 0.01)*" in augmented
    assert "**Below the floors:**" not in augmented  # 0.70 is above its own floor, 0.65
