"""reports/models/: each trained model's parameters per block (total / trainable), from the run records.

Every training run records what it trained (``RunRecord.model_summaries``, with the freezing its
stage applies); one table per stage, variant and model, from the variant's first seed (the seeds
of a variant train the same network), as ``<name>.md`` and all of them in ``summary.json``
(name → summary).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from finch.io import atomic_dir
from finch.report.studies import stage_order, study
from finch.runs import RunRecord

SUMMARY_FILE = "summary.json"


def table_name(stage: str, variant: str, model: str) -> str:
    """``teacher``, ``finetune_linear_probe``, ``gan_generator``: stage, then variant and model
    where they say something (not ``default``, not a classifier's one ``model``)."""
    return "_".join([stage] + [p for p in (variant, model) if p not in ("default", "model")])


def _note(rec: RunRecord, model: str) -> str:
    where = f"variant `{rec.variant}`, " if rec.variant != "default" else ""
    what = "" if model == "model" else f" ({model})"
    note = f"{study(rec.stage).title}{what}: stage `{rec.stage}`, {where}seed {rec.seed}'s run."
    if rec.kfold:
        note += (
            f" One of the {rec.kfold['k']} fold models of this k-fold run: they are alike, and the run's "
            "`params_total` counts all of them."
        )
    return note


def model_summaries(records: list[RunRecord]) -> dict[str, tuple[str, dict]]:
    """name (:func:`table_name`) → (what it is, its summary) of each stage, variant and model,
    from the variant's first seed, in the report's study order. Records without summaries
    (written before runs recorded them) give none."""
    first: dict[tuple[str, str], RunRecord] = {}
    for rec in records:
        known = first.get((rec.stage, rec.variant))
        if rec.model_summaries and (known is None or rec.seed < known.seed):
            first[rec.stage, rec.variant] = rec
    out = {}
    for (stage, variant), rec in sorted(first.items(), key=lambda kv: (stage_order(kv[0][0]), kv[0][1])):
        for model, summary in rec.model_summaries.items():
            out[table_name(stage, variant, model)] = (_note(rec, model), summary)
    return out


def summary_markdown(name: str, summary: dict[str, Any], note: str = "") -> str:
    """A summary from :func:`finch.model_summary.summarize` as a markdown section: totals, then
    one row per block."""
    total, trainable = summary["total"], summary["trainable"]
    share = trainable / total if total else 0.0
    lines = [
        f"# {name}",
        "",
        *([note, ""] if note else []),
        f"`{summary['model']}`: **{total:,}** parameters, **{trainable:,}** trainable ({share:.1%}), "
        f"{summary['frozen']:,} frozen.",
        "",
    ]
    outside = summary.get("frozen_outside", 0)
    if outside:
        lines += [
            f"It trains on cached features of a frozen backbone: that backbone's {outside:,} parameters are "
            "not in this table; the run's `params_total` counts them.",
            "",
        ]
    lines += [
        "| layer | type | parameters | trainable |",
        "|---|---|---:|---:|",
    ]
    lines += [f"| `{r['name']}` | {r['type']} | {r['params']:,} | {r['trainable']:,} |" for r in summary["layers"]]
    lines.append(f"| **total** | | **{total:,}** | **{trainable:,}** |")
    return "\n".join(lines) + "\n"


def write_model_tables(records: list[RunRecord], folder: Path) -> dict[str, tuple[str, dict]]:
    """``<name>.md`` per model and ``summary.json`` (name → summary) in ``folder``, replaced whole;
    returns what was written (:func:`model_summaries`)."""
    summaries = model_summaries(records)
    with atomic_dir(folder) as tmp:
        for name, (note, summary) in summaries.items():
            (tmp / f"{name}.md").write_text(summary_markdown(name, summary, note))
        data = {name: summary for name, (_, summary) in summaries.items()}
        (tmp / SUMMARY_FILE).write_text(json.dumps(data, indent=2) + "\n")
    return summaries
