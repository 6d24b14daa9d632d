"""A stage's runs (every seed of every variant) spread over worker processes.

On a small CPU, small models are overhead-bound: two single-threaded processes side by side
train more images per second than one process with two threads. A stage therefore describes
its work as a *plan* (a module-level function ``plan(cfg, device) -> list[PlannedVariant]``);
:func:`plan_runs` turns it into :class:`~finch.study.Run` s (every seed of every variant), and
:func:`train_planned` carries each out once with
:func:`finch.study.execute`, in this process, in ``runtime.workers`` processes with
``runtime.threads`` torch threads each, or as SLURM jobs (``runtime.executor: slurm``,
:mod:`finch.cluster`): one scheduling loop in every case.

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
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch

from finch import distributed
from finch.config import FinchConfig
from finch.data.splits import TaskData
from finch.runs import run_name
from finch.study import Run, Variant, execute, finish_variant, study_run

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


def plan_runs(planned: list[PlannedVariant], cfg: FinchConfig) -> list[Run]:
    """Every seed of every variant (a recipe with budgets tests each of them within its one run)."""
    return [study_run(pv.variant, seed) for pv in planned for seed in pv.seeds]


def train_plan(plan: Plan, cfg: FinchConfig, device: torch.device) -> list[Path]:
    """Train every run of ``plan`` (see :func:`train_planned`); workers rebuild the plan from
    its function."""
    return train_planned(plan(cfg, device), cfg, device, plan)


def train_planned(
    planned: list[PlannedVariant], cfg: FinchConfig, device: torch.device, plan: Plan | None = None
) -> list[Path]:
    """Carry out every run of ``planned`` (:func:`plan_runs`); write the seed ensembles; return
    the record folders (in plan order). A run starts once the runs it needs are done. With more
    than one worker, ``plan`` (an importable function) rebuilds ``planned`` in each. Finished
    runs keep their records if another fails; a killed run resumes from its checkpoint on the
    next call."""
    by_name = {pv.variant.name: pv for pv in planned}
    for pv in planned:
        unknown = [n for n in pv.needs if n not in by_name]
        if unknown:
            raise ValueError(f"{pv.variant.stage}/{pv.variant.name} needs {unknown}, which this stage does not train")
    runs = plan_runs(planned, cfg)
    if cfg.runtime.executor == "slurm":
        from finch.cluster import ClusterTask, SubmititPool, describe

        if plan is None:
            raise ValueError("runtime.executor slurm needs the plan's function (train_plan) to rebuild it in each job")
        log.info("%d run(s) as SLURM jobs: %s", len(runs), describe(cfg))
        names = {r.id: run_name(by_name[r.variant].variant.stage, r.variant, r.seed) for r in runs}
        pool = SubmititPool(cfg, ClusterTask(plan_reference(plan), cfg.model_dump()), names)
        submit = pool.submit_many
    else:
        workers = worker_count(cfg, len(runs))
        log.info("%d run(s) in %d process(es) x %d torch thread(s)", len(runs), workers, cfg.runtime.threads)
        if workers == 1:
            pool, task = _InThisProcess(), partial(_execute, by_name, cfg, device)
        else:
            if plan is None:
                raise ValueError(
                    "runtime.workers > 1 needs the plan's function (train_plan) to rebuild it in each worker"
                )
            context = multiprocessing.get_context("spawn")
            initargs = (plan_reference(plan), cfg.model_dump())
            pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker, initargs=initargs)
            task = _execute_in_worker

        def submit(ready_runs: list[Run]) -> list[Future]:
            return [pool.submit(task, run) for run in ready_runs]

    started = time.perf_counter()
    results: dict[tuple, tuple[Path | None, object]] = {}

    def ready(run: Run) -> bool:
        return all((need, run.seed) in results for need in by_name[run.variant].needs)

    try:
        waiting, futures = list(runs), {}
        while waiting or futures:
            ready_runs = [r for r in waiting if ready(r)]
            for run in ready_runs:
                waiting.remove(run)
            futures.update(zip(submit(ready_runs), ready_runs, strict=True) if ready_runs else ())
            if not futures:
                raise ValueError(
                    f"runs {[r.id for r in waiting]} wait for runs that never come: check the plan's needs"
                )
            finished, _ = wait(futures, return_when=FIRST_COMPLETED)
            for future in finished:
                run = futures.pop(future)
                folder, probs = future.result()  # a failed run raises here
                results[run.id] = (Path(folder) if folder else None, probs)
                pv = by_name[run.variant]
                log.info(
                    "[%d/%d] %s done (%.0f s into the stage)",
                    len(results),
                    len(runs),
                    run_name(pv.variant.stage, pv.variant.name, run.seed),
                    time.perf_counter() - started,
                )
    finally:
        pool.shutdown(wait=True, cancel_futures=True)

    folders = []
    distributed.barrier()
    for pv in planned:
        outcome = [results[(pv.variant.name, seed)] for seed in pv.seeds]
        folders += [folder for folder, _ in outcome if folder is not None]
        if distributed.is_main():
            finish_variant(pv.variant, pv.data, pv.seeds, [probs for _, probs in outcome], cfg, pv.runs_root)
    return folders


class _InThisProcess(Executor):
    """The worker pool's interface, run here and now: one worker without a process."""

    def submit(self, fn, /, *args, **kwargs) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as err:  # raised by future.result(), as from a worker
            future.set_exception(err)
        return future


def _execute(by_name: dict[str, PlannedVariant], cfg: FinchConfig, device, run: Run) -> tuple[str | None, object]:
    """``run`` of its planned variant (:func:`finch.study.execute`); the folder as text (it crosses processes)."""
    pv = by_name[run.variant]
    folder, probs = execute(run, pv.variant, pv.data, cfg, device, pv.runs_root, pv.models_root)
    return (str(folder) if folder else None), probs


# --- in the worker processes -------------------------------------------------------------
_WORKER: dict = {}


def _start_worker(plan_ref: str, cfg_data: dict) -> None:
    from finch.train.runtime import configure

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = FinchConfig.model_validate(cfg_data)
    device = configure(cfg.runtime)
    planned = resolve_plan(plan_ref)(cfg, device)
    _WORKER.update(cfg=cfg, device=device, by_name={pv.variant.name: pv for pv in planned})


def _execute_in_worker(run: Run) -> tuple[str | None, object]:
    return _execute(_WORKER["by_name"], _WORKER["cfg"], _WORKER["device"], run)
