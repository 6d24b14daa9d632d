"""Stage `aggregate`: tables, intervals, figures, the models' parameter tables and the MLflow sync."""

from __future__ import annotations

import logging
from pathlib import Path

from finch.config import FinchConfig
from finch.errors import ConfigError
from finch.pipeline.paths import PREPARED, REPORTS, RUNS

log = logging.getLogger(__name__)
MODEL_TABLES = REPORTS / "models"  # each model's parameters per block (finch.report.model_tables)


def run(cfg: FinchConfig) -> None:
    """Tables, intervals, figures and the models' parameter tables from every run record; then sync MLflow."""
    from finch.report.model_tables import write_model_tables
    from finch.report.results import write_reports
    from finch.runs import find_records

    records = find_records(RUNS)
    if not records:
        raise ConfigError(f"{RUNS}: no run records; run the training stages first (dvc repro)")
    summary = write_reports(
        records,
        PREPARED / "card.json",
        REPORTS,
        cfg.aggregate,
        quality_path=REPORTS / "synthetic_quality.json",
        floors_path=REPORTS / "floors.json",
    )
    log.info("wrote %s (%d runs)", REPORTS / "results.md", len(records))
    tables = write_model_tables(records, MODEL_TABLES)
    log.info("wrote %s: the parameters of %d models, from their run records", MODEL_TABLES, len(tables))
    write_headline(REPORTS)
    if cfg.tracking.enabled:
        sync_mlflow(cfg, records, summary)


def write_headline(reports: Path) -> None:
    """reports/headline.md from summary.json and comparisons.csv. The README shows it between its
    markers; `finch readme` copies it there (scripts/study.sh does after `dvc repro`), and
    tests/test_readme.py fails while the two differ. The stage itself writes only its outputs."""
    from finch.io import write_text
    from finch.report.headline import render_from_reports

    write_text(reports / "headline.md", render_from_reports(reports))


def sync_mlflow(cfg: FinchConfig, records=None, summary=None) -> None:
    """Log to MLflow every run (and summary) that is not there yet; warn if unreachable."""
    from finch.runs import find_records
    from finch.tracking import shown_uri, sync, tracking_failure

    records = records if records is not None else find_records(RUNS)
    if summary is None:  # `finch sync`: the same summary runs the aggregate logs
        from finch.report.results import runs_table
        from finch.report.stats import summarize

        agg = cfg.aggregate
        summary = summarize(runs_table(records), agg.confidence, agg.bootstrap_resamples, agg.bootstrap_seed)
    from finch.report.figures import variant_figures

    summaries = []
    if summary is not None:  # summary runs carry the headline metrics only: few, named columns in the UI
        headline = summary[summary["metric"].isin(cfg.aggregate.headline_metrics)]
        for (stage, variant), rows in headline.groupby(["stage", "variant"]):
            keys = [r.key for r in records if r.stage == stage and r.variant == variant]
            if not keys:  # the floors: no training run to summarise
                continue
            summaries.append(
                {
                    "stage": stage,
                    "variant": variant,
                    "rows": rows.to_dict("records"),
                    "member_keys": keys,
                    "figures": variant_figures(REPORTS / "figures", stage, variant),
                }
            )
    try:
        counts = sync(records, cfg.tracking, cfg.profile, summaries)
    except Exception as err:
        log.warning(
            "MLflow sync failed (%s); run `finch sync` once %s is reachable",
            tracking_failure(err, cfg.tracking),
            shown_uri(cfg.tracking),
        )
        return
    log.info("MLflow %s: %s", shown_uri(cfg.tracking), counts)
