"""WSD against cosine at the same budget, on this task's validation split (issue 26, point 1).

For the teacher's CNN (from the pretrained backbone) and the student ViT (variant ``none``, from
scratch), every seed of params.yaml trains

- cosine over the study's schedule (N epochs) and over half of it (N/2), two runs;
- wsd over N epochs with a decay branch at N/2, one run;

each number is the validation accuracy of the model at the end of its schedule (or branch), not
the best epoch. The test split is never read. Writes reports/schedules/runs.csv and table.md
(headed by the data's content hash), which the aggregate puts into results.md for that data.
Run from the repository root after `dvc repro pretrain` (the backbone):
`python scripts/wsd_vs_cosine.py` (~6 min on two cores; `--table` re-renders the table only).
"""

from __future__ import annotations

import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pandas as pd

from finch.config import load_params

OUT = Path("reports/schedules")


def recipes(recipe, steps_per_epoch: int) -> dict:
    """The three schedules of one model at the study's budget (``recipe.epochs``)."""
    epochs = recipe.epochs
    half = epochs // 2
    wsd = recipe.model_copy(
        update={
            "scheduler": recipe.scheduler.model_copy(update={"name": "wsd"}),
            "select_on": "last",
            "budgets": [half * steps_per_epoch, epochs * steps_per_epoch],
        }
    )
    last = {"select_on": "last"}
    return {
        "cosine": recipe.model_copy(update=last),
        "cosine_half": recipe.model_copy(update={**last, "epochs": half}),
        "wsd": wsd,
    }


def one(job: tuple[str, str, int]) -> list[dict]:
    model_name, schedule, seed = job

    from finch.pipeline import train_student, train_teacher
    from finch.train.engine import _batching, fit
    from finch.train.runtime import configure, seed_everything

    cfg = load_params()
    device = configure(cfg.runtime)
    module = train_teacher if model_name == "cnn" else train_student
    planned = module.plan(cfg, device)
    pv = next(p for p in planned if p.variant.name in ("default", "none"))
    variant, data = pv.variant, pv.data
    _, spe = _batching(len(data.train), variant.recipe.batch_size, 1)
    recipe = recipes(variant.recipe, spe)[schedule]
    seed_everything(seed)
    model = variant.build_model(seed)
    objective = variant.objective(data, seed) if variant.objective else None
    start = time.perf_counter()
    result = fit(model, data, recipe, seed=seed, device=device, objective=objective, progress=False, desc=schedule)
    seconds = time.perf_counter() - start
    if schedule == "wsd":
        return [
            {
                "model": model_name,
                "seed": seed,
                "schedule": "wsd",
                "epochs": r["steps"] / spe,
                "steps": r["steps"],
                "val_accuracy": r["val_accuracy"],
                "seconds": seconds,
            }
            for r in result.budgets
        ]
    return [
        {
            "model": model_name,
            "seed": seed,
            "schedule": "cosine",
            "epochs": recipe.epochs,
            "steps": recipe.epochs * spe,
            "val_accuracy": result.history[-1]["val_accuracy"],
            "seconds": seconds,
        }
    ]


def main() -> None:
    """Train every run (or, with --table, only re-render the table from runs.csv)."""
    if "--table" not in sys.argv:
        cfg = load_params()
        jobs = [(m, s, seed) for m in ("cnn", "vit") for s in ("wsd", "cosine", "cosine_half") for seed in cfg.seeds]
        with ProcessPoolExecutor(max_workers=cfg.runtime.workers) as pool:
            rows = [row for rows in pool.map(one, jobs) for row in rows]
        OUT.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(rows).sort_values(["model", "epochs", "schedule", "seed"]).to_csv(OUT / "runs.csv", index=False)
    df = pd.read_csv(OUT / "runs.csv")
    wide = df.pivot_table(index=["model", "epochs", "seed"], columns="schedule", values="val_accuracy").reset_index()
    wide["wsd_minus_cosine"] = wide.wsd - wide.cosine
    table = wide.groupby(["model", "epochs"]).agg(
        seeds=("seed", "count"),
        cosine=("cosine", "mean"),
        wsd=("wsd", "mean"),
        diff=("wsd_minus_cosine", "mean"),
        diff_sd=("wsd_minus_cosine", "std"),
    )
    full = df[df.steps == df.groupby("model").steps.transform("max")]  # the full-length runs' time
    cost = full.groupby(["model", "schedule"]).seconds.mean().unstack()
    lines = [
        "| model | budget (epochs) | seeds | cosine | wsd | wsd − cosine (mean ± SD over seeds) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for (model, epochs), r in table.iterrows():
        diff = f"{r['diff']:+.4f} ± {r.diff_sd:.4f}"
        lines.append(f"| {model} | {epochs:g} | {int(r.seeds)} | {r.cosine:.4f} | {r.wsd:.4f} | {diff} |")
    lines += [
        "",
        "Validation accuracy of the model at the end of each schedule (wsd's shorter budget: its decay branch; "
        "cosine's: a separate run of half the epochs). Training time per run (s, two runs side by side on two cores): "
        + "; ".join(f"{m} cosine {c.cosine:.0f}, wsd with its branch {c.wsd:.0f}" for m, c in cost.iterrows())
        + ".",
    ]
    card = json.loads(Path("data/prepared/card.json").read_text())  # the report shows it for this data only
    header = f"<!-- data: {card['target']['content_hash']} -->"
    (OUT / "table.md").write_text("\n".join([header, *lines]) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
