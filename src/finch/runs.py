"""Per-run records: the source of truth for every training run.

A run writes ``reports/runs/<stage>/<variant>/seed=<n>/record.json`` (identity, tags, params,
metrics, cost, what kind of run it is, its artifacts, its models' parameter summaries) and
``history.csv`` (one row per epoch).
MLflow is fed from these files, so a run restored by DVC's run-cache, or one whose logging
failed, can still be logged later by :func:`finch.tracking.sync`.

:class:`RunRecord` is the one record type: every stage builds it through :meth:`RunRecord.create`,
tracking uploads it, and the report reads it. Its ``kind`` says what the run is (a classifier
with test metrics and a confusion matrix, or a GAN with loss curves), so no reader guesses it
from the keys.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import json
import os
import subprocess
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from finch.errors import ConfigError
from finch.io import read_json, write_json, write_text

RECORD = "record.json"
HISTORY = "history.csv"


class RunKind(StrEnum):
    """What a run is; decides what the report and the tracker do with it."""

    CLASSIFIER = "classifier"  # test metrics, a confusion matrix, validation curves
    GAN = "gan"  # loss curves and sample grids; no test metrics


def run_key(stage: str, variant: str, seed: int, params_hash: str) -> str:
    """Identity of one run: same stage, variant, seed and settings → same key."""
    blob = json.dumps([stage, variant, seed, params_hash])
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def pack_correct(correct) -> str:
    """Per-image right/wrong as hex text (one bit an image, in test-split order)."""
    import numpy as np

    return np.packbits(np.asarray(correct, dtype=bool)).tobytes().hex()


def unpack_correct(text: str, n: int):
    """The boolean array :func:`pack_correct` packed (``n`` images)."""
    import numpy as np

    return np.unpackbits(np.frombuffer(bytes.fromhex(text), dtype=np.uint8), count=n).astype(bool)


def run_dir(runs_root: Path, stage: str, variant: str, seed: int) -> Path:
    return Path(runs_root) / stage / variant / f"seed={seed}"


def run_name(stage: str, variant: str, seed: int) -> str:
    return f"{stage}/seed={seed}" if variant == "default" else f"{stage}/{variant}/seed={seed}"


@functools.cache
def git_commit() -> str:
    """The repository's HEAD commit, or "unknown" outside a git checkout."""
    from finch.io import repo_root

    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, cwd=repo_root())
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


# What DVC tells a stage command run by `dvc exp run` (dvc/repo/experiments/queue/base.py puts
# them in every experiment's run environment, workspace and queue alike; plain `dvc repro` does not).
DVC_EXPERIMENT_ENV = {"dvc.exp_name": "DVC_EXP_NAME", "dvc.exp_baseline_rev": "DVC_EXP_BASELINE_REV"}


def dvc_experiment_tags() -> dict[str, str]:
    """``dvc.exp_name`` and ``dvc.exp_baseline_rev`` under ``dvc exp run``; empty otherwise."""
    return {tag: os.environ[var] for tag, var in DVC_EXPERIMENT_ENV.items() if os.environ.get(var)}


def run_tags(stage: str, variant: str, profile: str, **extra: str) -> dict[str, str]:
    """The tags every Finch run carries in MLflow (seed runs, summaries, the explain run);
    under ``dvc exp run`` also the DVC experiment's name and baseline revision."""
    return {
        "finch.stage": stage,
        "finch.variant": variant,
        "finch.profile": profile,
        "finch.dvc_stage": os.environ.get("DVC_STAGE", "(run outside dvc)"),
        "finch.git_commit": git_commit(),
        **dvc_experiment_tags(),
        **extra,
    }


class RunRecord(BaseModel):
    """One training run: identity, tags, params, metrics, cost, kind and artifacts."""

    model_config = ConfigDict(extra="forbid")

    stage: str
    variant: str
    seed: int
    run_key: str
    run_name: str
    params_hash: str
    kind: RunKind
    params: dict[str, Any]
    tags: dict[str, str]
    metrics: dict[str, float]
    cost: dict[str, float]
    best_epoch: int | None = None
    epochs_run: int | None = None
    stopped_early: bool = False
    class_names: list[str] = Field(default_factory=list)
    confusion: list[list[int]] | None = None
    weights: str | None = None
    artifacts: dict[str, str] = Field(default_factory=dict)  # MLflow folder name → local path
    kfold: dict[str, Any] | None = None
    warnings: list[str] = Field(default_factory=list)
    datasets: list[dict[str, str]] = Field(default_factory=list)  # MLflow dataset inputs (TaskData.dataset_inputs)
    # what the run trained, per model (a classifier: "model"; the GAN: "generator", "discriminator"):
    # finch.model_summary.run_summary, with the stage's freezing; a k-fold run: one fold model.
    # Describes the run, does not define it: not in params, the settings hash or the run key
    model_summaries: dict[str, dict[str, Any]] = Field(default_factory=dict)
    # the budget curve (recipes with the wsd schedule): per budget (optimizer steps) the model at the
    # end of its decay: validation and test accuracy, and which test images it got right (pack_correct)
    budgets: list[dict[str, Any]] = Field(default_factory=list)
    # which test images the reported model got right (pack_correct): intervals over the test sample
    test_correct: str | None = None
    # not in record.json: the per-epoch history lives in history.csv, the folder is where it was read
    history: list[dict[str, float]] = Field(default_factory=list, exclude=True)
    path: Path | None = Field(default=None, exclude=True)

    @classmethod
    def create(
        cls,
        *,
        stage: str,
        variant: str,
        seed: int,
        kind: RunKind,
        settings: dict,
        profile: str,
        device: str,
        numerics: str,
        world_size: int = 1,
        **fields: Any,
    ) -> RunRecord:
        """The record of a run defined by ``settings`` (hashed into its key); tags and names
        follow from the identity. ``numerics``: what decides its float rounding besides the
        settings (:func:`finch.train.runtime.numerics`). ``fields``: metrics, cost and the kind's
        own fields."""
        from finch.config import config_hash, flatten

        params_hash = config_hash(settings)
        key = run_key(stage, variant, seed, params_hash)
        tags = run_tags(
            stage,
            variant,
            profile,
            **{
                "finch.seed": str(seed),
                "finch.params_hash": params_hash,
                "finch.run_key": key,
                "finch.device": device,
                "finch.numerics": numerics,
                "finch.world_size": str(world_size),
                "finch.kind": str(kind),
            },
        )
        return cls(
            stage=stage,
            variant=variant,
            seed=seed,
            run_key=key,
            run_name=run_name(stage, variant, seed),
            params_hash=params_hash,
            kind=kind,
            params=flatten(settings),
            tags=tags,
            **fields,
        )

    @property
    def key(self) -> str:
        return self.run_key

    def write(self, runs_root: Path) -> Path:
        """Write record.json and history.csv under ``runs_root``; return the run's folder."""
        folder = run_dir(runs_root, self.stage, self.variant, self.seed)
        write_json(folder / RECORD, self.model_dump(mode="json"))
        buf = io.StringIO()
        if self.history:
            writer = csv.DictWriter(buf, fieldnames=list(self.history[0]))
            writer.writeheader()
            writer.writerows(self.history)
        write_text(folder / HISTORY, buf.getvalue())
        self.path = folder
        return folder


def read_record(folder: Path) -> RunRecord:
    """The record in ``folder`` (record.json + history.csv); a malformed one names its file."""
    folder = Path(folder)
    try:
        record = RunRecord.model_validate(read_json(folder / RECORD))
    except ValidationError as err:
        raise ConfigError(
            f"{folder / RECORD}: not a Finch run record ({err.error_count()} problem(s): {err.errors()[0]['loc']} "
            f"{err.errors()[0]['msg']}); re-run the stage that wrote it (dvc repro --force <stage>)"
        ) from err
    hist_path = folder / HISTORY
    if hist_path.is_file():
        with hist_path.open() as f:
            record.history = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]
    record.path = folder
    return record


def find_records(runs_root: Path | str, stage: str = "*") -> list[RunRecord]:
    """Every run record under ``runs_root`` (of one ``stage``, or all), in a stable order."""
    root = Path(runs_root)
    return [read_record(p.parent) for p in sorted(root.glob(f"{stage}/*/seed=*/{RECORD}"))]


# The per-stage metrics file (reports/metrics/<dvc stage>.json): a few means per variant, so that
# `dvc exp show` compares any experiment, also one that re-ran a single training stage.
STAGE_METRICS = {
    RunKind.CLASSIFIER: ("accuracy", "f1_macro", "auroc_macro", "ece"),
    RunKind.GAN: ("final_d_loss", "final_g_loss"),
}


def stage_metrics(records: list[RunRecord]) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """stage → variant → metric → ``{"n": seeds, "mean": mean over them}`` for the metrics of
    :data:`STAGE_METRICS` (summary.json's shape, which the aggregate writes with intervals)."""
    values: dict[tuple[str, str, str], list[float]] = {}
    for rec in records:
        for metric in STAGE_METRICS[rec.kind]:
            if metric in rec.metrics:
                values.setdefault((rec.stage, rec.variant, metric), []).append(float(rec.metrics[metric]))
    out: dict = {}
    for (stage, variant, metric), vals in values.items():
        out.setdefault(stage, {}).setdefault(variant, {})[metric] = {"n": len(vals), "mean": sum(vals) / len(vals)}
    return out


def write_stage_metrics(runs_root: Path, stage: str, dest: Path) -> dict:
    """Write ``dest`` from the run records of ``stage`` under ``runs_root``; return what was written."""
    metrics = stage_metrics(find_records(runs_root, stage))
    write_json(dest, metrics)
    return metrics
