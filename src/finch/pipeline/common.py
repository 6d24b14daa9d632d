"""What every stage process shares: output paths, hashing, and the stage entry point.

Each stage's work lives in its own module of this package (``finch.pipeline.<stage>``), so
that dvc.yaml can make a stage depend on exactly its own code.
"""

from __future__ import annotations

import hashlib
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path

from finch.config import FinchConfig, load_params
from finch.errors import USER_ERRORS

log = logging.getLogger("finch")
STAGE_TIMING: dict[str, float] = {}  # what a stage measures of itself (e.g. logging_s), added to its timing file

PREPARED = Path("data/prepared")
FEATURES = Path("data/features")
MODELS = Path("models")
RUNS = Path("reports/runs")
REPORTS = Path("reports")
METRICS = REPORTS / "metrics"  # <dvc stage>.json: each training stage's means per variant (dvc.yaml `metrics:`)
BACKBONE = MODELS / "pretrain" / "backbone.safetensors"
VIT_BACKBONE = MODELS / "pretrain" / "vit_backbone.safetensors"


def teacher_weights(seed: int) -> Path:
    return MODELS / "teacher" / "default" / f"seed={seed}.safetensors"


def probe_weights(seed: int) -> Path:
    return MODELS / "finetune" / "linear_probe" / f"seed={seed}.safetensors"


def file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def run_training_stage(plan, cfg: FinchConfig, stage: str, metrics_file: Path) -> list[Path]:
    """A training stage's whole work: its plan's runs (over ``runtime.workers`` processes, see
    :mod:`finch.runner`), one MLflow upload of their records (both timed for the stage's timing
    file), and the stage's metrics file (``dvc exp show``): means per variant of the records of
    ``stage``."""
    from finch.distributed import is_main
    from finch.runner import train_plan, worker_count
    from finch.runs import write_stage_metrics
    from finch.tracking import log_runs_safely
    from finch.train.runtime import configure

    device = configure(cfg.runtime)
    folders = train_plan(plan, cfg, device)
    started = time.perf_counter()
    log_runs_safely(folders, cfg.tracking, cfg.profile)
    STAGE_TIMING["logging_s"] = STAGE_TIMING.get("logging_s", 0.0) + time.perf_counter() - started
    STAGE_TIMING["workers"] = worker_count(cfg, max(1, len(folders)))
    if is_main():
        write_stage_metrics(RUNS, stage, metrics_file)
    return folders


def run_stage(
    name: str,
    fn: Callable[[FinchConfig], None],
    imports: tuple[str, ...] = (),
    params: str = "params.yaml",
    imports_when: Callable[[FinchConfig], bool] | None = None,
) -> None:
    """Entry point of a stage process: logging, params, clean errors, timing.

    ``imports`` are the heavy modules the stage uses, imported right after the parameters are
    read so that the start-up time written to ``reports/timing/<stage>.json`` includes them;
    with ``imports_when``, only when it says the parameters give the stage work to do.
    """
    import importlib

    from finch.io import write_json

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_params(params)  # a bad params.yaml fails here, before any heavy import
        for module in imports if imports_when is None or imports_when(cfg) else ():
            if module != "mlflow" or cfg.tracking.enabled:  # tracking off: MLflow is never imported
                importlib.import_module(module)
        started = time.time()
        startup_s = _seconds_since_process_start()
        fn(cfg)
    except USER_ERRORS as err:
        print(f"\nfinch {name}: error: {err}", file=sys.stderr)
        sys.exit(2)
    distributed = sys.modules.get("finch.distributed")  # imported by configure() where torch is used
    if distributed is not None:
        main = distributed.is_main()
        distributed.shutdown()
        if not main:  # under torchrun, rank 0 alone writes
            return
    write_json(
        REPORTS / "timing" / f"{name}.json",
        {
            "stage": name,
            "startup_s": round(startup_s, 3),
            "wall_s": round(startup_s + time.time() - started, 3),
            **{k: round(v, 3) for k, v in STAGE_TIMING.items()},
        },
    )


def _seconds_since_process_start() -> float:
    """Interpreter start plus imports so far (the cost every stage process pays)."""
    import psutil

    return time.time() - psutil.Process().create_time()
