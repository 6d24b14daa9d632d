"""Per-run records: the source of truth for every training run.

A run writes ``reports/runs/<stage>/<variant>/seed=<n>/record.json`` (params, tags,
metrics, cost, confusion matrix) and ``history.csv`` (one row per epoch). MLflow is
fed from these files, so a run restored by DVC's run-cache, or one whose logging
failed, can still be logged later by :func:`finch.tracking.sync`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

from finch.io import read_json, write_json, write_text

RECORD = "record.json"
HISTORY = "history.csv"


def run_key(stage: str, variant: str, seed: int, params_hash: str) -> str:
    """Identity of one run: same stage, variant, seed and settings → same key."""
    blob = json.dumps([stage, variant, seed, params_hash])
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def run_dir(runs_root: Path, stage: str, variant: str, seed: int) -> Path:
    return Path(runs_root) / stage / variant / f"seed={seed}"


def run_name(stage: str, variant: str, seed: int) -> str:
    return f"{stage}/seed={seed}" if variant == "default" else f"{stage}/{variant}/seed={seed}"


@dataclass
class RunRecord:
    path: Path
    data: dict
    history: list[dict]

    @property
    def key(self) -> str:
        return self.data["run_key"]


def write_record(folder: Path, record: dict, history: list[dict]) -> None:
    write_json(folder / RECORD, record)
    buf = io.StringIO()
    if history:
        writer = csv.DictWriter(buf, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)
    write_text(folder / HISTORY, buf.getvalue())


def read_record(folder: Path) -> RunRecord:
    data = read_json(folder / RECORD)
    history = []
    hist_path = folder / HISTORY
    if hist_path.is_file():
        with hist_path.open() as f:
            history = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]
    return RunRecord(path=folder, data=data, history=history)


def find_records(runs_root: Path | str) -> list[RunRecord]:
    """Every run record under ``runs_root``, in a stable order."""
    root = Path(runs_root)
    return [read_record(p.parent) for p in sorted(root.glob(f"*/*/seed=*/{RECORD}"))]
