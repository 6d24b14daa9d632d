"""The aggregate's outputs: the long run table, summary.json, results.md and figures.

Everything here is computed from the per-run records; nothing is typed by hand.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from finch.config import AggregateConfig
from finch.io import read_json, write_json, write_text, write_with
from finch.report import figures
from finch.report.plots import write_plot_data
from finch.report.stats import ALPHA, POWER, adjust_family, paired_differences, summarize
from finch.runs import RunRecord

STAGE_TITLES = {
    "pretrain": "Pretraining on the source classes",
    "teacher": "CNN teacher (fine-tuned from the pretrained backbone)",
    "student": "Distilled ViT student (DeiT-style)",
    "finetune": "Transfer learning: which layers to train",
    "augmented": "Synthetic images: how good they are, and what they add",
    "ablation": "Recipe ablation: one knob at a time against the teacher's recipe",
}
STAGE_NOTES = {
    "ablation": (
        "Each variant is the teacher's model and recipe with the overrides named in `ablation.variants` "
        "(params.yaml), trained from the same pretrained backbone with the same seeds; the reference is the "
        "teacher itself, so each paired difference isolates one knob. Listing more names in `ablation.run` "
        "trains more variants."
    ),
    "student": (
        "Variants: `none` (no teacher; both heads trained on the labels, prediction = their average), "
        "`soft` and `hard` (DeiT's distillation token with the soft KL or hard-label teacher term), "
        "`class_token` (a ViT without the distillation token, the teacher term on its only head). "
        "The teacher of each seed is that seed's CNN teacher. Reported prediction: the average of the "
        "class and distillation heads; the heads alone are listed too."
    ),
    "augmented": (
        "A class-conditional DCGAN (stage `train_gan`) learns the target training images; `generate` draws "
        "labelled images from a fixed seed. `synthetic_only` trains the teacher's recipe on as many synthetic "
        "images as there are real ones (the classification accuracy score, CAS, tested on the real test "
        "split); `mix_r` trains it on the real images plus r times as many synthetic ones. The reference "
        "is the teacher itself: the same recipe on the same real images with the same seeds. Model "
        "selection uses the real validation split in every variant."
    ),
    "finetune": (
        "Strategies on the CNN backbone (pretrained on the source classes): `linear_probe` and `mlp_probe` "
        "(heads on cached features), `frozen_backbone` (backbone frozen in the network, head trained with "
        "augmentation), `partial` (last stage(s) + head), `full` (all, backbone at a lower learning rate), "
        "`lp_ft` (linear probe, then full fine-tuning from that head), `scratch` (same network, random "
        "initialisation). On the ViT backbone: `vit_linear_probe`, `vit_last_block`, `vit_attention_only` "
        "(attention weights + head), `vit_lora` (LoRA adapters on the attention projections + head), "
        "`vit_full`. For the probes, train time and test img/s exclude the backbone: it ran once, in "
        "`extract_features`. `frozen_backbone` trains the same linear head with the probe's epochs and "
        "optimizer, through the network and with augmentation."
    ),
}


def runs_table(records: list[RunRecord]) -> pd.DataFrame:
    """One row per (run, metric): stage, variant, seed, run_key, kind, metric, value."""
    rows = []
    for rec in records:
        d = rec.data
        for kind in ("metrics", "cost"):
            for metric, value in d[kind].items():
                rows.append(
                    {
                        "stage": d["stage"],
                        "variant": d["variant"],
                        "seed": d["seed"],
                        "run_key": d["run_key"],
                        "kind": kind,
                        "metric": metric,
                        "value": float(value),
                    }
                )
    return pd.DataFrame(rows, columns=["stage", "variant", "seed", "run_key", "kind", "metric", "value"])


def _fmt(x: float, digits: int = 4) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _interval(lo: float, hi: float, digits: int = 4) -> str:
    return "—" if math.isnan(lo) else f"[{lo:.{digits}f}, {hi:.{digits}f}]"


def summary_json(summary: pd.DataFrame, metrics: list[str] | None = None) -> dict:
    """Nested stage → variant → metric → {n, mean, std, t and bootstrap bounds}; only
    ``metrics`` when given (summary.json holds the headline metrics so that `dvc metrics show`
    stays readable; summary.csv holds every metric)."""
    out: dict = {}
    if metrics is not None:
        summary = summary[summary.metric.isin(metrics)]
    for r in summary.itertuples(index=False):
        entry = {"n": int(r.n), "mean": r.mean}
        for key in ("std", "t_low", "t_high", "boot_low", "boot_high"):
            value = getattr(r, key)
            entry[key] = None if math.isnan(value) else value
        out.setdefault(r.stage, {}).setdefault(r.variant, {})[r.metric] = entry
    return out


def _metric_table(summary: pd.DataFrame, metrics: list[str], confidence: float) -> list[str]:
    pct = f"{confidence:.0%}"
    lines = [
        f"| metric | n | mean | std | {pct} t interval | {pct} bootstrap interval |",
        "|---|---:|---:|---:|---|---|",
    ]
    for metric in metrics:
        row = summary[summary.metric == metric]
        if row.empty:
            continue
        r = row.iloc[0]
        lines.append(
            f"| {metric} | {int(r.n)} | {_fmt(r['mean'])} | {_fmt(r['std'])} | "
            f"{_interval(r.t_low, r.t_high)} | {_interval(r.boot_low, r.boot_high)} |"
        )
    return lines


def _per_seed_table(records: list[RunRecord], metrics: list[str]) -> list[str]:
    lines = ["| seed | " + " | ".join(metrics) + " | best epoch |", "|---:|" + "---:|" * (len(metrics) + 1)]
    for rec in sorted(records, key=lambda r: r.data["seed"]):
        vals = " | ".join(_fmt(rec.data["metrics"].get(m, float("nan"))) for m in metrics)
        lines.append(f"| {rec.data['seed']} | {vals} | {rec.data['best_epoch']} |")
    return lines


def _cost_table(summary: pd.DataFrame) -> list[str]:
    names = {
        "params_total": ("parameters (total)", 0),
        "params_trainable": ("parameters (trainable)", 0),
        "train_time_s": ("training time per run (s)", 1),
        "train_images_per_s": ("training throughput (img/s)", 0),
        "eval_images_per_s": ("test throughput (img/s)", 0),
        "peak_memory_mb": ("peak memory (MB)", 0),
    }
    lines = ["| cost | mean over seeds |", "|---|---:|"]
    for key, (label, digits) in names.items():
        row = summary[summary.metric == key]
        if not row.empty:
            lines.append(f"| {label} | {row.iloc[0]['mean']:,.{digits}f} |")
    return lines


def write_reports(
    records: list[RunRecord], card_path: Path, out: Path, cfg: AggregateConfig, quality_path: Path | None = None
) -> pd.DataFrame:
    """Write runs.csv, summary.json, results.md and figures under ``out``; return the summary.

    ``quality_path``: the generate stage's synthetic_quality.json, for the synthetic-data section.
    """
    out = Path(out)
    table = runs_table(records)
    write_with(out / "runs.csv", lambda tmp: table.to_csv(tmp, index=False, float_format="%.10g"))
    summary = summarize(table, cfg.confidence, cfg.bootstrap_resamples, cfg.bootstrap_seed)
    write_json(out / "summary.json", summary_json(summary, cfg.headline_metrics))
    write_with(out / "summary.csv", lambda tmp: summary.to_csv(tmp, index=False, float_format="%.10g"))
    families = all_comparisons(table, summary, cfg)
    comparisons = pd.concat([f for f in families.values() if not f.empty] or [pd.DataFrame()], ignore_index=True)
    write_with(out / "comparisons.csv", lambda tmp: comparisons.to_csv(tmp, index=False, float_format="%.10g"))
    write_plot_data(records, summary, out / "plots")

    fig_dir = out / "figures"
    card = read_json(card_path) if Path(card_path).is_file() else None
    lines = [
        "# Finch results",
        "",
        "Generated by the `aggregate` stage from the per-run records in `reports/runs/`; "
        "do not edit by hand. Browse every run with `mlflow ui` (see README).",
        "",
    ]
    if card:
        t = card["target"]
        counts = {s: sum(c.values()) for s, c in t["counts"].items()}
        lines += [
            "## Data",
            "",
            f"Source `{card['source']}` at {card['image_size']} px, {card['channels']} channel(s). "
            f"Target task: {len(t['classes'])} classes ({', '.join(t['classes'])}); "
            f"{counts['train']} training, {counts['val']} validation and {counts['test']} test images "
            f"(content hash `{t['content_hash'][:12]}`).",
            "",
        ]
    by_group: dict[tuple[str, str], list[RunRecord]] = {}
    for rec in records:
        if "confusion" in rec.data:  # classifiers; the GAN has its own section
            by_group.setdefault((rec.data["stage"], rec.data["variant"]), []).append(rec)
    gan_records = [r for r in records if r.data["stage"] == "gan"]

    forest_rows = {m: [] for m in cfg.headline_metrics}
    current_stage = None
    for (stage, variant), recs in sorted(by_group.items(), key=lambda kv: _stage_order(kv[0])):
        if stage != current_stage:
            current_stage = stage
            variants = {v: rs for (s, v), rs in by_group.items() if s == stage}
            lines += [f"## {STAGE_TITLES.get(stage, stage)}", ""]
            if stage in STAGE_NOTES:
                lines += [STAGE_NOTES[stage], ""]
            if stage == "augmented":
                quality = read_json(quality_path) if quality_path and Path(quality_path).is_file() else None
                lines += _synthetic_section(gan_records, quality, fig_dir)
            if len(variants) > 1 or cfg.baselines.get(stage):
                lines += _comparison_section(stage, variants, table, summary, cfg, fig_dir, families)
            lines += _ensemble_section(variants)
        group = summary[(summary.stage == stage) & (summary.variant == variant)]
        label = stage if variant == "default" else f"{stage}/{variant}"
        slug = label.replace("/", "_")
        class_metrics = sorted(m for m in group.metric if m.startswith("class_acc."))
        lines += [f"### {label}", ""]
        lines += _metric_table(
            group, [*cfg.headline_metrics, "precision_macro", "recall_macro", "top5_accuracy"], cfg.confidence
        )
        lines += ["", "Per-class accuracy (recall):", ""]
        lines += _metric_table(group, class_metrics, cfg.confidence)
        lines += ["", "Per seed:", ""]
        lines += _per_seed_table(recs, cfg.headline_metrics)
        lines += ["", *_cost_table(group), ""]
        lines += _kfold_lines(recs)

        confusion = np.sum([np.asarray(r.data["confusion"]) for r in recs], axis=0)
        figures.confusion_figure(
            confusion,
            recs[0].data["class_names"],
            fig_dir / f"{slug}_confusion.png",
            title=f"{label}: confusion summed over {len(recs)} seed(s)",
        )
        figures.curves_figure(
            {f"seed {r.data['seed']}": r.history for r in sorted(recs, key=lambda r: r.data["seed"])},
            fig_dir / f"{slug}_curves.png",
            title=f"{label}: learning curves",
        )
        lines += [
            f"![{label} confusion matrix](figures/{slug}_confusion.png)",
            f"![{label} learning curves](figures/{slug}_curves.png)",
            "",
        ]
        for metric in cfg.headline_metrics:
            row = group[group.metric == metric]
            if not row.empty and row.iloc[0]["n"] > 1:  # a single run has no interval to plot
                forest_rows[metric].append({"label": label, **row.iloc[0].to_dict()})

    lines += ["## Overview", ""]
    for metric, rows in forest_rows.items():
        if rows:
            figures.forest_figure(rows, metric, fig_dir / f"forest_{metric}.png")
            lines.append(f"![{metric} forest plot](figures/forest_{metric}.png)")
    lines.append("")
    write_text(out / "results.md", "\n".join(lines))
    return summary


# optional columns of the comparison table: (metric, header, digits); shown when a stage has the metric
OPTIONAL_COLUMNS = [
    ("accuracy.head_cls", "class head", 4),
    ("accuracy.head_dist", "distillation head", 4),
    ("teacher_agreement", "agreement with teacher", 4),
    ("params_total", "parameters", 0),
    ("params_trainable", "trainable", 0),
    ("train_time_s", "train s/run", 1),
    ("eval_images_per_s", "test img/s", 0),
]


def _comparison_section(
    stage: str,
    variants: dict[str, list[RunRecord]],
    table: pd.DataFrame,
    summary: pd.DataFrame,
    cfg: AggregateConfig,
    fig_dir: Path,
    families: dict[str, pd.DataFrame],
) -> list[str]:
    """Variants side by side, paired differences against the stage's baselines, curves."""
    pct = f"{cfg.confidence:.0%}"
    baselines = present_baselines(stage, summary, cfg)
    order = sorted(variants, key=lambda v: (v not in baselines, list(variants).index(v)))
    present = set(summary[summary.stage == stage].metric)
    columns = [c for c in OPTIONAL_COLUMNS if c[0] in present]
    lines = [
        f"| variant | n | accuracy | {pct} t interval | {pct} bootstrap | " + " | ".join(c[1] for c in columns) + " |",
        "|---|---:|---:|---|---|" + "---:|" * len(columns),
    ]

    def mean_of(stage: str, variant: str, metric: str, digits: int) -> str:
        row = summary[(summary.stage == stage) & (summary.variant == variant) & (summary.metric == metric)]
        return "—" if row.empty else f"{row.iloc[0]['mean']:,.{digits}f}"

    def accuracy_row(stage: str, variant: str, label: str) -> str:
        r = summary[(summary.stage == stage) & (summary.variant == variant) & (summary.metric == "accuracy")].iloc[0]
        extra = " | ".join(mean_of(stage, variant, m, d) for m, _, d in columns)
        return (
            f"| {label} | {int(r.n)} | {_fmt(r['mean'])} | {_interval(r.t_low, r.t_high)} | "
            f"{_interval(r.boot_low, r.boot_high)} | {extra} |"
        )

    lines += [accuracy_row(stage, v, v) for v in order]
    if stage == "student" and not summary[summary.stage == "teacher"].empty:
        lines.append(accuracy_row("teacher", "default", "*CNN teacher (reference)*"))
    for b in baselines:
        if "/" in b:  # a baseline from another stage: show it as a reference row
            lines.append(accuracy_row(*b.split("/", 1), f"*{b} (reference)*"))
    family = families[stage]
    for baseline in baselines:
        diffs = family[family.baseline == baseline]
        lines += ["", f"Paired differences against `{baseline}` (same seeds; variant minus {baseline}):", ""]
        lines += _comparison_table(diffs, pct)
        lines += ["", *_verdicts(diffs[diffs.metric == "accuracy"], baseline, pct), ""]
    if not family.empty:
        rows = [
            {**r, "label": f"{r['variant']} − {r['baseline']}", "mean": r["mean_diff"]}
            for r in family[family.metric == "accuracy"].to_dict("records")
        ]
        figures.forest_figure(
            rows,
            "accuracy difference",
            fig_dir / f"{stage}_paired_differences.png",
            title=f"{stage}: paired accuracy differences over seeds",
            zero=True,
        )
        lines += [
            COMPARISON_NOTE.format(pct=pct, power=f"{POWER:.0%}", alpha=ALPHA),
            "",
            f"![{stage}: paired accuracy differences](figures/{stage}_paired_differences.png)",
            "",
        ]
    curves = {v: _mean_curve(variants[v]) for v in order}
    figures.variant_curves_figure(curves, fig_dir / f"{stage}_variants_curves.png", title=f"{stage}: mean over seeds")
    lines += [f"![{stage} variants: validation accuracy per epoch](figures/{stage}_variants_curves.png)", ""]
    counts = summary[(summary.stage == stage) & summary.metric.isin(["params_total", "params_trainable"])]
    freezes = counts.pivot(index="variant", columns="metric", values="mean").pipe(
        lambda c: bool((c.get("params_trainable", c.get("params_total")) < c.get("params_total")).any())
    )
    if freezes:  # a cost/accuracy trade-off only where some variant trains fewer parameters
        points = []
        for v in order:
            row = lambda m, v=v: summary[(summary.stage == stage) & (summary.variant == v) & (summary.metric == m)]  # noqa: E731
            acc = row("accuracy").iloc[0]
            points.append(
                {
                    "label": v,
                    "accuracy": acc["mean"],
                    "low": acc.t_low,
                    "high": acc.t_high,
                    "trainable": row("params_trainable").iloc[0]["mean"],
                    "time": row("train_time_s").iloc[0]["mean"],
                }
            )
        figures.pareto_figure(points, fig_dir / f"{stage}_pareto.png", title=f"{stage}: accuracy against cost")
        front = [p["label"] for p in points if figures.on_pareto_front(p, points, "trainable")]
        lines += [
            f"![{stage}: accuracy against trainable parameters and training time](figures/{stage}_pareto.png)",
            "",
            f"Pareto front (no other variant is both more accurate and has fewer trainable parameters): "
            f"{', '.join(f'`{f}`' for f in front)}.",
            "",
        ]
    return lines


COMPARISON_NOTE = (
    "How to read these: the paired t interval is the primary {pct} interval of the mean difference; the "
    "percentile bootstrap from so few seeds under-covers (it is narrower than it should be). p-values are "
    "two-sided, Holm-adjusted across every comparison this study declares for that metric (`aggregate."
    "baselines` in params.yaml). The exact Wilcoxon test cannot go below 2/2^n (0.0625 with 5 seeds), so "
    "it can never reject at alpha {alpha} with 5 seeds. *P(higher)*: the share of seeds where the variant "
    "beats the baseline. *seeds for {power}*: paired seeds a t-test would need to resolve the observed "
    "difference at {power} power (alpha {alpha}), taking the observed spread as the truth — a rough "
    "planning number, ∞ where no difference was seen."
)


def study_comparisons(table: pd.DataFrame, stage: str, baselines: list[str], cfg: AggregateConfig) -> pd.DataFrame:
    """Every declared comparison of ``stage`` (each variant against each baseline), paired by
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
        )
        for baseline in baselines
    ]
    parts = [p for p in parts if not p.empty]
    if not parts:
        return pd.DataFrame(columns=["stage", "variant", "baseline", "metric"])
    return adjust_family(pd.concat(parts, ignore_index=True))


def _p(x: float) -> str:
    if x is None or math.isnan(x):
        return "—"
    return f"{x:.3f}" if x >= 0.001 else f"{x:.1e}"


def _seeds(x: float) -> str:
    if x is None or math.isnan(x):
        return "—"
    return "∞" if math.isinf(x) else f"{int(x)}"


def _comparison_table(diffs: pd.DataFrame, pct: str) -> list[str]:
    lines = [
        f"| variant | metric | n | mean difference | {pct} paired t interval | {pct} bootstrap | P(higher) | "
        "t-test p (Holm) | Wilcoxon p (Holm) | seeds for 80% | note |",
        "|---|---|---:|---:|---|---|---:|---|---|---:|---|",
    ]
    for r in diffs.itertuples(index=False):
        lines.append(
            f"| {r.variant} | {r.metric} | {r.n} | {r.mean_diff:+.4f} | {_interval(r.t_low, r.t_high)} | "
            f"{_interval(r.boot_low, r.boot_high)} | {r.p_improvement:.0%} | {_p(r.t_p)} ({_p(r.t_p_holm)}) | "
            f"{_p(r.wilcoxon_p)} ({_p(r.wilcoxon_p_holm)}) | {_seeds(r.seeds_needed)} | {r.note} |"
        )
    return lines


def present_baselines(stage: str, summary: pd.DataFrame, cfg: AggregateConfig) -> list[str]:
    """The stage's declared baselines that have runs (a variant, or another stage's "stage/variant")."""
    variants = set(summary[summary.stage == stage].variant)
    return [b for b in cfg.baselines.get(stage, []) if b in variants or _exists(b, summary)]


def all_comparisons(table: pd.DataFrame, summary: pd.DataFrame, cfg: AggregateConfig) -> dict[str, pd.DataFrame]:
    """stage → its comparison family (see :func:`study_comparisons`)."""
    return {
        stage: study_comparisons(table, stage, present_baselines(stage, summary, cfg), cfg)
        for stage in sorted(set(summary.stage))
    }


def ensembles(records: list[RunRecord]) -> list[dict]:
    """The ``ensemble.json`` files written next to the seed runs of each variant."""
    seen, out = set(), []
    for rec in records:
        path = Path(rec.path).parent / "ensemble.json"
        if path not in seen and path.is_file():
            seen.add(path)
            out.append(read_json(path))
    return out


def _ensemble_section(variants: dict[str, list[RunRecord]]) -> list[str]:
    """Each variant's seed models averaged (probabilities) next to the single-model mean."""
    found = ensembles([r for recs in variants.values() for r in recs])
    if not found:
        return []
    lines = [
        "Ensembles of the seed models (mean of their test probabilities) against the mean single model:",
        "",
        "| variant | models | single-model accuracy (mean) | ensemble accuracy | gain | single ECE | ensemble ECE |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for e in found:
        single, ens = e["single_mean"], e["ensemble"]
        lines.append(
            f"| {e['variant']} | {len(e['seeds'])} | {single['accuracy']:.4f} | {ens['accuracy']:.4f} | "
            f"{ens['accuracy'] - single['accuracy']:+.4f} | {_fmt(single.get('ece', float('nan')))} | "
            f"{_fmt(ens.get('ece', float('nan')))} |"
        )
    return [*lines, ""]


def _kfold_lines(recs: list[RunRecord]) -> list[str]:
    """The fold spread of k-fold model selection, per seed (when ``recipe.kfold.k`` >= 2)."""
    folded = [r for r in recs if "kfold" in r.data]
    if not folded:
        return []
    k = folded[0].data["kfold"]["k"]
    lines = [
        f"{k}-fold model selection (train + validation split into {k} folds; the fold with the best validation "
        "accuracy is the seed's model):",
        "",
        "| seed | validation accuracy per fold | mean ± std | test accuracy std over folds | selected fold |",
        "|---:|---|---|---:|---:|",
    ]
    for r in sorted(folded, key=lambda r: r.data["seed"]):
        kf = r.data["kfold"]
        per_fold = ", ".join(f"{v:.3f}" for v in kf["val_accuracy"])
        lines.append(
            f"| {r.data['seed']} | {per_fold} | {kf['val_accuracy_mean']:.4f} ± {kf['val_accuracy_std']:.4f} | "
            f"{kf['test_accuracy_std']:.4f} | {kf['selected_fold']} |"
        )
    return [*lines, ""]


def _exists(stage_variant: str, summary: pd.DataFrame) -> bool:
    if "/" not in stage_variant:
        return False
    stage, variant = stage_variant.split("/", 1)
    return not summary[(summary.stage == stage) & (summary.variant == variant)].empty


def _synthetic_section(gan_records: list[RunRecord], quality: dict | None, fig_dir: Path) -> list[str]:
    """The GAN's training, its samples, and the quality of its images."""
    lines = []
    for rec in gan_records:
        figures.history_figure(rec.history, fig_dir / "gan_losses.png", title="conditional DCGAN: losses per epoch")
        lines += [
            "Samples (one row per class, fixed seed):",
            "",
            "![GAN samples](gan_samples.png)",
            "![GAN losses](figures/gan_losses.png)",
            "",
        ]
        warnings = rec.data.get("warnings", [])
        lines += [f"Training warnings: {len(warnings)}."] + [f"- {w}" for w in warnings] + [""]
    if quality:
        o, ref = quality["overall"], quality.get("real_train_vs_test", {})
        lines += [
            f"Quality of {quality['per_class_generated']} generated images per class against the real test images, "
            "in the feature space of the pretrained CNN backbone (Inception weights are not reachable offline): "
            "Fréchet distance (FD), kernel distance (KID, mean ± std over subsets), and k-NN precision "
            "(share of generated images inside the real manifold) and recall (share of real images inside "
            "the generated one).",
            "",
            "| set | FD | KID | precision | recall |",
            "|---|---:|---:|---:|---:|",
            f"| all classes | {o['fid']:.3f} | {o['kid']:.4f} ± {o['kid_std']:.4f} | {o['precision']:.3f} | "
            f"{o['recall']:.3f} |",
        ]
        for name, q in quality["per_class"].items():
            lines.append(
                f"| {name} | {q['fid']:.3f} | {q['kid']:.4f} ± {q['kid_std']:.4f} | {q['precision']:.3f} | "
                f"{q['recall']:.3f} |"
            )
        if ref:
            lines.append(
                f"| *reference: real training vs real test images* | {ref['fid']:.3f} | "
                f"{ref['kid']:.4f} ± {ref['kid_std']:.4f} | — | — |"
            )
        lines.append("")
    return lines


def _verdicts(diffs: pd.DataFrame, baseline: str, pct: str) -> list[str]:
    """One plain sentence per variant: its paired t interval on accuracy, the Holm-adjusted
    p-value, and how many seeds the observed difference would need."""
    out = []
    for r in diffs.itertuples(index=False):
        holm = f"Holm-adjusted t-test p = {_p(r.t_p_holm)}"
        if math.isnan(r.t_low):
            out.append(f"- `{r.variant}` vs `{baseline}`: too few paired seeds (n={r.n}) for an interval.")
        elif r.t_low > 0 or r.t_high < 0:
            word = "beats" if r.t_low > 0 else "is worse than"
            adjusted = "" if r.t_p_holm < ALPHA else "; not significant once the family is Holm-adjusted"
            out.append(
                f"- `{r.variant}` {word} `{baseline}` on accuracy by {r.mean_diff:+.4f} "
                f"(the {pct} paired interval excludes 0, n={r.n}; {holm}{adjusted})."
            )
        else:
            need = _seeds(r.seeds_needed)
            out.append(
                f"- `{r.variant}` vs `{baseline}`: {r.mean_diff:+.4f} accuracy, but the {pct} paired interval "
                f"contains 0 (n={r.n}; {holm}): no difference resolved at this number of seeds; about {need} "
                f"paired seeds would be needed to resolve a difference this size at {POWER:.0%} power."
            )
    floors = diffs.wilcoxon_min_p.dropna()
    if not floors.empty and floors.min() > ALPHA:
        n = int(diffs.n.max())
        out.append(
            f"- With {n} paired seeds the exact Wilcoxon test cannot reach p < {ALPHA} (its smallest possible "
            f"p-value is {floors.min():.4g}); only the t-based numbers can resolve a difference here."
        )
    return out


def _mean_curve(recs: list[RunRecord]) -> list[dict]:
    """Per-epoch mean of validation accuracy over seeds (epochs all seeds reached)."""
    n = min(len(r.history) for r in recs)
    return [
        {
            "epoch": i + 1,
            "val_accuracy": float(np.mean([r.history[i]["val_accuracy"] for r in recs])),
            "low": float(np.min([r.history[i]["val_accuracy"] for r in recs])),
            "high": float(np.max([r.history[i]["val_accuracy"] for r in recs])),
        }
        for i in range(n)
    ]


def _stage_order(group: tuple[str, str]) -> tuple[int, str, str]:
    order = list(STAGE_TITLES)
    stage, variant = group
    return (order.index(stage) if stage in order else len(order), stage, variant)
