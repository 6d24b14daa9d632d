"""Budget curves, the plateau rule and every comparison at every budget (issue 26).

A recipe with budgets tests its model at the end of every budget's decay (one run per seed, see
:func:`finch.train.engine.run_branch`); each record keeps, per budget, which test images the
model got right. From those bits:

- :func:`budget_table`: per variant and budget, the mean test accuracy over seeds with an
  interval from a **two-level bootstrap** (seeds, then test images: :func:`two_level`), so it
  covers the test sample's error as well as the seeds' spread, and never leaves [0, 1];
- :func:`plateau_table`: per variant, the paired gain from its next-to-last to its last budget
  over every seed, with its interval: *plateau* when the interval lies below ``delta``,
  *still improving* when it lies above 0, *undetermined* otherwise;
- :func:`budget_comparisons`: every declared comparison at every budget both sides share (a
  side with one model, such as a probe fitted in closed form, is compared at each budget with
  that model), paired by seed and by test image, and a verdict per comparison: *holds at every
  budget*, *depends on the budget*, or *no difference at any budget*.

Floors (one model each, no seeds) get the same interval with one seed: a bootstrap over images.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from finch.runs import RunKind, RunRecord, unpack_correct

ONE_MODEL = 0  # the budget key of a variant without budgets: its one reported model
CHUNK = 250  # resamples of the test images drawn at a time

PLATEAU, IMPROVING, UNDETERMINED = "plateau", "still improving", "undetermined"
HOLDS, DEPENDS, NO_DIFFERENCE = "holds at every budget", "depends on the budget", "no difference at any budget"


def two_level(values: np.ndarray, n_resamples: int, seed: int, confidence: float) -> tuple[float, float, float]:
    """Mean of ``values`` (seeds x test images; per-image 0/1, or a paired difference of two
    such) and its percentile interval from a two-level bootstrap: each resample draws the seeds
    with replacement and, independently, the test images with replacement (the same images for
    every seed, so a paired difference stays paired). The same ``seed`` draws the same images
    for every call: intervals of variants of one study use the same resamples."""
    values = np.asarray(values, dtype=np.float64)
    n_seeds, n_images = values.shape
    counts = _image_counts(n_images, n_resamples, seed)
    # float32 products of 0/±1 values and draw counts are exact integers (< 2^24): no float64 copy
    # of the resamples x images counts per call
    per_seed = (values.astype(np.float32) @ counts.T).astype(np.float64) / n_images  # seeds x resamples
    picks = np.random.default_rng([seed, 1]).integers(0, n_seeds, size=(n_resamples, n_seeds))
    stats = per_seed[picks, np.arange(n_resamples)[:, None]].mean(axis=1)
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(stats, [tail, 100.0 - tail])
    return float(values.mean()), float(low), float(high)


@functools.lru_cache(maxsize=4)
def _image_counts(n_images: int, n_resamples: int, seed: int) -> np.ndarray:
    """How often each test image is drawn in each resample (resamples x images), drawn once."""
    rng = np.random.default_rng([seed, 0])
    counts = np.empty((n_resamples, n_images), dtype=np.float32)
    for start in range(0, n_resamples, CHUNK):
        size = min(CHUNK, n_resamples - start)
        draws = rng.integers(0, n_images, size=(size, n_images)) + np.arange(size)[:, None] * n_images
        counts[start : start + size] = np.bincount(draws.ravel(), minlength=size * n_images).reshape(size, n_images)
    return counts


@dataclass
class Curve:
    """One variant's runs by budget: per budget (steps; ONE_MODEL without budgets) and seed,
    which test images the model got right, and its validation accuracy."""

    stage: str
    variant: str
    correct: dict[int, dict[int, np.ndarray]] = field(default_factory=dict)
    val: dict[int, dict[int, float]] = field(default_factory=dict)
    epochs: dict[int, float] = field(default_factory=dict)

    @property
    def budgets(self) -> list[int]:
        return sorted(self.correct)

    def matrix(self, steps: int, seeds: list[int]) -> np.ndarray:
        return np.stack([self.correct[steps][s] for s in seeds]).astype(np.float64)

    def seeds(self, steps: int) -> list[int]:
        return sorted(self.correct[steps])


def curves(records: list[RunRecord]) -> dict[tuple[str, str], Curve]:
    """(stage, variant) → its :class:`Curve`, from every classifier record that kept its bits."""
    out: dict[tuple[str, str], Curve] = {}
    for rec in records:
        if rec.kind != RunKind.CLASSIFIER or not rec.test_correct or rec.confusion is None:
            continue
        n = int(np.asarray(rec.confusion).sum())
        curve = out.setdefault((rec.stage, rec.variant), Curve(rec.stage, rec.variant))
        rows = rec.budgets or [{"steps": ONE_MODEL, "test_correct": rec.test_correct}]
        for row in rows:
            steps = int(row["steps"])
            curve.correct.setdefault(steps, {})[rec.seed] = unpack_correct(row["test_correct"], n)
            if "val_accuracy" in row:
                curve.val.setdefault(steps, {})[rec.seed] = float(row["val_accuracy"])
            if "epochs" in row:
                curve.epochs[steps] = float(row["epochs"])
    return out


def floor_curves(floors: dict) -> dict[tuple[str, str], Curve]:
    """Each floor (floors.json) as a one-model curve with one 'seed'; floors without bits are left out."""
    out = {}
    for name, floor in floors.items():
        if "test_correct" in floor:
            n = int(floor.get("test_images", 0))
            curve = Curve("floors", name)
            curve.correct[ONE_MODEL] = {0: unpack_correct(floor["test_correct"], n)}
            out[("floors", name)] = curve
    return out


def budget_table(curves_: dict[tuple[str, str], Curve], n_resamples: int, seed: int, confidence: float) -> pd.DataFrame:
    """Per (stage, variant, budget): seeds, epochs, mean validation and test accuracy, and the
    test accuracy's two-level interval. ``steps`` is 0 for a variant's one model (no budgets)."""
    rows = []
    for (stage, variant), curve in sorted(curves_.items()):
        budgets = curve.budgets
        for steps in budgets:
            seeds = curve.seeds(steps)
            mean, low, high = two_level(curve.matrix(steps, seeds), n_resamples, seed, confidence)
            val = curve.val.get(steps, {})
            rows.append(
                {
                    "stage": stage,
                    "variant": variant,
                    "steps": steps,
                    "epochs": curve.epochs.get(steps, np.nan),
                    "last": steps == budgets[-1],
                    "n": len(seeds),
                    "val_accuracy": float(np.mean(list(val.values()))) if val else np.nan,
                    "test_accuracy": mean,
                    "low": low,
                    "high": high,
                }
            )
    return pd.DataFrame(rows, columns=_BUDGET_COLUMNS)


_BUDGET_COLUMNS = ["stage", "variant", "steps", "epochs", "last", "n", "val_accuracy", "test_accuracy", "low", "high"]


def paired(
    a: Curve, steps_a: int, b: Curve, steps_b: int, n_resamples: int, seed: int, confidence: float
) -> tuple[list[int], tuple[float, float, float]]:
    """``a`` at ``steps_a`` minus ``b`` at ``steps_b`` over the seeds both ran, image by image:
    those seeds, and the difference's mean and two-level interval (NaN without a common seed)."""
    seeds = sorted(set(a.seeds(steps_a)) & set(b.seeds(steps_b)))
    if not seeds:
        return seeds, (np.nan, np.nan, np.nan)
    return seeds, two_level(a.matrix(steps_a, seeds) - b.matrix(steps_b, seeds), n_resamples, seed, confidence)


def plateau_mark(low: float, high: float, delta: float) -> str:
    """*plateau* when the gain's interval lies below ``delta``; *still improving* when it lies above 0."""
    if high < delta:
        return PLATEAU
    if low > 0:
        return IMPROVING
    return UNDETERMINED


def plateau_table(
    curves_: dict[tuple[str, str], Curve], delta: float, n_resamples: int, seed: int, confidence: float
) -> pd.DataFrame:
    """Per variant with two budgets or more: the paired gain (same seed, same test image) from
    its next-to-last to its last budget, its two-level interval and the mark."""
    rows = []
    for (stage, variant), curve in sorted(curves_.items()):
        if len(curve.budgets) < 2 or stage == "floors":
            continue
        before, last = curve.budgets[-2:]
        seeds, (gain, low, high) = paired(curve, last, curve, before, n_resamples, seed, confidence)
        rows.append(
            {
                "stage": stage,
                "variant": variant,
                "from_steps": before,
                "to_steps": last,
                "n": len(seeds),
                "gain": gain,
                "low": low,
                "high": high,
                "delta": delta,
                "mark": plateau_mark(low, high, delta),
            }
        )
    return pd.DataFrame(rows, columns=_PLATEAU_COLUMNS)


_PLATEAU_COLUMNS = ["stage", "variant", "from_steps", "to_steps", "n", "gain", "low", "high", "delta", "mark"]


def _side(curves_: dict, stage: str, name: str) -> Curve | None:
    key = tuple(name.split("/", 1)) if "/" in name else (stage, name)
    return curves_.get(key)


def budget_comparisons(
    curves_: dict[tuple[str, str], Curve],
    pairs: dict[str, dict[str, list[str]]],
    n_resamples: int,
    seed: int,
    confidence: float,
) -> pd.DataFrame:
    """Every declared comparison (``pairs``: stage → baseline → variants) at every budget: the
    paired difference variant − baseline over the seeds both ran, per test image, with its
    two-level interval and the comparison's verdict over its budgets."""
    rows = []
    for stage, by_baseline in sorted(pairs.items()):
        for baseline, variants in by_baseline.items():
            base = _side(curves_, stage, baseline)
            for variant in variants:
                other = curves_.get((stage, variant))
                if base is None or other is None:
                    continue
                part = []
                for steps in _shared_budgets(other, base):
                    steps_v = steps if steps in other.correct else ONE_MODEL
                    steps_b = steps if steps in base.correct else ONE_MODEL
                    seeds, (diff, low, high) = paired(other, steps_v, base, steps_b, n_resamples, seed, confidence)
                    if not seeds:
                        continue
                    part.append(
                        {
                            "stage": stage,
                            "variant": variant,
                            "baseline": baseline,
                            "steps": steps,
                            "n": len(seeds),
                            "diff": diff,
                            "low": low,
                            "high": high,
                        }
                    )
                verdict = comparison_verdict([(r["low"], r["high"]) for r in part])
                rows += [r | {"verdict": verdict} for r in part]
    return pd.DataFrame(rows, columns=_COMPARISON_COLUMNS)


_COMPARISON_COLUMNS = ["stage", "variant", "baseline", "steps", "n", "diff", "low", "high", "verdict"]


def _shared_budgets(a: Curve, b: Curve) -> list[int]:
    """The budgets two sides are compared at: those both have; a one-model side goes with every
    budget of the other."""
    if a.budgets == [ONE_MODEL]:
        return b.budgets
    if b.budgets == [ONE_MODEL]:
        return a.budgets
    return sorted(set(a.budgets) & set(b.budgets))


def comparison_verdict(intervals: list[tuple[float, float]]) -> str:
    """*holds at every budget*: every interval excludes 0 on the same side; *no difference at any
    budget*: every interval includes 0; *depends on the budget* otherwise."""
    signs = {1 if low > 0 else -1 if high < 0 else 0 for low, high in intervals}
    if signs == {0}:
        return NO_DIFFERENCE
    if len(signs) == 1:
        return HOLDS
    return DEPENDS


def write_tables(records: list[RunRecord], floors: dict, summary: pd.DataFrame, cfg, out) -> dict[str, pd.DataFrame]:
    """budgets.csv (every variant at every budget, and the floors), plateau.csv and
    budget_comparisons.csv under ``out``; returns them as ``budgets``, ``plateau``, ``at_budgets``."""
    from pathlib import Path

    from finch.io import write_with
    from finch.report.comparisons import declared_pairs

    found = curves(records)
    every = found | floor_curves(floors)
    args = (cfg.bootstrap_resamples, cfg.bootstrap_seed, cfg.confidence)
    stages = sorted({stage for stage, _ in found})
    pairs = {stage: declared_pairs(stage, summary, cfg) for stage in stages}
    out_tables = {
        "budgets": budget_table(every, *args),
        "plateau": plateau_table(found, cfg.plateau_delta, *args),
        "at_budgets": budget_comparisons(found, pairs, *args),
    }
    for name, file in (
        ("budgets", "budgets.csv"),
        ("plateau", "plateau.csv"),
        ("at_budgets", "budget_comparisons.csv"),
    ):
        table = out_tables[name]
        write_with(Path(out) / file, lambda tmp, t=table: t.to_csv(tmp, index=False, float_format="%.10g"))
    return out_tables
