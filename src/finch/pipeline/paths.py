"""Where the stages read and write (relative to the repository root), and content hashes of
the files one stage hands to the next."""

from __future__ import annotations

import hashlib
from pathlib import Path

from finch.pipeline import table

PREPARED = Path("data/prepared")
FEATURES = Path("data/features")
SYNTHETIC = Path("data/synthetic")
MODELS = Path("models")
GAN_DIR = MODELS / "gan"
RUNS = Path("reports/runs")
REPORTS = Path("reports")
METRICS = REPORTS / "metrics"  # <dvc stage>.json: each training stage's means per variant (dvc.yaml `metrics:`)
BACKBONE = Path(table.BACKBONE)
VIT_BACKBONE = Path(table.VIT_BACKBONE)


def teacher_weights(seed: int) -> Path:
    return MODELS / "teacher" / "default" / f"seed={seed}.safetensors"


def probe_weights(seed: int) -> Path:
    return MODELS / "finetune" / "linear_probe" / f"seed={seed}.safetensors"


def stage_metrics(stage: str) -> Path:
    """The metrics file of DVC stage ``stage`` (its row's ``metrics``)."""
    (path,) = table.STAGES[stage].metrics
    return Path(path)


def file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
