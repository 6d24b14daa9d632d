"""A stage's runs (every seed of every variant) spread over worker processes.

On a small CPU, small models are overhead-bound: two single-threaded processes side by side
train more images per second than one process with two threads. A stage therefore describes
its work as a *plan* (a module-level function ``plan(cfg, device) -> list[PlannedVariant]``),
and :func:`train_plan` runs each (variant, seed) once, in ``runtime.workers`` processes with
``runtime.threads`` torch threads each.

A run's numbers depend only on its own settings, seed and thread count: each run seeds every
generator itself, and nothing is shared between runs but read-only inputs. So the same
``threads`` gives the same numbers with 1 worker or 32, in any order. Each worker rebuilds the
plan from its function (processes are spawned, not forked: torch's thread pools do not survive
a fork), writes its runs' weights and records, and returns the test probabilities; the parent
writes the seed ensembles and logs MLflow, so there is one writer to the tracking store.
Under ``torchrun`` (DDP), the ranks already share each run, so workers is 1.
"""

from __future__ import annotations

import importlib
import logging
import multiprocessing
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import torch

from finch import distributed
from finch.config import FinchConfig
from finch.data.splits import TaskData
from finch.runs import run_name
from finch.study import Variant, finish_variant, longer_run, train_run

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PlannedVariant:
    """One variant of a stage, the data it trains on, its seeds and where its weights go."""

    variant: Variant
    data: TaskData
    seeds: list[int]
    models_root: Path
    runs_root: Path = field(default=Path("reports/runs"))
    needs: tuple[str, ...] = ()  # variants of the same plan whose run of the same seed must finish first
    check_convergence: bool = True  # also train the first seed with a longer schedule (config.convergence)


Plan = Callable[[FinchConfig, torch.device], list[PlannedVariant]]


def plan_reference(plan: Plan) -> str:
    """``module:function`` of a plan, so a spawned worker can rebuild it."""
    ref = f"{plan.__module__}:{plan.__qualname__}"
    if "<" in plan.__qualname__ or plan.__module__ == "__main__":
        raise ValueError(f"{ref}: a plan must be a module-level function of an importable module")
    return ref


def resolve_plan(ref: str) -> Plan:
    module, name = ref.split(":")
    return getattr(importlib.import_module(module), name)


def worker_count(cfg: FinchConfig, runs: int) -> int:
    """``runtime.workers``, at most one per run; 1 under torchrun."""
    if distributed.world_size() > 1:
        return 1
    return max(1, min(cfg.runtime.workers, runs))


def train_plan(plan: Plan, cfg: FinchConfig, device: torch.device) -> list[Path]:
    """Train every (variant, seed) of ``plan``; write the ensembles; return the record folders
    (in plan order). Finished runs keep their records if another fails; a killed run resumes
    from its checkpoint on the next call."""
    planned = plan(cfg, device)
    # (variant, seed, longer): every seed, plus the convergence check's longer run of the first seed
    runs = [(i, seed, False) for i, pv in enumerate(planned) for seed in pv.seeds]
    if cfg.convergence.enabled:  # the longest runs first, so no worker idles at the end waiting for one
        runs = [(i, pv.seeds[0], True) for i, pv in enumerate(planned) if pv.check_convergence] + runs
    workers = worker_count(cfg, len(runs))
    log.info("%d run(s) in %d process(es) x %d torch thread(s)", len(runs), workers, cfg.runtime.threads)
    started = time.perf_counter()
    results: dict[tuple[int, int, bool], tuple[Path | None, object]] = {}

    def done(run: tuple[int, int, bool], result) -> None:
        results[run] = result
        i, seed, longer = run
        pv = planned[i]
        log.info(
            "[%d/%d] %s%s done (%.0f s into the stage)",
            len(results),
            len(runs),
            run_name(pv.variant.stage, pv.variant.name, seed),
            f" x{cfg.convergence.factor:g} schedule" if longer else "",
            time.perf_counter() - started,
        )

    names = {pv.variant.name: i for i, pv in enumerate(planned)}
    for pv in planned:
        unknown = [n for n in pv.needs if n not in names]
        if unknown:
            raise ValueError(f"{pv.variant.stage}/{pv.variant.name} needs {unknown}, which this stage does not train")

    def ready(run: tuple[int, int, bool]) -> bool:
        i, seed, _ = run
        return all((names[n], seed, False) in results for n in planned[i].needs)

    waiting = list(runs)  # a run starts once the runs it needs are done
    if workers == 1:
        while waiting:
            run = next(r for r in waiting if ready(r))
            waiting.remove(run)
            done(run, _train(planned, run, cfg, device))
    else:
        context = multiprocessing.get_context("spawn")
        pool = ProcessPoolExecutor(
            workers, mp_context=context, initializer=_start_worker, initargs=(plan_reference(plan), cfg.model_dump())
        )
        try:
            futures: dict = {}
            while waiting or futures:
                for run in [r for r in waiting if ready(r)]:
                    waiting.remove(run)
                    futures[pool.submit(_train_in_worker, run)] = run
                if not futures:
                    raise ValueError(f"runs {waiting} wait for runs that never come: check the plan's needs")
                finished, _ = wait(futures, return_when=FIRST_COMPLETED)
                for future in finished:
                    run = futures.pop(future)
                    folder, probs = future.result()  # a failed run raises here
                    done(run, (Path(folder) if folder else None, probs))
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    folders = []
    distributed.barrier()
    for i, pv in enumerate(planned):
        outcome = [results[(i, seed, False)] for seed in pv.seeds]
        folders += [folder for folder, _ in outcome if folder is not None]
        if distributed.is_main():
            finish_variant(pv.variant, pv.data, pv.seeds, [probs for _, probs in outcome], cfg, pv.runs_root)
    return folders


# --- in the worker processes -------------------------------------------------------------
_WORKER: dict = {}


def _start_worker(plan_ref: str, cfg_data: dict) -> None:
    from finch.train.runtime import configure

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = FinchConfig.model_validate(cfg_data)
    device = configure(cfg.runtime)
    _WORKER.update(cfg=cfg, device=device, planned=resolve_plan(plan_ref)(cfg, device))


def _train_in_worker(run: tuple[int, int, bool]) -> tuple[str | None, object]:
    folder, probs = _train(_WORKER["planned"], run, _WORKER["cfg"], _WORKER["device"])
    return (str(folder) if folder else None), probs


def _train(planned: list[PlannedVariant], run: tuple[int, int, bool], cfg: FinchConfig, device) -> tuple:
    """One run: a seed of a variant (folder, test probabilities), or its longer run (path, None)."""
    i, seed, longer = run
    pv = planned[i]
    if longer:
        return longer_run(pv.variant, pv.data, seed, cfg.convergence.factor, cfg, device, pv.runs_root), None
    return train_run(pv.variant, pv.data, seed, cfg, device, pv.runs_root, pv.models_root)
