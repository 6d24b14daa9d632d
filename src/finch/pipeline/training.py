"""What every training stage does around its plan: train it, log it, write its metrics."""

from __future__ import annotations

import time
from pathlib import Path

from finch.cluster import check_executor
from finch.config import FinchConfig
from finch.distributed import is_main
from finch.pipeline.entry import STAGE_TIMING
from finch.pipeline.paths import RUNS, stage_metrics
from finch.pipeline.table import STAGES
from finch.runner import Plan, train_plan, worker_count
from finch.runs import write_stage_metrics
from finch.tracking import log_runs_safely
from finch.train.runtime import configure


def run_training_stage(plan: Plan, cfg: FinchConfig, stage: str) -> list[Path]:
    """DVC stage ``stage``'s whole work: its plan's runs (over ``runtime.workers`` processes or as SLURM
    jobs, see :mod:`finch.runner`), one MLflow upload of their records (both timed for the stage's timing
    file), and the stage's metrics file (``dvc exp show``): means per variant of its records."""
    check_executor(cfg)  # before any work: slurm where there is none
    runtime = cfg.runtime
    if runtime.executor == "slurm":  # the jobs take the GPUs; this process plans, waits and gathers
        runtime = runtime.model_copy(update={"device": "cpu"})
    device = configure(runtime)
    folders = train_plan(plan, cfg, device)
    started = time.perf_counter()
    log_runs_safely(folders, cfg.tracking, cfg.profile)
    STAGE_TIMING["logging_s"] = STAGE_TIMING.get("logging_s", 0.0) + time.perf_counter() - started
    STAGE_TIMING["workers"] = worker_count(cfg, max(1, len(folders)))
    if is_main():
        write_stage_metrics(RUNS, STAGES[stage].records, stage_metrics(stage))
    return folders
