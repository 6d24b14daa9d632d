"""Data files for ``dvc plots``: mean learning curves per study and accuracy per variant.

dvc.yaml's top-level ``plots`` point at these, so ``dvc plots show`` renders them and
``dvc plots diff`` compares them across commits or experiments.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from finch.io import write_with
from finch.report.studies import study
from finch.runs import RunKind, RunRecord


def mean_curves(records: list[RunRecord], stage: str) -> pd.DataFrame:
    """Wide table: ``budget``, then one column per variant with its mean over seeds: with budgets
    (wsd), the test accuracy at each budget (optimizer steps); otherwise the validation accuracy
    per epoch (epochs every seed reached)."""
    budgeted: dict[str, dict[int, list[float]]] = {}
    for rec in records:
        if rec.stage == stage and rec.kind == RunKind.CLASSIFIER and rec.budgets:
            for row in rec.budgets:
                budgeted.setdefault(rec.variant, {}).setdefault(int(row["steps"]), []).append(row["test_accuracy"])
    if budgeted:
        steps = sorted({s for by_steps in budgeted.values() for s in by_steps})
        table = pd.DataFrame({"budget": steps})
        for variant, by_steps in sorted(budgeted.items()):
            table[variant] = [float(np.mean(by_steps[s])) if s in by_steps else np.nan for s in steps]
        return table
    by_variant: dict[str, list[RunRecord]] = {}
    for rec in records:
        if rec.stage == stage and rec.kind == RunKind.CLASSIFIER and rec.history and "val_accuracy" in rec.history[0]:
            by_variant.setdefault(rec.variant, []).append(rec)
    if not by_variant:
        return pd.DataFrame()
    n = max(min(len(r.history) for r in recs) for recs in by_variant.values())
    table = pd.DataFrame({"budget": np.arange(1, n + 1)})
    for variant, recs in sorted(by_variant.items()):
        reached = min(len(r.history) for r in recs)
        values = [float(np.mean([r.history[i]["val_accuracy"] for r in recs])) for i in range(reached)]
        table[variant] = pd.Series(values + [np.nan] * (n - reached))
    return table


def accuracy_by_variant(summary: pd.DataFrame, metric: str = "accuracy") -> pd.DataFrame:
    """Long table: one row per (stage, variant) with the mean and t interval of ``metric``, for
    the studies tested on the target task (see :class:`finch.report.studies.Study`)."""
    on_target = summary.stage.map(lambda stage: study(stage).target_task)
    rows = summary[(summary.metric == metric) & on_target]
    out = pd.DataFrame(
        {
            "variant": rows.stage + "/" + rows.variant,
            metric: rows["mean"],
            "t_low": rows.t_low,
            "t_high": rows.t_high,
            "n": rows.n,
        }
    )
    return out.reset_index(drop=True)


def write_plot_data(records: list[RunRecord], summary: pd.DataFrame, out: Path) -> list[Path]:
    """reports/plots/accuracy.csv and reports/plots/curves_<stage>.csv; return the paths."""
    out = Path(out)
    written = []
    acc = accuracy_by_variant(summary)
    path = out / "accuracy.csv"
    write_with(path, lambda tmp: acc.to_csv(tmp, index=False, float_format="%.6g"))
    written.append(path)
    for stage in sorted({r.stage for r in records}):
        curves = mean_curves(records, stage)
        if not curves.empty:
            path = out / f"curves_{stage}.csv"
            write_with(path, lambda tmp, c=curves: c.to_csv(tmp, index=False, float_format="%.6g"))
            written.append(path)
    return written
