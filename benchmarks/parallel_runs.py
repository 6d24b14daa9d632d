"""Runs side by side vs one run with every core: training throughput of the default study's models.

On a small CPU the default study's models are overhead-bound: ``runtime.workers`` processes
with ``runtime.threads`` torch threads each train more images per second, summed, than one
process with all the threads. Measured with the engine itself (``fit``'s train images/s, which
excludes validation): one process with ``cores`` threads, then ``cores`` processes with one
thread each at the same time (spawned, as the runner does), same model, data and recipe.
Ratio = median summed img/s side by side / median img/s of the one process (target ≥ 1.3).

Also one process with one thread alone, which splits the ratio into its two causes:
ratio = cores × (a worker's speed beside the others / alone) / (the one process's gain from its
extra threads). The first says what running side by side costs each run (memory bandwidth, shared
caches); the second how well torch uses more threads for one run of these models on this CPU.
"""

from __future__ import annotations

import multiprocessing
import os
import statistics

from finch.config import load_params


def workload(model_kind: str, threads: int, seed: int):
    """The default profile's ``teacher`` or ``student`` (the ``none`` student: both heads on the
    labels, no teacher) as (model, recipe, objective, data), torch configured with ``threads``."""
    from finch.config import load_params
    from finch.data.splits import load_task
    from finch.distill import DistillationObjective, build_student
    from finch.models import build_model
    from finch.train.runtime import configure, seed_everything

    cfg = load_params()
    configure(cfg.runtime.model_copy(update={"threads": threads}))
    data = load_task("data/prepared", "target")
    seed_everything(seed)
    if model_kind == "student":
        sc = cfg.student
        model, recipe = build_student(sc, "none", data.num_classes, data.in_chans), sc.recipe
        objective = DistillationObjective(recipe.loss, data.num_classes, recipe.augment.mixing, "none", sc, None)
        return model, recipe, objective, data
    return build_model(cfg.teacher.model, data.num_classes, data.in_chans), cfg.teacher.recipe, None, data


def _throughput(model_kind: str, threads: int, epochs: int, seed: int) -> float:
    import torch

    from finch.train.engine import fit

    model, recipe, objective, data = workload(model_kind, threads, seed)
    recipe = recipe.model_copy(update={"epochs": epochs})
    result = fit(model, data, recipe, seed=seed, device=torch.device("cpu"), objective=objective, progress=False)
    return result.train_images_per_s


def side_by_side(model_kind: str, processes: int, threads: int, epochs: int) -> float:
    """Summed train img/s of ``processes`` spawned processes training at the same time."""
    context = multiprocessing.get_context("spawn")
    with context.Pool(processes) as pool:
        rates = pool.starmap(_throughput, [(model_kind, threads, epochs, seed) for seed in range(processes)])
    return float(sum(rates))


def measure(epochs: int = 3, rounds: int = 3) -> dict:
    """Alternate the two set-ups ``rounds`` times and compare medians: on a shared VM (CPU steal)
    one measurement of each can be off by tens of percent either way."""
    cfg = load_params()
    cores = max(2, min(os.cpu_count() or 2, cfg.runtime.workers * cfg.runtime.threads))
    details, ratios = [], []
    for kind in ("teacher", "student"):
        ones, manys, alones = [], [], []
        for _ in range(rounds):
            ones.append(side_by_side(kind, 1, cores, epochs))
            manys.append(side_by_side(kind, cores, 1, epochs))
            alones.append(side_by_side(kind, 1, 1, epochs))
        one, many, alone = statistics.median(ones), statistics.median(manys), statistics.median(alones)
        ratios.append(many / one)
        details.append(
            f"{kind}: 1 x {cores} threads {one:.0f} img/s, {cores} x 1 thread {many:.0f} img/s "
            f"(medians of {', '.join(f'{v:.0f}' for v in ones)} and {', '.join(f'{v:.0f}' for v in manys)}); "
            f"1 x 1 thread alone {alone:.0f} img/s, so each worker runs at {many / cores / alone:.0%} of its "
            f"speed alone and one process gains {one / alone:.2f}x from {cores} threads"
        )
    ratio = min(ratios)
    return {
        "name": "runs side by side vs one process (train img/s, lower of teacher and student)",
        "ratio": ratio,
        "target": "≥ 1.3",
        "ok": ratio >= 1.3,
        "detail": f"{'; '.join(details)} ({epochs} epochs each, {rounds} alternating rounds, "
        "default profile's models and data)",
    }


if __name__ == "__main__":
    print(measure())
