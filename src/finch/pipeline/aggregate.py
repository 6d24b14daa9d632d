"""Stage `aggregate`: tables, intervals, figures and the MLflow sync."""

from __future__ import annotations

from finch.config import FinchConfig
from finch.errors import ConfigError
from finch.pipeline.common import PREPARED, REPORTS, RUNS, log


def aggregate(cfg: FinchConfig) -> None:
    """Tables, intervals and figures from every run record; then sync MLflow."""
    from finch.report.results import write_reports
    from finch.runs import find_records

    records = find_records(RUNS)
    if not records:
        raise ConfigError(f"{RUNS}: no run records; run the training stages first (dvc repro)")
    summary = write_reports(
        records, PREPARED / "card.json", REPORTS, cfg.aggregate, quality_path=REPORTS / "synthetic_quality.json"
    )
    log.info("wrote %s (%d runs)", REPORTS / "results.md", len(records))
    if cfg.tracking.enabled:
        sync_mlflow(cfg, records, summary)


def sync_mlflow(cfg: FinchConfig, records=None, summary=None) -> None:
    """Log to MLflow every run (and summary) that is not there yet; warn if unreachable."""
    from finch.runs import find_records
    from finch.tracking import sync, tracking_uri

    records = records if records is not None else find_records(RUNS)
    summaries = []
    if summary is not None:
        for (stage, variant), rows in summary.groupby(["stage", "variant"]):
            keys = [r.key for r in records if r.data["stage"] == stage and r.data["variant"] == variant]
            summaries.append({"stage": stage, "variant": variant, "rows": rows.to_dict("records"), "member_keys": keys})
    try:
        counts = sync(records, cfg.tracking, cfg.profile, summaries)
    except Exception as err:
        log.warning(
            "MLflow sync failed (%s: %s); run `finch sync` once %s is reachable",
            type(err).__name__,
            err,
            tracking_uri(cfg.tracking),
        )
        return
    log.info("MLflow %s: %s", tracking_uri(cfg.tracking), counts)
