"""Intervals and paired tests over seeds, from scipy.stats and statsmodels.

Degenerate cases are answered honestly rather than crashing: one value has no
interval (NaN); identical values have a zero-width interval; a test that cannot be
computed gives NaN and a note that says why.
"""

from __future__ import annotations

import gc
import math
import warnings

import numpy as np
import pandas as pd
from scipy import stats

POWER = 0.8
MAX_SEEDS = 1_000_000  # beyond this, report infinity
ALPHA = 0.05


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


# metrics that are shares (accuracy, agreement, F1, AUROC, calibration error): their intervals are
# cut to [0, 1], where the mean they bound lies (a t interval of a few seeds can reach past it)
_SHARES = ("accuracy", "top5_accuracy", "precision_macro", "recall_macro", "f1_macro", "auroc_macro", "ece",
           "class_acc", "teacher_accuracy", "teacher_agreement")  # fmt: skip


def is_share(metric: str) -> bool:
    """Whether ``metric`` lies in [0, 1] (a head's suffix and a class name aside)."""
    return metric.split(".", 1)[0] in _SHARES


def summarize(runs: pd.DataFrame, confidence: float, n_resamples: int, seed: int) -> pd.DataFrame:
    """Per (stage, variant, metric): n, mean, std and both intervals (a share's cut to [0, 1]).

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
                **_bounded(both_intervals(values, confidence, n_resamples, seed), is_share(metric)),
            }
        )
    return pd.DataFrame(rows)


def _bounded(intervals: dict[str, float], share: bool) -> dict[str, float]:
    return {k: float(np.clip(v, 0.0, 1.0)) if share and not np.isnan(v) else v for k, v in intervals.items()}


def both_intervals(values: np.ndarray, confidence: float, n_resamples: int, seed: int) -> dict[str, float]:
    """t_low, t_high, boot_low, boot_high for the mean of ``values``."""
    t_low, t_high = t_interval(values, confidence)
    b_low, b_high = bootstrap_interval(values, confidence, n_resamples, seed)
    return {"t_low": t_low, "t_high": t_high, "boot_low": b_low, "boot_high": b_high}


def paired_differences(
    runs: pd.DataFrame,
    stage: str,
    baseline: str,
    metrics: list[str],
    confidence: float,
    n_resamples: int,
    seed: int,
    variants: list[str] | None = None,
) -> pd.DataFrame:
    """Each variant of ``stage`` (or only ``variants``) minus ``baseline``, paired by seed, per metric.

    ``baseline`` is a variant of ``stage`` or ``"other_stage/variant"`` (e.g. ``teacher/default``).

    Columns: variant, metric, n (shared seeds), mean_diff, t_low/t_high (paired t interval,
    i.e. the t interval of the per-seed differences), boot_low/boot_high, prob_improvement
    (P(variant > baseline) over every pair of their runs on the shared seeds, ties counting
    half: :func:`probability_of_improvement`), win_share (share of seeds where the variant is
    higher than the baseline of the same seed; a tie is no win), and :func:`paired_tests`.
    """
    rows = []
    base_stage, base_variant = baseline.split("/", 1) if "/" in baseline else (stage, baseline)
    chosen = runs[runs.metric.isin(metrics)]
    base = chosen[(chosen.stage == base_stage) & (chosen.variant == base_variant)].set_index(["metric", "seed"])[
        "value"
    ]
    sel = chosen[(chosen.stage == stage) & ~((chosen.stage == base_stage) & (chosen.variant == base_variant))]
    if variants is not None:
        sel = sel[sel.variant.isin(variants)]
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
                "prob_improvement": probability_of_improvement([other[s] for s in seeds], [ref[s] for s in seeds]),
                "win_share": float((d > 0).mean()) if len(d) else np.nan,
                **paired_tests(d),
            }
        )
    return pd.DataFrame(rows)


def probability_of_improvement(x, y) -> float:
    """P(X > Y), the probability of improvement of rliable (Agarwal et al. 2021) on one task:
    the share of all pairs (x_i, y_j) with x_i > y_j, ties counting 1/2 — the Mann-Whitney U
    statistic of ``x`` (``scipy.stats.mannwhitneyu``) over len(x) * len(y). NaN when either is empty."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) == 0 or len(y) == 0:
        return np.nan
    return float(stats.mannwhitneyu(x, y).statistic / (len(x) * len(y)))


def paired_tests(d) -> dict:
    """Paired t-test and exact Wilcoxon signed-rank p-values of the differences ``d``,
    the smallest Wilcoxon p-value ``n`` pairs can reach, the seeds needed to resolve the
    observed mean difference at 80% power (two-sided, alpha 0.05), and a note on what
    cannot be decided.
    """
    d = np.asarray(d, dtype=float)
    n = len(d)
    notes = []
    out = {"t_p": np.nan, "wilcoxon_p": np.nan, "wilcoxon_min_p": np.nan, "seeds_needed": np.nan}
    if n < 2:
        out["note"] = f"{n} paired seed(s): no test"
        return out
    out["wilcoxon_min_p"] = 2.0 / 2**n  # all signs equal: the exact two-sided minimum
    if np.all(d == d[0]):
        notes.append("identical differences in every seed: t-test and BCa undefined")
    else:
        out["t_p"] = float(stats.ttest_1samp(d, 0.0).pvalue)
    nonzero = d[d != 0]
    if len(nonzero) == 0:
        out["wilcoxon_p"] = 1.0
        notes.append("no seed differs: Wilcoxon p = 1")
    else:
        with warnings.catch_warnings():  # ties or zeros: scipy falls back and says so; noted below
            warnings.simplefilter("ignore")
            exact = len(nonzero) == n and len(np.unique(np.abs(d))) == n
            method = "exact" if exact else "auto"
            out["wilcoxon_p"] = float(stats.wilcoxon(d, method=method).pvalue)
        if not exact:
            notes.append("zeros or ties in the differences: Wilcoxon p not exact")
    out["seeds_needed"] = seeds_needed(d)
    if np.isnan(out["seeds_needed"]) and d.mean() != 0:
        notes.append("zero spread: seeds-needed undefined")
    out["note"] = "; ".join(notes)
    return out


def t_test_power(effect: float, nobs: int, alpha: float = ALPHA) -> float:
    """Power of a two-sided one-sample t-test at standardised effect ``effect`` with ``nobs``
    pairs: statsmodels' ``TTestPower``, or :func:`t_test_power_by_definition` where that is NaN
    (scipy's noncentral t fails far in its tail: a large effect times sqrt(nobs))."""
    from statsmodels.stats.power import TTestPower

    p = float(TTestPower().power(effect_size=effect, nobs=nobs, alpha=alpha))
    return p if math.isfinite(p) else t_test_power_by_definition(effect, nobs, alpha)


def t_test_power_by_definition(effect: float, nobs: int, alpha: float = ALPHA) -> float:
    """The same power from the noncentral t's definition, T = (Z + effect·sqrt(n)) / sqrt(V / (n - 1))
    with V chi-square: the normal rejection probability given V, integrated over V's quantiles.

    The integrand calls the special functions behind ``stats.chi2.ppf`` (``2 gammaincinv(df / 2, u)``)
    and ``stats.norm.sf`` / ``cdf`` (``ndtr``) directly: the same values to the bit (tested), without the
    distribution objects' argument handling, which made this fallback 3.5 s of a smoke aggregate."""
    from scipy import integrate, special

    df = nobs - 1
    crit, shift = stats.t.ppf(1 - alpha / 2, df), effect * math.sqrt(nobs)

    def rejects(u: float) -> float:  # over the chi-square's quantiles: its bulk at any df
        bound = crit * math.sqrt(2 * special.gammaincinv(df / 2, u) / df)
        return special.ndtr(-(bound - shift)) + special.ndtr(-bound - shift)

    return float(min(1.0, integrate.quad(rejects, 0, 1)[0]))


def seeds_needed(d, power: float = POWER, alpha: float = ALPHA) -> float:
    """Paired seeds for a two-sided one-sample t-test on the differences to reach ``power``
    at the observed standardised effect (mean / sd): the smallest whole number of pairs whose
    power reaches it (power grows with the pairs, so a bisection finds it); inf where no
    difference was observed or more than MAX_SEEDS would be needed, NaN where the spread is
    zero or unknown (one seed)."""
    d = np.asarray(d, dtype=float)
    if len(d) < 2:
        return np.nan
    sd = float(d.std(ddof=1))
    mean = float(d.mean())
    if mean == 0.0:
        return math.inf
    if sd == 0.0:
        return np.nan
    effect = abs(mean) / sd
    low, high = 2, MAX_SEEDS
    if t_test_power(effect, low, alpha) >= power:
        return float(low)
    if t_test_power(effect, high, alpha) < power:
        return math.inf
    while high - low > 1:  # power(low) < power <= power(high)
        mid = (low + high) // 2
        if t_test_power(effect, mid, alpha) >= power:
            high = mid
        else:
            low = mid
    return float(high)


def holm_adjust(p_values) -> np.ndarray:
    """Holm's step-down adjustment (statsmodels ``multipletests``); NaN p-values stay NaN
    and do not count towards the family."""
    from statsmodels.stats.multitest import multipletests

    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = ~np.isnan(p)
    if ok.any():
        # statsmodels' Holm branch calls gc.collect(), a walk over the whole heap (0.1 s a call
        # in the aggregate); frozen objects are left out of it, and unfreezing restores them
        gc.freeze()
        try:
            out[ok] = multipletests(p[ok], method="holm")[1]
        finally:
            gc.unfreeze()
    return out


def adjust_family(comparisons: pd.DataFrame) -> pd.DataFrame:
    """Holm-adjusted t and Wilcoxon p-values; one family per (stage, metric): every
    comparison the study declares for that metric, across its baselines."""
    out = comparisons.copy()
    for col in ("t_p", "wilcoxon_p"):
        out[f"{col}_holm"] = np.nan
        for _, idx in out.groupby(["stage", "metric"]).groups.items():
            out.loc[idx, f"{col}_holm"] = holm_adjust(out.loc[idx, col].to_numpy())
    return out
