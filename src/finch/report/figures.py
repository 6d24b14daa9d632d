"""Figures: confusion matrices, learning curves, forest and Pareto plots (matplotlib, no display).

:func:`write_figures` draws every figure of results.md from the report's data; the names below
are the one place figure files are named (the template and the MLflow summaries use them too).
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from finch.io import write_with  # noqa: E402
from finch.report.comparisons import on_pareto_front  # noqa: E402
from finch.report.tables import summed_confusion, variant_label  # noqa: E402

if TYPE_CHECKING:
    from finch.report.results import Report


def slug(stage: str, variant: str) -> str:
    return variant_label(stage, variant).replace("/", "_")


# File names of the figures, relative to the figures folder; the template names them through these.
def confusion_file(stage: str, variant: str) -> str:
    return f"{slug(stage, variant)}_confusion.png"


def curves_file(stage: str, variant: str) -> str:
    return f"{slug(stage, variant)}_curves.png"


def losses_file(stage: str, variant: str) -> str:  # a GAN's per-epoch losses
    return f"{slug(stage, variant)}_losses.png"


def paired_file(stage: str) -> str:
    return f"{stage}_paired_differences.png"


def variant_curves_file(stage: str) -> str:
    return f"{stage}_variants_curves.png"


def pareto_file(stage: str) -> str:
    return f"{stage}_pareto.png"


def forest_file(metric: str) -> str:
    return f"forest_{metric}.png"


def variant_figures(fig_dir: Path, stage: str, variant: str) -> list[Path]:
    """The figures written for one (stage, variant) that exist: its confusion matrix and learning
    curves (classifiers) or its loss curves (a GAN)."""
    paths = [Path(fig_dir) / f(stage, variant) for f in (confusion_file, curves_file, losses_file)]
    return [p for p in paths if p.is_file()]


def write_figures(report: Report, fig_dir: Path, processes: int | None = None) -> None:
    """Every figure results.md shows, under ``fig_dir``.

    The figures are independent, so they are drawn by ``processes`` forked processes (default:
    the cores this process may use); a figure's file does not depend on how many drew them.
    """
    jobs = list(_figure_jobs(report, Path(fig_dir)))
    processes = min(len(jobs), processes or len(os.sched_getaffinity(0)))
    if processes <= 1 or "fork" not in multiprocessing.get_all_start_methods():
        for fn, args, kwargs in jobs:
            fn(*args, **kwargs)
        return
    context = multiprocessing.get_context("fork")  # the figures' data is already in memory
    with ProcessPoolExecutor(processes, mp_context=context) as pool:
        for future in [pool.submit(fn, *args, **kwargs) for fn, args, kwargs in jobs]:
            future.result()  # re-raises a figure's error here


def _figure_jobs(report: Report, fig_dir: Path):
    """(function, args, kwargs) for every figure of the report."""
    for section in report.studies:
        stage = section.study.key
        for rec in section.gan_records:
            title = "conditional DCGAN: losses per epoch"
            yield history_figure, (rec.history, fig_dir / losses_file(rec.stage, rec.variant)), {"title": title}
        c = section.comparison
        if c is not None:
            if c.has_differences:
                title = f"{stage}: paired accuracy differences over seeds"
                rows = c.paired.to_dict("records")
                args = (rows, "accuracy difference", fig_dir / paired_file(stage))
                yield forest_figure, args, {"title": title, "zero": True}
            if not c.budgets.empty and (c.budgets.steps > 0).any():  # budget curves (wsd)
                args = (c.budgets.to_dict("records"), fig_dir / variant_curves_file(stage))
                yield budget_figure, args, {"title": f"{stage}: test accuracy against budget"}
            else:
                curves = {v: curve.to_dict("records") for v, curve in c.curves.items() if not curve.empty}
                args = (curves, fig_dir / variant_curves_file(stage))
                yield variant_curves_figure, args, {"title": f"{stage}: mean over seeds"}
            if c.pareto is not None:
                title = f"{stage}: accuracy against cost"
                yield pareto_figure, (c.pareto.to_dict("records"), fig_dir / pareto_file(stage)), {"title": title}
        for v in section.variants:
            label, recs = variant_label(v.stage, v.variant), v.records
            args = (summed_confusion(recs), recs[0].class_names, fig_dir / confusion_file(v.stage, v.variant))
            yield confusion_figure, args, {"title": f"{label}: confusion summed over {len(recs)} seed(s)"}
            ordered = sorted(recs, key=lambda r: r.seed)
            histories = {f"seed {r.seed}": r.history for r in ordered}
            budgets = {f"seed {r.seed}": r.budgets for r in ordered}
            yield (
                curves_figure,
                (histories, fig_dir / curves_file(v.stage, v.variant)),
                {"title": f"{label}: learning curves", "budgets": budgets},
            )
    for metric, rows in report.forest.items():
        if not rows.empty:
            yield forest_figure, (rows.to_dict("records"), metric, fig_dir / forest_file(metric)), {}


def _save(fig, path: Path | str) -> None:
    write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)


def confusion_figure(confusion, class_names: list[str], path: Path | str, title: str = "") -> None:
    """Row-normalised confusion matrix with counts in each cell."""
    cm = np.asarray(confusion, dtype=float)
    rates = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    n = len(class_names)
    size = max(4.0, 0.6 * n + 2)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    im = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    if n <= 20:
        ax.set_xticks(range(n), class_names, rotation=45, ha="right")
        ax.set_yticks(range(n), class_names)
        for i in range(n):
            for j in range(n):
                ax.text(
                    j,
                    i,
                    f"{int(cm[i, j])}",
                    ha="center",
                    va="center",
                    color="white" if rates[i, j] > 0.5 else "black",
                    fontsize=8,
                )
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or "confusion matrix (share of each true class)")
    fig.colorbar(im, ax=ax, fraction=0.046)
    _save(fig, path)


def curves_figure(
    histories: dict[str, list[dict]], path: Path | str, title: str = "", budgets: dict[str, list[dict]] | None = None
) -> None:
    """Train (and validation) loss per epoch, one line per run; validation accuracy per epoch,
    or, for a run with budgets (wsd), at the end of each budget's decay against its step."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.6))
    at_budgets = any((budgets or {}).values())
    for label, rows in histories.items():
        if not rows:
            continue
        epochs = [r["epoch"] for r in rows]
        if "train_loss" not in rows[0]:  # a closed-form fit (the logistic probe): no loss curve
            line = ax_loss.plot([], [])[0]
        else:
            line = ax_loss.plot(epochs, [r["train_loss"] for r in rows], label=f"{label} train")[0]
        if "val_loss" in rows[0]:
            ax_loss.plot(epochs, [r["val_loss"] for r in rows], "--", color=line.get_color(), label=f"{label} val")
        if at_budgets:
            own = (budgets or {}).get(label, [])
            ax_acc.plot(
                [b["steps"] for b in own], [b["val_accuracy"] for b in own], "o-", color=line.get_color(), label=label
            )
        else:
            ax_acc.plot(epochs, [r["val_accuracy"] for r in rows], color=line.get_color(), label=label)
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss (solid: train, dashed: validation)")
    ax_acc.set_xlabel("budget (optimizer steps)" if at_budgets else "epoch")
    ax_acc.set_ylabel("validation accuracy" + (" at the end of each decay" if at_budgets else ""))
    if ax_acc.get_legend_handles_labels()[0]:
        ax_acc.legend(fontsize=7)
    if len(histories) <= 3 and ax_loss.get_legend_handles_labels()[0]:
        ax_loss.legend(fontsize=7)
    fig.suptitle(title or "learning curves")
    _save(fig, path)


def history_figure(history: list[dict], path: Path | str, title: str = "") -> None:
    """Every per-epoch column of a run's history against the epoch (e.g. GAN losses)."""
    fig, ax = plt.subplots(figsize=(7, 3.6))
    epochs = [r["epoch"] for r in history]
    for key in (k for k in (history[0] if history else {}) if k != "epoch"):
        ax.plot(epochs, [r[key] for r in history], label=key)
    ax.set_xlabel("epoch")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax.set_title(title or "per-epoch curves")
    _save(fig, path)


def variant_curves_figure(curves: dict[str, list[dict]], path: Path | str, title: str = "") -> None:
    """Mean validation accuracy per epoch per variant, shaded between the seeds' min and max."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, rows in curves.items():
        epochs = [r["epoch"] for r in rows]
        line = ax.plot(epochs, [r["val_accuracy"] for r in rows], label=label)[0]
        ax.fill_between(epochs, [r["low"] for r in rows], [r["high"] for r in rows], color=line.get_color(), alpha=0.15)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy (mean; band: min–max over seeds)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax.set_title(title or "learning curves by variant")
    _save(fig, path)


def budget_figure(rows: list[dict], path: Path | str, title: str = "") -> None:
    """Test accuracy against budget (optimizer steps), one line per variant with its two-level
    95% interval as a band; a variant with one model (no budgets) and each floor as a level line."""
    fig, ax = plt.subplots(figsize=(7, 4))
    table = pd.DataFrame(rows)
    steps = table.steps[table.steps > 0]
    span = (steps.min() * 0.9, steps.max() * 1.05) if not steps.empty else (0, 1)
    for (stage, variant), part in table.groupby(["stage", "variant"], sort=False):
        part = part.sort_values("steps")
        label = variant if stage != "floors" else f"floor: {variant}"
        if (part.steps > 0).any():
            line = ax.plot(part.steps, part.test_accuracy, "o-", label=label)[0]
            ax.fill_between(part.steps, part.low, part.high, color=line.get_color(), alpha=0.15)
        else:
            r = part.iloc[0]
            style = ":" if stage == "floors" else "--"
            line = ax.plot(span, [r.test_accuracy] * 2, style, label=label)[0]
            ax.fill_between(span, [r.low] * 2, [r.high] * 2, color=line.get_color(), alpha=0.1)
    ax.set_xlabel("budget (optimizer steps; each point: the end of its decay)")
    ax.set_ylabel("test accuracy (mean over seeds; band: 95% interval)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    ax.set_title(title or "budget curves")
    _save(fig, path)


def pareto_figure(points: list[dict], path: Path | str, title: str = "") -> None:
    """Accuracy (mean, t-interval bars) against trainable parameters and against training time.

    ``points``: dicts with label, accuracy, low, high, trainable, time. Pareto-optimal points
    (more accurate than every cheaper one) are filled and joined by a line.
    """
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    for ax, cost, label in (
        (axes[0], "trainable", "trainable parameters"),
        (axes[1], "time", "training time per run (s)"),
    ):
        front = sorted((p for p in points if on_pareto_front(p, points, cost)), key=lambda p: p[cost])
        for p in points:
            err = [[p["accuracy"] - p["low"]], [p["high"] - p["accuracy"]]] if np.isfinite(p["low"]) else None
            optimal = p in front
            ax.errorbar(
                p[cost],
                p["accuracy"],
                yerr=err,
                fmt="o",
                capsize=3,
                color="tab:red" if optimal else "tab:gray",
                mfc="tab:red" if optimal else "white",
            )
            ax.annotate(p["label"], (p[cost], p["accuracy"]), textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.plot(
            [p[cost] for p in front],
            [p["accuracy"] for p in front],
            "--",
            color="tab:red",
            alpha=0.6,
            label="Pareto front",
        )
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # crowded minor labels on short ranges
        ax.set_xlabel(label + " (log scale)")
        ax.set_ylabel("test accuracy (mean, 95% t interval)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.suptitle(title or "accuracy against cost")
    _save(fig, path)


def forest_figure(
    rows: list[dict], metric: str, path: Path | str, title: str | None = None, zero: bool = False
) -> None:
    """Mean with the t interval (thick) and bootstrap interval (thin) per group.

    ``rows``: dicts with label, mean, t_low, t_high, boot_low, boot_high, n. ``zero``: draw
    the no-difference line (for paired differences).
    """
    fig, ax = plt.subplots(figsize=(6.5, 0.55 * len(rows) + 1.2))
    labelled: set[str] = set()

    def once(name: str) -> str | None:
        if name in labelled:
            return None
        labelled.add(name)
        return name

    for i, r in enumerate(rows):
        y = len(rows) - 1 - i
        if np.isfinite(r["boot_low"]):
            ax.plot(
                [r["boot_low"], r["boot_high"]], [y - 0.12] * 2, color="tab:orange", lw=1.5, label=once("95% bootstrap")
            )
        if np.isfinite(r["t_low"]):
            ax.plot([r["t_low"], r["t_high"]], [y] * 2, color="tab:blue", lw=3.5, label=once("95% t interval"))
        ax.plot([r["mean"]], [y], "o", color="black", label=once("mean"))
    ax.set_yticks(range(len(rows)), [f"{r['label']} (n={r['n']})" for r in reversed(rows)])
    ax.set_xlabel(metric)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    if zero:
        ax.axvline(0.0, color="grey", lw=1, ls="--")
    ax.set_title(title or f"{metric}: mean and 95% intervals over seeds")
    _save(fig, path)
