"""Where a cold default study's time goes, per stage: start-up, training, validation, test, logging.

From the last `dvc repro` (run it cold: `dvc repro --force`): each stage's reports/timing/<stage>.json
(process start-up, wall time, MLflow logging, workers) and its runs' records (train-loop, validation
and test seconds of every run, summed: with several workers these overlap, so they can exceed the
wall time). Runs with budgets (wsd) also spend time in their decay branches (training and
testing each shorter budget): their records' ``branch_time_s``, apart from the validation column.
"""

from __future__ import annotations

import json
from pathlib import Path

from finch.runs import find_records

ORDER = [
    "prepare", "floors", "pretrain", "train_teacher", "train_student", "extract_features", "finetune",
    "train_gan", "generate", "train_augmented", "ablation", "explain", "aggregate",
]  # fmt: skip
RECORD_STAGE = {"pretrain": "pretrain", "train_teacher": "teacher", "train_student": "student",
                "finetune": "finetune", "train_augmented": "augmented", "ablation": "ablation"}  # fmt: skip


def stage_table(reports: Path = Path("reports")) -> tuple[list[str], float]:
    """Markdown rows of the per-stage table and the study's total wall time (the stages' sum)."""
    timings = {
        json.loads(p.read_text())["stage"]: json.loads(p.read_text()) for p in (reports / "timing").glob("*.json")
    }
    records = find_records(reports / "runs")
    rows = [
        "| stage | wall (s) | start-up (s) | workers | runs | train loop (run-s) | validation (run-s) | test (run-s) "
        "| decay branches (run-s) | MLflow logging (s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    total = 0.0
    for stage in sorted(timings, key=lambda s: ORDER.index(s) if s in ORDER else len(ORDER)):
        t = timings[stage]
        total += t["wall_s"]
        recs = [r for r in records if r.stage == RECORD_STAGE.get(stage)]
        cost = lambda key, recs=recs: sum(r.cost.get(key, 0.0) for r in recs)  # noqa: E731
        branches = cost("branch_time_s")
        cells = [f"{t['wall_s']:.0f}", f"{t['startup_s']:.1f}", str(t.get("workers", 1)), str(len(recs))]
        if recs:
            cells += [
                f"{cost('train_loop_time_s'):.0f}",
                f"{cost('validate_time_s'):.0f}",
                f"{cost('test_time_s'):.0f}",
            ]
        else:
            cells += ["—", "—", "—"]
        cells += [f"{branches:.0f}" if branches else "—", f"{t['logging_s']:.1f}" if "logging_s" in t else "—"]
        rows.append(f"| {stage} | " + " | ".join(cells) + " |")
    rows.append(f"| **total** | **{total:.0f}** ({total / 60:.1f} min) | | | | | | | | |")
    return rows, total


if __name__ == "__main__":  # python benchmarks/study_time.py [REPORTS_FOLDER, e.g. reports/fmnist_gpu]
    import sys

    print("\n".join(stage_table(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("reports"))[0]))
