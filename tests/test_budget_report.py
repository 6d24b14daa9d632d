"""Budget curves in the report (issue 26, points 2-4): two-level intervals, the plateau rule, every
comparison at every budget, floors with intervals, and the headline that shows them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from finch.config import AggregateConfig
from finch.io import write_json
from finch.report import figures
from finch.report.budgets import (
    DEPENDS,
    HOLDS,
    IMPROVING,
    NO_DIFFERENCE,
    PLATEAU,
    UNDETERMINED,
    comparison_verdict,
    plateau_mark,
    two_level,
)
from finch.report.headline import render_from_reports
from finch.report.results import write_reports
from finch.runs import RunKind, RunRecord, find_records, pack_correct

N = 2000  # test images
RNG = np.random.default_rng(0)


def bits(accuracy: float, seed: int) -> np.ndarray:
    """Which of N test images a model got right: the first share of a fixed random order, so a
    more accurate model gets right what a less accurate one did, and more."""
    order = np.random.default_rng(seed).permutation(N)
    out = np.zeros(N, dtype=bool)
    out[order[: int(round(accuracy * N))]] = True
    return out


def record(stage, variant, seed, curve: dict[int, float]) -> RunRecord:
    """A run whose budgets (steps → accuracy) each got the test images of :func:`bits` right."""
    budgets = [
        {
            "steps": s,
            "epochs": s / 10,
            "val_accuracy": a,
            "test_accuracy": a,
            "test_correct": pack_correct(bits(a, seed)),
        }
        for s, a in sorted(curve.items())
    ]
    last = budgets[-1]
    return RunRecord.create(
        stage=stage,
        variant=variant,
        seed=seed,
        kind=RunKind.CLASSIFIER,
        settings={"stage": stage, "variant": variant, "seed": seed},
        profile="test",
        device="cpu",
        numerics="test numerics",
        metrics={"accuracy": last["test_accuracy"]},
        cost={"train_time_s": 1.0},
        class_names=["a", "b"],
        confusion=[[N // 2, 0], [0, N // 2]],
        budgets=budgets,
        test_correct=last["test_correct"],
    )


def test_two_level_interval_covers_seeds_and_test_images_and_stays_in_0_1():
    one_seed = bits(0.8, 0)[None, :].astype(float)
    mean, low, high = two_level(one_seed, 2000, 0, 0.95)
    se = np.sqrt(0.8 * 0.2 / N)  # a binomial interval's half-width, about 1.96 SE
    assert mean == pytest.approx(0.8) and high - low == pytest.approx(2 * 1.96 * se, rel=0.15)
    spread = np.stack([bits(a, s) for s, a in enumerate((0.70, 0.80, 0.90))]).astype(float)
    _, low3, high3 = two_level(spread, 2000, 0, 0.95)
    assert high3 - low3 > 3 * (high - low)  # the seeds' spread is in it too
    perfect = np.ones((3, N))
    assert two_level(perfect, 500, 0, 0.95) == (1.0, 1.0, 1.0)  # never past 1
    same = spread - spread  # a paired difference of identical runs
    assert two_level(same, 500, 0, 0.95) == (0.0, 0.0, 0.0)


@pytest.mark.parametrize(
    ("low", "high", "mark"),
    [(-0.004, 0.006, PLATEAU), (0.002, 0.008, PLATEAU), (0.004, 0.03, IMPROVING), (-0.01, 0.02, UNDETERMINED)],
)
def test_plateau_mark(low, high, mark):
    assert plateau_mark(low, high, delta=0.01) == mark


def test_comparison_verdict():
    assert comparison_verdict([(0.01, 0.03), (0.02, 0.05)]) == HOLDS
    assert comparison_verdict([(-0.05, -0.01), (-0.04, -0.02)]) == HOLDS
    assert comparison_verdict([(0.01, 0.03), (-0.01, 0.02)]) == DEPENDS
    assert comparison_verdict([(0.01, 0.03), (-0.05, -0.01)]) == DEPENDS
    assert comparison_verdict([(-0.01, 0.02), (-0.02, 0.01)]) == NO_DIFFERENCE


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    """A student study over 3 seeds at two budgets: `none` gains 0.10 from 500 to 1000 steps,
    `hard` gains nothing; `hard` beats `none` at 500 steps and loses at 1000. A pixel floor with
    its test bits."""
    root = tmp_path_factory.mktemp("budgets")
    runs = root / "runs"
    for seed in range(3):
        record("student", "none", seed, {500: 0.70 + 0.005 * seed, 1000: 0.80 + 0.005 * seed}).write(runs)
        record("student", "hard", seed, {500: 0.75 + 0.005 * seed, 1000: 0.75 + 0.005 * seed}).write(runs)
    floor = bits(0.72, 9)
    floors = {
        "pixel_knn": {
            "label": "k-nearest neighbours on raw pixels",
            "param": "k",
            "value": 5,
            "val_accuracy": {"5": 0.7},
            "metrics": {"accuracy": float(floor.mean())},
            "test_images": N,
            "test_correct": pack_correct(floor),
        }
    }
    write_json(root / "floors.json", {"floors": floors})
    cfg = AggregateConfig(bootstrap_resamples=500, headline_metrics=["accuracy"])
    write_reports(find_records(runs), root / "no-card.json", root / "out", cfg, floors_path=root / "floors.json")
    return root / "out"


def test_the_plateau_rule_over_every_seed(reports):
    plateau = pd.read_csv(reports / "plateau.csv").set_index("variant")
    assert plateau.loc["none", "mark"] == IMPROVING and plateau.loc["none", "gain"] == pytest.approx(0.10)
    assert plateau.loc["hard", "mark"] == PLATEAU and plateau.loc["hard", "gain"] == 0.0
    assert (plateau.n == 3).all() and (plateau.from_steps == 500).all() and (plateau.to_steps == 1000).all()


def test_every_comparison_at_every_budget(reports):
    at = pd.read_csv(reports / "budget_comparisons.csv")
    hard = at[(at.variant == "hard") & (at.baseline == "none")].set_index("steps")
    assert hard.loc[500, "diff"] == pytest.approx(0.05) and hard.loc[500, "low"] > 0
    assert hard.loc[1000, "diff"] == pytest.approx(-0.05) and hard.loc[1000, "high"] < 0
    assert set(hard.verdict) == {DEPENDS}


def test_floors_get_an_interval_over_the_test_images(reports):
    budgets = pd.read_csv(reports / "budgets.csv")
    floor = budgets[budgets.stage == "floors"].iloc[0]
    assert floor.low < floor.test_accuracy < floor.high and floor.high - floor.low < 0.06
    student = budgets[(budgets.stage == "student") & (budgets.variant == "none")].set_index("steps")
    assert list(student.index) == [500, 1000] and student["last"].tolist() == [False, True]
    assert ((budgets.low >= 0) & (budgets.high <= 1)).all()


def test_the_headline_and_results_show_marks_and_verdicts(reports):
    headline = render_from_reports(reports)
    assert "| student | none | 0.805 |" in headline and "**still improving**" in headline
    assert "+0.000 [+0.000, +0.000]: plateau" in headline
    assert "vs `none`: +0.050 [" in headline and "**depends on the budget**" in headline
    assert "| floors | pixel_knn | 0.720 | [" in headline
    results = (reports / "results.md").read_text()
    assert "Plateau rule" in results and "Every comparison at every budget" in results
    assert "test split is evaluated after the design" in results
    assert (reports / "figures" / figures.variant_curves_file("student")).is_file()  # accuracy against budget


def test_the_wsd_table_is_shown_only_for_the_data_it_was_measured_on(tmp_path):
    from finch.report.results import schedules_table

    path = tmp_path / "table.md"
    path.write_text("<!-- data: abc -->\n| model | cosine | wsd |\n")
    assert schedules_table(path, {"target": {"content_hash": "abc"}}) == "| model | cosine | wsd |"
    assert schedules_table(path, {"target": {"content_hash": "other"}}) is None  # your own data: not shown
    assert schedules_table(tmp_path / "missing.md", {"target": {"content_hash": "abc"}}) is None
