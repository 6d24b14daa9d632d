"""Intervals over seeds, from scipy.stats.

Degenerate cases are answered honestly rather than crashing: one value has no
interval (NaN); identical values have a zero-width interval.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats


def t_interval(values, confidence: float = 0.95) -> tuple[float, float]:
    """Student-t interval for the mean (``scipy.stats.t.interval``)."""
    x = np.asarray(values, dtype=float)
    if len(x) < 2:
        return (np.nan, np.nan)
    mean = float(x.mean())
    sem = float(stats.sem(x))
    if sem == 0.0:
        return (mean, mean)
    low, high = stats.t.interval(confidence, len(x) - 1, loc=mean, scale=sem)
    return (float(low), float(high))


def bootstrap_interval(values, confidence: float = 0.95, n_resamples: int = 9999, seed: int = 0) -> tuple[float, float]:
    """Seeded percentile bootstrap interval for the mean (``scipy.stats.bootstrap``).

    Percentile rather than BCa: BCa is undefined when all values are equal, and with a
    handful of seeds every bootstrap interval under-covers; the t interval is the primary one.
    """
    x = np.asarray(values, dtype=float)
    if len(x) < 2:
        return (np.nan, np.nan)
    if np.all(x == x[0]):
        return (float(x[0]), float(x[0]))
    res = stats.bootstrap(
        (x,),
        np.mean,
        confidence_level=confidence,
        n_resamples=n_resamples,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return (float(res.confidence_interval.low), float(res.confidence_interval.high))


def summarize(runs: pd.DataFrame, confidence: float, n_resamples: int, seed: int) -> pd.DataFrame:
    """Per (stage, variant, metric): n, mean, std and both intervals.

    ``runs`` is the long table with columns stage, variant, seed, metric, value.
    """
    rows = []
    for (stage, variant, metric), group in runs.groupby(["stage", "variant", "metric"], sort=True):
        values = group.sort_values("seed")["value"].to_numpy(dtype=float)
        rows.append(
            {
                "stage": stage,
                "variant": variant,
                "metric": metric,
                "n": len(values),
                "mean": float(values.mean()),
                "std": float(values.std(ddof=1)) if len(values) > 1 else np.nan,
                **both_intervals(values, confidence, n_resamples, seed),
            }
        )
    return pd.DataFrame(rows)


def both_intervals(values: np.ndarray, confidence: float, n_resamples: int, seed: int) -> dict[str, float]:
    """t_low, t_high, boot_low, boot_high for the mean of ``values``."""
    t_low, t_high = t_interval(values, confidence)
    b_low, b_high = bootstrap_interval(values, confidence, n_resamples, seed)
    return {"t_low": t_low, "t_high": t_high, "boot_low": b_low, "boot_high": b_high}


def paired_differences(
    runs: pd.DataFrame, stage: str, baseline: str, metrics: list[str], confidence: float, n_resamples: int, seed: int
) -> pd.DataFrame:
    """Each variant of ``stage`` minus ``baseline``, paired by seed, per metric.

    ``baseline`` is a variant of ``stage`` or ``"other_stage/variant"`` (e.g. ``teacher/default``).

    Columns: variant, metric, n (shared seeds), mean_diff, t_low/t_high (paired t interval,
    i.e. the t interval of the per-seed differences), boot_low/boot_high, p_improvement
    (share of seeds where the variant is higher).
    """
    rows = []
    base_stage, base_variant = baseline.split("/", 1) if "/" in baseline else (stage, baseline)
    chosen = runs[runs.metric.isin(metrics)]
    base = chosen[(chosen.stage == base_stage) & (chosen.variant == base_variant)].set_index(["metric", "seed"])[
        "value"
    ]
    sel = chosen[(chosen.stage == stage) & ~((chosen.stage == base_stage) & (chosen.variant == base_variant))]
    for (variant, metric), group in sel.groupby(["variant", "metric"], sort=True):
        other = group.set_index("seed")["value"]
        ref = base.xs(metric, level="metric") if metric in base.index.get_level_values(0) else pd.Series(dtype=float)
        seeds = sorted(set(other.index) & set(ref.index))
        d = np.array([other[s] - ref[s] for s in seeds], dtype=float)
        rows.append(
            {
                "stage": stage,
                "variant": variant,
                "baseline": baseline,
                "metric": metric,
                "n": len(d),
                "mean_diff": float(d.mean()) if len(d) else np.nan,
                **both_intervals(d, confidence, n_resamples, seed),
                "p_improvement": float((d > 0).mean()) if len(d) else np.nan,
            }
        )
    return pd.DataFrame(rows)
