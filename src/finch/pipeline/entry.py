"""The entry point of every stage process: ``stages/X.py`` calls :func:`run_stage` with
``finch.pipeline.X``, whose ``run(cfg)`` does the work.

It reads the parameters (a bad params.yaml fails here, before any heavy import), imports the
stage's heavy modules (its row in :mod:`finch.pipeline.table`) so that start-up is timed as
start-up, turns user errors into one clean message, and writes ``reports/timing/X.json``.
"""

from __future__ import annotations

import importlib
import logging
import sys
import time
from collections.abc import Callable
from types import ModuleType

from finch.config import FinchConfig, load_params
from finch.errors import USER_ERRORS
from finch.pipeline.table import STAGES

STAGE_TIMING: dict[str, float] = {}  # what a stage measures of itself (e.g. logging_s), added to its timing file


def run_stage(module: ModuleType, params: str = "params.yaml") -> None:
    """Run stage ``module`` (``finch.pipeline.<stage>``): its ``run(cfg)``; a module-level
    ``has_work(cfg)``, where it has one, says whether the heavy imports are needed at all."""
    from finch.io import write_json

    name = module.__name__.rpartition(".")[2]
    stage = STAGES[name]
    run: Callable[[FinchConfig], None] = module.run
    has_work: Callable[[FinchConfig], bool] | None = getattr(module, "has_work", None)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_params(params)
        for heavy in stage.imports if has_work is None or has_work(cfg) else ():
            if heavy != "mlflow" or cfg.tracking.enabled:  # tracking off: MLflow is never imported
                importlib.import_module(heavy)
        started = time.time()
        startup_s = _seconds_since_process_start()
        run(cfg)
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
        stage.timing,
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
