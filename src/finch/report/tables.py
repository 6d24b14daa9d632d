"""The report's tables, as DataFrames computed from the typed run records and the summary.

Nothing here formats text or draws: the markdown template formats these tables and
:mod:`finch.report.figures` draws from them.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from finch.io import read_json
from finch.runs import RunRecord

RUN_COLUMNS = ["stage", "variant", "seed", "run_key", "kind", "metric", "value"]
SUMMARY_FIELDS = ["std", "t_low", "t_high", "boot_low", "boot_high"]
# cost rows of a variant's section: metric → (label, digits)
COST_LABELS = {
    "params_total": ("parameters (total)", 0),
    "params_trainable": ("parameters (trainable)", 0),
    "train_time_s": ("training time per run (s)", 1),
    "train_images_per_s": ("training throughput (img/s)", 0),
    "eval_images_per_s": ("test throughput (img/s)", 0),
    "peak_memory_mb": ("peak memory (MB)", 0),
}


def runs_table(records: list[RunRecord]) -> pd.DataFrame:
    """One row per (run, metric): stage, variant, seed, run_key, kind, metric, value.

    ``kind`` is the group the number comes from: ``metrics`` (what the run measured) or ``cost``.
    """
    rows = [
        {
            "stage": rec.stage,
            "variant": rec.variant,
            "seed": rec.seed,
            "run_key": rec.run_key,
            "kind": group,
            "metric": metric,
            "value": float(value),
        }
        for rec in records
        for group, values in (("metrics", rec.metrics), ("cost", rec.cost))
        for metric, value in values.items()
    ]
    return pd.DataFrame(rows, columns=RUN_COLUMNS)


def summary_json(summary: pd.DataFrame, metrics: list[str] | None = None) -> dict:
    """Nested stage → variant → metric → {n, mean, std, t and bootstrap bounds}; only
    ``metrics`` when given (summary.json holds the headline metrics so that `dvc metrics show`
    stays readable; summary.csv holds every metric)."""
    out: dict = {}
    if metrics is not None:
        summary = summary[summary.metric.isin(metrics)]
    for r in summary.itertuples(index=False):
        entry = {"n": int(r.n), "mean": r.mean}
        for key in SUMMARY_FIELDS:
            value = getattr(r, key)
            entry[key] = None if math.isnan(value) else value
        out.setdefault(r.stage, {}).setdefault(r.variant, {})[r.metric] = entry
    return out


def summary_rows(summary: pd.DataFrame, stage: str, variant: str, metrics: list[str]) -> pd.DataFrame:
    """The summary rows of one variant for ``metrics``, in that order (absent metrics skipped)."""
    group = summary[(summary.stage == stage) & (summary.variant == variant)]
    present = [m for m in metrics if m in set(group.metric)]
    return group.drop_duplicates("metric").set_index("metric").loc[present].reset_index()


def class_metrics(summary: pd.DataFrame, stage: str, variant: str) -> list[str]:
    """The per-class accuracy metrics (``class_acc.<class>``) of one variant, sorted."""
    group = summary[(summary.stage == stage) & (summary.variant == variant)]
    return sorted(m for m in group.metric if m.startswith("class_acc."))


def per_seed_table(records: list[RunRecord], metrics: list[str]) -> pd.DataFrame:
    """One row per seed: seed, each of ``metrics`` (NaN where missing), best_epoch."""
    rows = [
        {"seed": r.seed, **{m: r.metrics.get(m, float("nan")) for m in metrics}, "best_epoch": r.best_epoch}
        for r in sorted(records, key=lambda r: r.seed)
    ]
    return pd.DataFrame(rows, columns=["seed", *metrics, "best_epoch"], dtype=object)


def cost_table(summary: pd.DataFrame, stage: str, variant: str) -> pd.DataFrame:
    """The variant's cost means over seeds: label, mean, digits (the precision to show)."""
    rows = summary_rows(summary, stage, variant, list(COST_LABELS))
    return pd.DataFrame(
        [
            {"label": COST_LABELS[r.metric][0], "mean": r.mean, "digits": COST_LABELS[r.metric][1]}
            for r in rows.itertuples()
        ],
        columns=["label", "mean", "digits"],
    )


def kfold_table(records: list[RunRecord]) -> pd.DataFrame:
    """Per seed, the folds of a k-fold run (``recipe.kfold.k`` >= 2; its prediction is the mean of
    the k fold models' probabilities): seed, k, val_accuracy and test_accuracy (per fold), their
    means and stds, and ensemble_accuracy (the run's test accuracy)."""
    keys = ["k", "val_accuracy", "val_accuracy_mean", "val_accuracy_std", "test_accuracy"]
    keys += ["test_accuracy_mean", "test_accuracy_std"]
    rows = [
        {"seed": r.seed, **{k: r.kfold[k] for k in keys}, "ensemble_accuracy": r.metrics.get("accuracy")}
        for r in sorted(records, key=lambda r: r.seed)
        if r.kfold
    ]
    keys.append("ensemble_accuracy")
    return pd.DataFrame(rows, columns=["seed", *keys], dtype=object)


def summed_confusion(records: list[RunRecord]) -> np.ndarray:
    """The confusion matrices of ``records`` (classifiers) summed over seeds."""
    return np.sum([np.asarray(r.confusion) for r in records], axis=0)


def mean_curve(records: list[RunRecord]) -> pd.DataFrame:
    """Per epoch, validation accuracy over seeds: epoch, val_accuracy (mean), low, high (min, max);
    only the epochs every seed reached. Empty for runs that validate at their budgets only (wsd)."""
    validated = all(r.history and "val_accuracy" in r.history[0] for r in records)
    n = min(len(r.history) for r in records) if validated else 0
    return pd.DataFrame(
        [
            {
                "epoch": i + 1,
                "val_accuracy": float(np.mean([r.history[i]["val_accuracy"] for r in records])),
                "low": float(np.min([r.history[i]["val_accuracy"] for r in records])),
                "high": float(np.max([r.history[i]["val_accuracy"] for r in records])),
            }
            for i in range(n)
        ],
        columns=["epoch", "val_accuracy", "low", "high"],
    )


def ensemble_table(records: list[RunRecord]) -> pd.DataFrame:
    """Each variant's seed models averaged (``ensemble.json`` next to its seed runs) against the
    mean single model: variant, models, single/ensemble accuracy, gain, single/ensemble ECE."""
    seen, rows = set(), []
    for rec in records:
        if rec.path is None:  # built in memory, not read from its folder
            continue
        path = Path(rec.path).parent / "ensemble.json"
        if path in seen or not path.is_file():
            continue
        seen.add(path)
        e = read_json(path)
        single, ens = e["single_mean"], e["ensemble"]
        rows.append(
            {
                "variant": e["variant"],
                "models": len(e["seeds"]),
                "single_accuracy": single["accuracy"],
                "ensemble_accuracy": ens["accuracy"],
                "gain": ens["accuracy"] - single["accuracy"],
                "single_ece": single.get("ece", float("nan")),
                "ensemble_ece": ens.get("ece", float("nan")),
            }
        )
    columns = ["variant", "models", "single_accuracy", "ensemble_accuracy", "gain", "single_ece", "ensemble_ece"]
    return pd.DataFrame(rows, columns=columns)


QUALITY_MEASURES = ["fid", "kid", "kid_std", "precision", "recall"]
REFERENCE_SPREAD = ["fid_sd", "kid_sd", "precision_sd", "recall_sd"]  # the real-vs-real draws' SD
GENERATED_VS_REAL, REAL_VS_REAL = "generated vs real", "*real vs real*"


def quality_table(quality: dict) -> pd.DataFrame:
    """The synthetic images' quality (the generate stage's synthetic_quality.json): for all classes
    and for each class, generated vs real and the real-vs-real reference, each at equal sizes
    (``n`` images on either side)."""
    sets = {"all classes": quality["overall"], **quality["per_class"]}
    rows = []
    for name, q in sets.items():
        rows.append({"set": name, "compared": GENERATED_VS_REAL, **{m: q[m] for m in ["n", *QUALITY_MEASURES]}})
        ref = q["reference"]
        measures = ["n", *QUALITY_MEASURES, *REFERENCE_SPREAD, "draws"]
        rows.append({"set": name, "compared": REAL_VS_REAL, **{m: ref.get(m) for m in measures}})
    columns = ["set", "compared", "n", *QUALITY_MEASURES, *REFERENCE_SPREAD, "draws"]
    table = pd.DataFrame(rows, columns=columns)
    return table.astype({"n": int, **{c: float for c in QUALITY_MEASURES + REFERENCE_SPREAD + ["draws"]}})


def variant_label(stage: str, variant: str) -> str:
    """How the report names a variant: "stage/variant", or the stage alone for "default"."""
    return stage if variant == "default" else f"{stage}/{variant}"


# ------------------------------------------------------------------------ floors
FLOORS_STAGE = "floors"


def floor_summary(floors: dict) -> pd.DataFrame:
    """The floors stage's test metrics as summary rows (stage ``floors``, one run each: n = 1)."""
    rows = [
        {"stage": FLOORS_STAGE, "variant": name, "metric": metric, "n": 1, "mean": float(value)}
        | {key: float("nan") for key in SUMMARY_FIELDS}
        for name, floor in floors.items()
        for metric, value in floor["metrics"].items()
    ]
    return pd.DataFrame(rows)


def floor_labels(floors: dict) -> dict[str, str]:
    """Floor name → its label with the hyper-parameter the validation split chose."""
    return {name: f"{f['label']} ({f['param']} = {f['value']:g})" for name, f in floors.items()}


def floor_sets(floors_doc: dict) -> tuple[dict, dict[str, dict]]:
    """floors.json → (the full-data floors, stage → the floors its study is shown with instead).
    The scarce-data floors (fitted on ``synthetic.real_per_class`` images a class) are named
    ``<floor>_<N>_per_class`` and belong to the studies trained on those images."""
    scarce = floors_doc.get("scarce")
    if not scarce:
        return dict(floors_doc.get("floors", {})), {}
    n = scarce["per_class"]
    renamed = {
        f"{name}_{n}_per_class": {**f, "label": f"{f['label']}, {n} training images a class"}
        for name, f in scarce["floors"].items()
    }
    return dict(floors_doc.get("floors", {})), {stage: renamed for stage in scarce["stages"]}
