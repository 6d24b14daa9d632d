"""Variants of a study side by side: paired differences against its baselines, verdicts and the
accuracy/cost trade-off, as DataFrames."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

from finch.config import AggregateConfig
from finch.report.stats import ALPHA, adjust_family, paired_differences
from finch.report.studies import Study
from finch.report.tables import mean_curve
from finch.runs import RunRecord

# optional columns of the variants table: (metric, header, digits); shown when the study has the metric
OPTIONAL_COLUMNS = [
    ("accuracy.head_cls", "class head", 4),
    ("accuracy.head_dist", "distillation head", 4),
    ("teacher_agreement", "agreement with teacher", 4),
    ("params_total", "parameters", 0),
    ("params_trainable", "trainable", 0),
    ("train_time_s", "train s/run", 1),
    ("eval_images_per_s", "test img/s", 0),
]


def _has_runs(stage_variant: str, summary: pd.DataFrame) -> bool:
    if "/" not in stage_variant:
        return False
    stage, variant = stage_variant.split("/", 1)
    return not summary[(summary.stage == stage) & (summary.variant == variant)].empty


def declared_pairs(stage: str, summary: pd.DataFrame, cfg: AggregateConfig) -> dict[str, list[str]]:
    """baseline → the variants of ``stage`` compared with it, for the baselines that have runs.

    A variant is compared with its stage's ``aggregate.baselines``, or with its own list in
    ``aggregate.variant_baselines`` where it has one. Baselines come in declaration order
    (the stage's, then the variants' own), variants in name order. Each unordered pair is
    compared once: where two baselines would be compared with each other both ways, only the
    later-named one is compared with the earlier (e.g. `scratch − linear_probe` for
    [linear_probe, scratch]), so the Holm family counts the comparison once.
    """
    variants = sorted(set(summary[summary.stage == stage].variant))
    own = cfg.variant_baselines.get(stage, {})
    declared = list(cfg.baselines.get(stage, []))
    declared += [b for v in variants for b in own.get(v, []) if b not in declared]
    pairs: dict[str, list[str]] = {}
    seen: set[frozenset[str]] = set()
    for b in declared:
        if b not in variants and not _has_runs(b, summary):
            continue
        compared = [
            v
            for v in variants
            if v != b and b in own.get(v, cfg.baselines.get(stage, [])) and frozenset((v, b)) not in seen
        ]
        seen.update(frozenset((v, b)) for v in compared)
        if compared:
            pairs[b] = compared
    return pairs


def present_baselines(stage: str, summary: pd.DataFrame, cfg: AggregateConfig) -> list[str]:
    """The baselines of ``stage``'s declared comparisons that have runs (see :func:`declared_pairs`)."""
    return list(declared_pairs(stage, summary, cfg))


def study_comparisons(
    table: pd.DataFrame, stage: str, pairs: dict[str, list[str]], cfg: AggregateConfig
) -> pd.DataFrame:
    """Every declared comparison of ``stage`` (``pairs``: baseline → its variants), paired by
    seed, with Holm-adjusted p-values over the study's family (per metric)."""
    parts = [
        paired_differences(
            table[table.kind == "metrics"],
            stage,
            baseline,
            cfg.headline_metrics,
            cfg.confidence,
            cfg.bootstrap_resamples,
            cfg.bootstrap_seed,
            variants=variants,
        )
        for baseline, variants in pairs.items()
    ]
    parts = [p for p in parts if not p.empty]
    if not parts:
        return pd.DataFrame(columns=["stage", "variant", "baseline", "metric"])
    return adjust_family(pd.concat(parts, ignore_index=True))


def all_comparisons(table: pd.DataFrame, summary: pd.DataFrame, cfg: AggregateConfig) -> dict[str, pd.DataFrame]:
    """stage → its comparison family (see :func:`study_comparisons`)."""
    return {
        stage: study_comparisons(table, stage, declared_pairs(stage, summary, cfg), cfg)
        for stage in sorted(set(summary.stage))
    }


def verdicts(diffs: pd.DataFrame) -> pd.DataFrame:
    """``diffs`` (one metric) with a ``verdict`` column: too_few_seeds (no interval), better or
    worse (the paired t interval excludes 0), unresolved (it contains 0); and ``holm_significant``."""
    out = diffs.copy()
    if out.empty:
        return out.assign(verdict=[], holm_significant=[])
    out["verdict"] = [
        "too_few_seeds" if math.isnan(lo) else "better" if lo > 0 else "worse" if hi < 0 else "unresolved"
        for lo, hi in zip(out.t_low, out.t_high, strict=True)
    ]
    out["holm_significant"] = out.t_p_holm < ALPHA
    return out


def wilcoxon_floor(diffs: pd.DataFrame) -> float | None:
    """The exact Wilcoxon test's smallest possible p-value when it exceeds alpha (so the test
    cannot resolve any difference with this many seeds), else None."""
    if "wilcoxon_min_p" not in diffs:
        return None
    floors = diffs.wilcoxon_min_p.dropna()
    return float(floors.min()) if not floors.empty and floors.min() > ALPHA else None


def on_pareto_front(point: dict, points: list[dict], cost: str) -> bool:
    """No other point is at least as accurate and at most as costly, and strictly better in one."""
    return not any(
        q["accuracy"] >= point["accuracy"]
        and q[cost] <= point[cost]
        and (q["accuracy"] > point["accuracy"] or q[cost] < point[cost])
        for q in points
    )


@dataclass
class Comparison:
    """One study's variants side by side.

    ``variants``: label, n, accuracy mean and intervals, then the ``columns``' means (NaN where a
    variant lacks the metric), reference rows last. ``differences``: baseline → its paired
    differences with verdicts. ``wilcoxon_floors``: baseline → (the exact Wilcoxon test's smallest
    possible p-value, the number of paired seeds) where that floor is above alpha. ``paired``: the
    accuracy differences (for the forest figure). ``curves``: variant → its mean validation curve.
    ``pareto``: label, accuracy, low, high, trainable, time, front (on the trainable-parameter
    front); None without a trade-off.
    """

    stage: str
    variants: pd.DataFrame
    columns: list[tuple[str, str, int]]
    differences: dict[str, pd.DataFrame]
    wilcoxon_floors: dict[str, tuple[float, int]]
    paired: pd.DataFrame
    curves: dict[str, pd.DataFrame]
    pareto: pd.DataFrame | None = None
    # finch.report.budgets tables, this study's rows: the budget curve, the plateau rule, and every
    # comparison at every budget
    budgets: pd.DataFrame = field(default_factory=pd.DataFrame)
    plateau: pd.DataFrame = field(default_factory=pd.DataFrame)
    at_budgets: pd.DataFrame = field(default_factory=pd.DataFrame)
    below_floors: list[str] = field(default_factory=list)  # variants whose mean is under the highest floor
    highest_floor: float = float("nan")

    @property
    def still_improving(self) -> list[str]:
        """Variants the plateau rule does not call a plateau (still improving, or undetermined)."""
        if self.plateau.empty:
            return []
        return list(self.plateau[self.plateau["mark"] != "plateau"].variant)

    @property
    def pareto_front(self) -> list[str]:
        return [] if self.pareto is None else list(self.pareto.label[self.pareto.front])

    @property
    def has_differences(self) -> bool:
        return any(not d.empty for d in self.differences.values())


def _mean(summary: pd.DataFrame, stage: str, variant: str, metric: str) -> float:
    row = summary[(summary.stage == stage) & (summary.variant == variant) & (summary.metric == metric)]
    return float("nan") if row.empty else row.iloc[0]["mean"]


def _variant_row(summary: pd.DataFrame, stage: str, variant: str, label: str, columns: list) -> dict:
    r = summary[(summary.stage == stage) & (summary.variant == variant) & (summary.metric == "accuracy")].iloc[0]
    extra = {metric: _mean(summary, stage, variant, metric) for metric, _, _ in columns}
    keys = ["n", "mean", "t_low", "t_high", "boot_low", "boot_high"]
    return {"label": label, **{k: r[k] for k in keys}, "n": int(r.n), **extra}


def _trains_fewer_parameters(summary: pd.DataFrame, stage: str) -> bool:
    counts = summary[(summary.stage == stage) & summary.metric.isin(["params_total", "params_trainable"])]
    c = counts.pivot(index="variant", columns="metric", values="mean")
    if "params_total" not in c:
        return False
    return bool((c.get("params_trainable", c["params_total"]) < c["params_total"]).any())


def _pareto_points(summary: pd.DataFrame, stage: str, order: list[str]) -> pd.DataFrame:
    points = []
    for v in order:
        acc = summary[(summary.stage == stage) & (summary.variant == v) & (summary.metric == "accuracy")].iloc[0]
        points.append(
            {
                "label": v,
                "accuracy": acc["mean"],
                "low": acc.t_low,
                "high": acc.t_high,
                "trainable": _mean(summary, stage, v, "params_trainable"),
                "time": _mean(summary, stage, v, "train_time_s"),
            }
        )
    for p in points:
        p["front"] = on_pareto_front(p, points, "trainable")
    return pd.DataFrame(points)


def _rows_of(table: pd.DataFrame, stage: str, floors: list[str]) -> pd.DataFrame:
    """``stage``'s rows of a budgets table, and those of the floors it is shown with."""
    shown = (table.stage == stage) | ((table.stage == "floors") & table.variant.isin(floors))
    return table[shown].reset_index(drop=True)


def compare_variants(
    study: Study,
    variants: dict[str, list[RunRecord]],
    summary: pd.DataFrame,
    family: pd.DataFrame,
    cfg: AggregateConfig,
    floors: dict[str, str] | None = None,
    budget_tables: dict[str, pd.DataFrame] | None = None,
) -> Comparison:
    """The comparison section's data for ``study``; ``variants`` maps variant → its records
    (in record order), ``family`` is the study's comparison family (:func:`study_comparisons`),
    ``budget_tables`` the whole study's budgets, plateau and at_budgets tables (finch.report.budgets)."""
    stage = study.key
    floor_names = list(floors or {})
    baselines = present_baselines(stage, summary, cfg)
    order = sorted(variants, key=lambda v: (v not in baselines, list(variants).index(v)))
    present = set(summary[summary.stage == stage].metric)
    columns = [c for c in OPTIONAL_COLUMNS if c[0] in present]
    rows = [_variant_row(summary, stage, v, v, columns) for v in order]
    references = [(ref, f"*{label} (reference)*") for ref, label in study.references if _has_runs(ref, summary)]
    references += [(b, f"*{b} (reference)*") for b in baselines if "/" in b]
    rows += [_variant_row(summary, *ref.split("/", 1), label, columns) for ref, label in references]
    # the floors: what raw pixels alone get (no representation learning), one fit each
    floor_rows = [_variant_row(summary, "floors", n, f"*floor: {lbl}*", columns) for n, lbl in (floors or {}).items()]
    rows += floor_rows
    highest_floor = max((r["mean"] for r in floor_rows), default=float("nan"))
    below = [v for v, r in zip(order, rows, strict=False) if r["mean"] < highest_floor]  # the study's own variants
    accuracy = family[family.metric == "accuracy"] if not family.empty else family
    paired = pd.DataFrame(
        [
            {**r, "label": f"{r['variant']} − {r['baseline']}", "mean": r["mean_diff"]}
            for r in accuracy.to_dict("records")
        ]
    )
    pareto = None
    if study.pareto and _trains_fewer_parameters(summary, stage):
        pareto = _pareto_points(summary, stage, order)
    differences = {b: verdicts(family[family.baseline == b]) for b in baselines}
    floors = {}
    for b, diffs in differences.items():
        on_accuracy = diffs[diffs.metric == "accuracy"]
        floor = wilcoxon_floor(on_accuracy)
        if floor is not None:
            floors[b] = (floor, int(on_accuracy.n.max()))
    return Comparison(
        stage=stage,
        variants=pd.DataFrame(rows),
        columns=columns,
        differences=differences,
        wilcoxon_floors=floors,
        paired=paired,
        curves={v: mean_curve(variants[v]) for v in order},
        pareto=pareto,
        **{name: _rows_of(t, stage, floor_names) for name, t in (budget_tables or {}).items()},
        below_floors=below,
        highest_floor=highest_floor,
    )
