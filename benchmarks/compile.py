"""torch.compile vs eager: end-to-end training time of the default study's models, compile time included.

``torch.compile`` would become an opt-in (``runtime.compile``) only if it is faster end to end.
Each model trains ``epochs`` epochs through the engine (``fit``) with the study's thread count,
eagerly and after ``model.compile()`` (inductor, CPU), on the default profile's data. Wall time
covers everything ``fit`` does: compilation (first steps, the last partial batch, validation's
batch size; inductor's disk cache starts empty), training and validation. Ratio = eager wall /
compiled wall (> 1: compile pays), the lower of teacher and student; the detail also gives what
the study's own epoch counts would cost, from the measured compile overhead and steady per-epoch
times.
"""

from __future__ import annotations

import multiprocessing
import time

from parallel_runs import workload


def _run(model_kind: str, compiled: bool, epochs: int, seed: int = 0) -> dict:
    import os
    import tempfile

    import torch

    from finch.config import load_params
    from finch.train.engine import fit

    model, recipe, objective, data = workload(model_kind, load_params().runtime.threads, seed)
    study_epochs = recipe.epochs
    recipe = recipe.model_copy(update={"epochs": epochs})
    # a cold compile, as a user's first run pays it: inductor's on-disk caches (kernels, FX graphs)
    # from an earlier measurement would hide most of the compile time
    with tempfile.TemporaryDirectory(prefix="finch-inductor-") as cache:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
        if compiled:
            model.compile()
        start = time.perf_counter()
        result = fit(model, data, recipe, seed=seed, device=torch.device("cpu"), objective=objective, progress=False)
        wall = time.perf_counter() - start
    epoch_s = [row["epoch_time_s"] for row in result.history if "epoch_time_s" in row]
    return {"wall": wall, "epoch_s": epoch_s, "study_epochs": study_epochs}


def _in_fresh_process(*args) -> dict:
    context = multiprocessing.get_context("spawn")  # a fresh process: no compile cache shared in memory
    with context.Pool(1) as pool:
        return pool.apply(_run, args)


def measure(epochs: int = 4) -> dict:
    ratios, details = [], []
    for kind in ("teacher", "student"):
        eager = _in_fresh_process(kind, False, epochs)
        comp = _in_fresh_process(kind, True, epochs)
        ratios.append(eager["wall"] / comp["wall"])
        steady_eager = sorted(eager["epoch_s"][1:])[len(eager["epoch_s"][1:]) // 2] if eager["epoch_s"] else 0
        steady_comp = sorted(comp["epoch_s"][1:])[len(comp["epoch_s"][1:]) // 2] if comp["epoch_s"] else 0
        overhead = comp["wall"] - steady_comp * epochs
        n = eager["study_epochs"]
        at_study = (steady_eager * n) / (overhead + steady_comp * n) if steady_comp else float("nan")
        details.append(
            f"{kind}: {epochs} epochs eager {eager['wall']:.0f} s, compiled {comp['wall']:.0f} s "
            f"(steady epoch {steady_eager:.1f} s vs {steady_comp:.1f} s; at the study's {n} epochs "
            f"eager/compiled ≈ {at_study:.2f})"
        )
    ratio = min(ratios)
    return {
        "name": "torch.compile vs eager, end to end with compile time (eager wall / compiled wall)",
        "ratio": ratio,
        "target": "> 1 to offer runtime.compile",
        "ok": ratio > 1,
        "detail": "; ".join(details) + " (1 torch thread, default profile's models and data)",
    }


if __name__ == "__main__":
    print(measure())
