"""The aggregate's outputs: runs.csv, summary.json/.csv, comparisons.csv, plot data, figures and
results.md, all computed from the per-run records (nothing is typed by hand).

:func:`build_report` gathers the data (DataFrames, :mod:`finch.report.tables` and
:mod:`finch.report.comparisons`), :func:`finch.report.figures.write_figures` draws it and
:func:`finch.report.markdown.render_results` fills the results.md template with it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from finch.config import AggregateConfig
from finch.io import read_json, write_json, write_text, write_with
from finch.report import budgets, figures, tables
from finch.report.comparisons import Comparison, all_comparisons, compare_variants
from finch.report.markdown import render_results
from finch.report.plots import write_plot_data
from finch.report.stats import summarize
from finch.report.studies import Study, stage_order, study
from finch.report.tables import runs_table, summary_json
from finch.report.verify import numerics_summary
from finch.runs import RunKind, RunRecord

__all__ = ["Report", "build_report", "runs_table", "summary_json", "write_reports"]

SCHEDULES = "schedules/table.md"  # scripts/wsd_vs_cosine.py's table, shown in results.md
EXTRA_METRICS = ["precision_macro", "recall_macro", "top5_accuracy"]  # shown after the headline metrics


@dataclass
class VariantSection:
    """One variant's runs and its tables (see :mod:`finch.report.tables`)."""

    stage: str
    variant: str
    records: list[RunRecord]
    metrics: pd.DataFrame
    class_metrics: pd.DataFrame
    per_seed: pd.DataFrame
    cost: pd.DataFrame
    kfold: pd.DataFrame

    @property
    def label(self) -> str:
        return tables.variant_label(self.stage, self.variant)


@dataclass
class StudySection:
    """One study: its variants; the comparison where it has several variants or a baseline; the
    seed ensembles; and, for a study that declares it, the GAN runs and synthetic-image quality."""

    study: Study
    variants: list[VariantSection]
    comparison: Comparison | None
    ensembles: pd.DataFrame
    gan_records: list[RunRecord] = field(default_factory=list)
    quality: pd.DataFrame | None = None
    quality_generated: int | None = None


@dataclass
class Report:
    """Everything results.md shows. ``forest``: headline metric → the variants with an interval."""

    card: dict | None
    studies: list[StudySection]
    forest: dict[str, pd.DataFrame]
    headline_metrics: list[str]
    confidence: float
    numerics: dict[str, int]  # what the runs were trained under (torch build, CPU kernels or GPU) → run count
    schedules: str | None = None  # reports/schedules/table.md: WSD against cosine on validation
    split_per_seed: bool = False  # whether the seeds drew their own train/validation splits


def _variant_section(stage: str, variant: str, recs: list[RunRecord], summary, cfg) -> VariantSection:
    metrics = [*cfg.headline_metrics, *EXTRA_METRICS]
    return VariantSection(
        stage=stage,
        variant=variant,
        records=recs,
        metrics=tables.summary_rows(summary, stage, variant, metrics),
        class_metrics=tables.summary_rows(summary, stage, variant, tables.class_metrics(summary, stage, variant)),
        per_seed=tables.per_seed_table(recs, cfg.headline_metrics),
        cost=tables.cost_table(summary, stage, variant),
        kfold=tables.kfold_table(recs),
    )


def build_report(
    records: list[RunRecord],
    summary: pd.DataFrame,
    families: dict[str, pd.DataFrame],
    cfg: AggregateConfig,
    card: dict | None = None,
    quality: dict | None = None,
    floors: dict | None = None,
    budget_tables: dict[str, pd.DataFrame] | None = None,
    floors_by_stage: dict[str, dict] | None = None,
) -> Report:
    """The data of results.md: a section per study with classifier runs (registry order, then
    any other stage), each variant's tables, and the overview's forest rows. Each study on the
    target task is shown with the floors (``floors``; ``floors_by_stage`` names a study's own,
    e.g. the scarce-data floors of the GAN study)."""
    by_stage: dict[str, dict[str, list[RunRecord]]] = {}
    for rec in records:
        if rec.kind == RunKind.CLASSIFIER:  # the GAN appears in the study that declares synthetic quality
            by_stage.setdefault(rec.stage, {}).setdefault(rec.variant, []).append(rec)
    gan_records = [r for r in records if r.kind == RunKind.GAN]
    sections, forest = [], {m: [] for m in cfg.headline_metrics}
    for stage in sorted(by_stage, key=stage_order):
        variants, s = by_stage[stage], study(stage)
        own = (floors_by_stage or {}).get(stage, floors or {})
        with_floors = tables.floor_labels(own) if own and s.target_task else {}
        compared = len(variants) > 1 or cfg.baselines.get(stage) or cfg.variant_baselines.get(stage) or with_floors
        section = StudySection(
            study=s,
            variants=[_variant_section(stage, v, variants[v], summary, cfg) for v in sorted(variants)],
            comparison=(
                compare_variants(s, variants, summary, families[stage], cfg, with_floors, budget_tables)
                if compared
                else None
            ),
            ensembles=tables.ensemble_table([r for recs in variants.values() for r in recs]),
        )
        if s.synthetic_quality:
            section.gan_records = gan_records
            if quality:
                section.quality = tables.quality_table(quality)
                section.quality_generated = quality["per_class_generated"]
        sections.append(section)
        for v in section.variants:
            for r in v.metrics[v.metrics.metric.isin(cfg.headline_metrics)].to_dict("records"):
                if r["n"] > 1:  # a single run has no interval to plot
                    forest[r["metric"]].append({"label": v.label, **r})
    forest_tables = {m: pd.DataFrame(rows) for m, rows in forest.items()}
    return Report(
        card=card,
        studies=sections,
        forest=forest_tables,
        headline_metrics=list(cfg.headline_metrics),
        confidence=cfg.confidence,
        numerics=numerics_summary(records),
    )


def schedules_table(path: Path, card: dict | None) -> str | None:
    """scripts/wsd_vs_cosine.py's table, when it was measured on this study's data (its first line
    names the data's content hash): a measurement made before the study, on validation, so not a
    DVC dependency of the aggregate; another dataset's runs do not show it."""
    if not path.is_file() or not card:
        return None
    first, _, table = path.read_text().partition("\n")
    return table.strip() if first.strip() == f"<!-- data: {card['target']['content_hash']} -->" else None


def _write_csv(path: Path, table: pd.DataFrame, float_format: str = "%.10g") -> None:
    write_with(path, lambda tmp: table.to_csv(tmp, index=False, float_format=float_format))


def write_reports(
    records: list[RunRecord],
    card_path: Path,
    out: Path,
    cfg: AggregateConfig,
    quality_path: Path | None = None,
    floors_path: Path | None = None,
) -> pd.DataFrame:
    """Write runs.csv, numerics.json, summary.json/.csv, comparisons.csv, plots/, figures/ and results.md under
    ``out``; return the summary (one row per stage, variant and metric).

    ``card_path``: the prepare stage's data card (the Data section; skipped when missing).
    ``quality_path``: the generate stage's synthetic_quality.json, for the synthetic-data section.
    ``floors_path``: the floors stage's floors.json: raw-pixel classifiers, shown in every study on
    the target task and in the summary (stage ``floors``). Also writes budgets.csv (every
    variant's test accuracy at every budget, the floors too), plateau.csv (the plateau rule) and
    budget_comparisons.csv (every comparison at every budget): see :mod:`finch.report.budgets`.
    """
    out = Path(out)
    table = runs_table(records)
    _write_csv(out / "runs.csv", table)
    summary = summarize(table, cfg.confidence, cfg.bootstrap_resamples, cfg.bootstrap_seed)
    floors_doc = read_json(floors_path) if floors_path and Path(floors_path).is_file() else {}
    floors, floors_by_stage = tables.floor_sets(floors_doc)
    every_floor = floors | {name: f for own in floors_by_stage.values() for name, f in own.items()}
    if every_floor:
        summary = pd.concat([summary, tables.floor_summary(every_floor)], ignore_index=True)
    budget_tables = budgets.write_tables(records, every_floor, summary, cfg, out)
    write_json(out / "summary.json", summary_json(summary, cfg.headline_metrics))
    _write_csv(out / "summary.csv", summary)
    families = all_comparisons(table, summary, cfg)
    comparisons = pd.concat([f for f in families.values() if not f.empty] or [pd.DataFrame()], ignore_index=True)
    _write_csv(out / "comparisons.csv", comparisons)
    write_plot_data(records, summary, out / "plots")

    card = read_json(card_path) if Path(card_path).is_file() else None
    quality = read_json(quality_path) if quality_path and Path(quality_path).is_file() else None
    report = build_report(records, summary, families, cfg, card, quality, floors, budget_tables, floors_by_stage)
    report.schedules = schedules_table(out / SCHEDULES, card)
    # a run on its seed's own split hashes it into its data (TaskData.resplit)
    report.split_per_seed = any("+split" in str(r.params.get("data_hash", "")) for r in records)
    write_json(out / "numerics.json", report.numerics)  # how strictly `finch verify` compares
    figures.write_figures(report, out / "figures")
    write_text(out / "results.md", render_results(report))
    return summary
