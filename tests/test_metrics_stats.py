import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from finch.evaluate import class_key, classification_metrics, expected_calibration_error
from finch.report.stats import bootstrap_interval, summarize, t_interval
from finch.report.verify import verify


def test_metrics_against_hand_computed_values():
    y = np.array([0, 0, 1, 1, 2, 2])
    probs = np.array(
        [
            [0.8, 0.1, 0.1],  # 0 → 0 ok
            [0.3, 0.6, 0.1],  # 0 → 1 wrong
            [0.1, 0.7, 0.2],  # 1 → 1 ok
            [0.2, 0.5, 0.3],  # 1 → 1 ok
            [0.1, 0.1, 0.8],  # 2 → 2 ok
            [0.5, 0.2, 0.3],  # 2 → 0 wrong
        ]
    )
    m, cm = classification_metrics(y, probs, ["a", "b", "c"], ece_bins=10)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert cm == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    # precision: a 1/2, b 2/3, c 1/1; recall: a 1/2, b 1, c 1/2
    assert m["precision_macro"] == pytest.approx((0.5 + 2 / 3 + 1) / 3)
    assert m["recall_macro"] == pytest.approx((0.5 + 1 + 0.5) / 3)
    f1 = [2 * p * r / (p + r) for p, r in ((0.5, 0.5), (2 / 3, 1), (1, 0.5))]
    assert m["f1_macro"] == pytest.approx(np.mean(f1))
    assert m["class_acc.b"] == 1.0 and m["class_acc.a"] == 0.5
    # ECE with 10 bins: confidences 0.8,0.6,0.7,0.5,0.8,0.5; each bin |acc - conf| weighted
    conf = probs.max(1)
    correct = probs.argmax(1) == y
    ece = 0.0
    for lo in np.arange(0, 1, 0.1):
        inside = (conf > lo) & (conf <= lo + 0.1)
        if inside.any():
            ece += inside.mean() * abs(correct[inside].mean() - conf[inside].mean())
    assert m["ece"] == pytest.approx(ece, abs=1e-6)
    assert 0.5 < m["auroc_macro"] <= 1.0
    assert "top5_accuracy" not in m


@pytest.mark.parametrize("num_classes,n_bins", [(4, 15), (10, 15), (3, 5)])
def test_calibration_error_is_torchmetrics_to_the_bit(num_classes, n_bins):
    from torchmetrics.functional.classification import multiclass_calibration_error

    rng = np.random.default_rng(num_classes)
    logits = rng.normal(scale=3.0, size=(997, num_classes))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    probs[:5] = np.eye(num_classes)[rng.integers(0, num_classes, 5)]  # confidence exactly 1.0
    probs[5] = 1.0 / num_classes  # a tie, confidence on a bin boundary where n_bins allows
    y = rng.integers(0, num_classes, len(probs))
    ours = expected_calibration_error(probs, y, n_bins)
    theirs = multiclass_calibration_error(
        torch.from_numpy(probs).float(), torch.from_numpy(y).long(), num_classes=num_classes, n_bins=n_bins, norm="l1"
    )
    assert ours == float(theirs)
    assert 0.0 < ours < 1.0


def test_calibration_error_by_hand():
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.45, 0.55]])
    y = np.array([0, 1, 1, 0])
    # 2 bins: [0, .5) empty; [.5, 1]: mean confidence (0.9+0.8+0.7+0.55)/4, accuracy 2/4
    assert expected_calibration_error(probs, y, 2) == pytest.approx(abs(0.7375 - 0.5), abs=1e-6)
    # 10 bins: .9 right, .8 wrong, .7 right, .55 wrong, one each
    assert expected_calibration_error(probs, y, 10) == pytest.approx((0.1 + 0.8 + 0.3 + 0.55) / 4, abs=1e-6)


def test_training_processes_do_not_import_torchmetrics():
    import subprocess
    import sys

    code = "import sys, finch.study, finch.evaluate; print('torchmetrics' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_top5_only_with_more_than_five_classes():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(7), size=50)
    y = np.arange(50) % 7
    m, _ = classification_metrics(y, probs, [f"c{i}" for i in range(7)])
    expected = np.mean([y[i] in np.argsort(-probs[i])[:5] for i in range(50)])
    assert m["top5_accuracy"] == pytest.approx(expected)


def test_class_keys_are_metric_safe():
    assert class_key("T-shirt/top") == "t_shirt_top"
    assert class_key("001.Black_footed_Albatross") == "001_black_footed_albatross"


def test_t_interval_matches_scipy():
    x = [0.71, 0.69, 0.74, 0.70, 0.72]
    lo, hi = t_interval(x, 0.95)
    half = stats.t.ppf(0.975, 4) * np.std(x, ddof=1) / np.sqrt(5)
    assert lo == pytest.approx(np.mean(x) - half) and hi == pytest.approx(np.mean(x) + half)


def test_bootstrap_interval_seeded_and_sane():
    x = [0.71, 0.69, 0.74, 0.70, 0.72]
    a, b = bootstrap_interval(x, seed=1), bootstrap_interval(x, seed=1)
    assert a == b
    assert min(x) <= a[0] <= np.mean(x) <= a[1] <= max(x)


def test_degenerate_samples():
    assert all(np.isnan(v) for v in t_interval([0.5]))
    assert all(np.isnan(v) for v in bootstrap_interval([0.5]))
    assert t_interval([0.5, 0.5, 0.5]) == (0.5, 0.5)
    assert bootstrap_interval([0.5, 0.5, 0.5]) == (0.5, 0.5)


def test_summarize_groups_by_stage_variant_metric():
    runs = pd.DataFrame(
        {
            "stage": ["t"] * 4,
            "variant": ["v"] * 4,
            "seed": [0, 1, 0, 1],
            "metric": ["acc", "acc", "f1", "f1"],
            "value": [0.5, 0.7, 0.4, 0.4],
        }
    )
    s = summarize(runs, 0.95, 999, 0).set_index("metric")
    assert s.loc["acc", "n"] == 2 and s.loc["acc", "mean"] == pytest.approx(0.6)
    assert s.loc["f1", "t_low"] == s.loc["f1", "t_high"] == 0.4


def runs_csv(values):
    return pd.DataFrame(
        [
            {
                "stage": "teacher",
                "variant": "default",
                "seed": s,
                "run_key": "k",
                "kind": "metrics",
                "metric": "accuracy",
                "value": v,
            }
            for s, v in enumerate(values)
        ]
        + [
            {
                "stage": "teacher",
                "variant": "default",
                "seed": 0,
                "run_key": "k",
                "kind": "cost",
                "metric": "train_time_s",
                "value": 99.0,
            }
        ]
    )


SAME = {"fresh_numerics": {"torch 2 | cpu AVX2": 2}, "committed_numerics": {"torch 2 | cpu AVX2": 2}}
OTHER = {"fresh_numerics": {"torch 2 | cpu AVX512": 5}, "committed_numerics": {"torch 2 | cpu AVX2": 5}}


def test_verify_passes_within_tolerance_and_ignores_cost():
    fresh = runs_csv([0.70, 0.71])
    fresh.loc[fresh.kind == "cost", "value"] = 1.0
    ok, report, table = verify(fresh, runs_csv([0.705, 0.71]), 0.01, **SAME)
    assert ok and "reproduce" in report and "the same numerics" in report
    assert list(table.columns[:7]) == ["stage", "variant", "seed", "metric", "committed", "fresh", "diff"]


def test_verify_fails_with_a_table_of_differences():
    ok, report, _ = verify(runs_csv([0.70, 0.60]), runs_csv([0.70, 0.71]), 0.01, **SAME)
    assert not ok and "differs" in report and "0.6" in report
    ok, report, _ = verify(runs_csv([0.70]), runs_csv([0.70, 0.71]), 0.01, **SAME)
    assert not ok and "missing in fresh run" in report


def test_verify_fails_when_a_fresh_mean_leaves_the_committed_interval():
    committed = runs_csv([0.700, 0.702, 0.701, 0.699, 0.700])
    # every run moves by 0.009: within the per-run tolerance, but the mean leaves the narrow interval
    ok, report, _ = verify(runs_csv([0.709, 0.711, 0.710, 0.708, 0.709]), committed, 0.01, **SAME)
    assert not ok and "outside the committed 95% interval" in report
    ok, _, _ = verify(runs_csv([0.700, 0.702, 0.701, 0.699, 0.700]), committed, 0.01, **SAME)
    assert ok


def test_verify_across_numerics_accepts_seed_noise_and_fails_a_real_shift():
    committed = runs_csv([0.700, 0.715, 0.690, 0.705, 0.695])
    rerun = runs_csv([0.690, 0.720, 0.700, 0.685, 0.712])  # each run elsewhere, as under another seed
    ok, report, _ = verify(rerun, committed, 0.01, **SAME)
    assert not ok and "differs" in report  # on the same numerics this would be a failure
    ok, report, table = verify(rerun, committed, 0.01, **OTHER)
    assert ok and "OK within seed noise" in report and "cpu AVX512 (5 runs)" in report
    assert table["diff"].max() > 0.01  # the run metrics are listed all the same
    ok, report, _ = verify(runs_csv([0.600, 0.615, 0.590, 0.605, 0.595]), committed, 0.01, **OTHER)
    assert not ok and "shift beyond seed noise" in report


def test_verify_without_recorded_numerics_tests_against_seed_noise():
    committed = runs_csv([0.700, 0.715, 0.690])
    ok, report, _ = verify(runs_csv([0.690, 0.720, 0.700]), committed, 0.01)
    assert ok and "not recorded" in report and "Welch" in report
    ok, report, _ = verify(runs_csv([0.70]), committed, 0.01)
    assert not ok and "missing in fresh run" in report  # runs that did not run are never noise
    one_seed = verify(runs_csv([0.80]), runs_csv([0.70]), 0.01, **OTHER)
    assert one_seed[0] and "1 untested (one seed)" in one_seed[1]
    missing = verify(runs_csv([0.70, 0.71]).iloc[2:], runs_csv([0.70, 0.71]), 0.01, **OTHER)
    assert not missing[0] and "missing in fresh run" in missing[1]


def test_numerics_summary_counts_runs_per_numerics():
    from types import SimpleNamespace

    from finch.report.verify import numerics_summary

    records = [SimpleNamespace(tags={"finch.numerics": n}) for n in ("b", "a", "b")] + [SimpleNamespace(tags={})]
    assert numerics_summary(records) == {"a": 1, "b": 2, "unknown": 1}


def test_paired_differences_pair_by_seed():
    from finch.report.stats import paired_differences

    rows = []
    for seed, (a, b) in enumerate([(0.50, 0.55), (0.60, 0.62), (0.40, 0.47), (0.55, 0.56)]):
        rows += [
            {"stage": "s", "variant": "base", "seed": seed, "metric": "accuracy", "value": a},
            {"stage": "s", "variant": "new", "seed": seed, "metric": "accuracy", "value": b},
        ]
    rows.append({"stage": "s", "variant": "new", "seed": 9, "metric": "accuracy", "value": 0.99})  # unpaired
    d = paired_differences(pd.DataFrame(rows), "s", "base", ["accuracy"], 0.95, 999, 0).iloc[0]
    diffs = np.array([0.05, 0.02, 0.07, 0.01])
    assert d.n == 4 and d.mean_diff == pytest.approx(diffs.mean())
    lo, hi = stats.ttest_rel([0.55, 0.62, 0.47, 0.56], [0.50, 0.60, 0.40, 0.55]).confidence_interval(0.95)
    assert (d.t_low, d.t_high) == pytest.approx((lo, hi))
    assert d.win_share == 1.0  # every seed higher, but not every run above every baseline run:
    assert d.prob_improvement == pytest.approx(10.5 / 16)  # 0.55 < 0.60 and ties 0.55; 0.47 < 0.50, 0.55, 0.60


def test_probability_of_improvement_counts_all_pairs_and_ties_half():
    """rliable's P(X > Y): over every (variant run, baseline run) pair, ties count 1/2; the
    per-seed win share is a different number, kept under its own name."""
    from finch.report.stats import paired_differences, probability_of_improvement

    x, y = [0.5, 0.6, 0.7], [0.55, 0.6, 0.4]
    # 0.5 beats 0.4 (1); 0.6 beats 0.55 and 0.4 and ties 0.6 (2.5); 0.7 beats all three (3): 6.5 of 9 pairs
    assert probability_of_improvement(x, y) == pytest.approx(6.5 / 9)
    rows = [
        {"stage": "s", "variant": v, "seed": seed, "metric": "accuracy", "value": value}
        for v, values in (("new", x), ("base", y))
        for seed, value in enumerate(values)
    ]
    d = paired_differences(pd.DataFrame(rows), "s", "base", ["accuracy"], 0.95, 999, 0).iloc[0]
    assert d.prob_improvement == pytest.approx(6.5 / 9)
    assert d.win_share == pytest.approx(1 / 3)  # per seed: -0.05, 0 (a tie is no win), +0.3


def test_paired_tests_match_scipy_called_directly():
    from finch.report.stats import paired_tests

    d = np.array([0.012, 0.031, -0.004, 0.022, 0.017])
    out = paired_tests(d)
    assert out["t_p"] == pytest.approx(stats.ttest_1samp(d, 0.0).pvalue)
    assert out["wilcoxon_p"] == pytest.approx(stats.wilcoxon(d, method="exact").pvalue)
    assert out["wilcoxon_min_p"] == pytest.approx(0.0625)  # 2 / 2**5
    assert out["note"] == ""


def test_wilcoxon_floor_with_five_seeds():
    from finch.report.stats import paired_tests

    out = paired_tests([0.01, 0.02, 0.03, 0.04, 0.05])  # every seed better: the best 5 pairs can do
    assert out["wilcoxon_p"] == pytest.approx(0.0625)
    assert out["t_p"] < 0.05  # the t-test can resolve what Wilcoxon cannot


def test_paired_tests_degenerate_cases_do_not_crash():
    from finch.report.stats import paired_tests

    same = paired_tests([0.02] * 5)  # identical differences: no spread
    assert np.isnan(same["t_p"]) and "t-test and BCa undefined" in same["note"]
    assert np.isnan(same["seeds_needed"])
    none = paired_tests([0.0] * 5)
    assert none["wilcoxon_p"] == 1.0 and none["seeds_needed"] == np.inf
    one = paired_tests([0.1])
    assert np.isnan(one["t_p"]) and np.isnan(one["wilcoxon_p"]) and "no test" in one["note"]
    ties = paired_tests([0.01, 0.01, -0.02, 0.0, 0.03])
    assert 0.0 < ties["wilcoxon_p"] <= 1.0 and "not exact" in ties["note"]


def test_holm_against_hand_worked_example():
    from finch.report.stats import holm_adjust

    # sorted p: 0.01 (x4 = 0.04), 0.02 (x3 = 0.06), 0.03 (x2 = 0.06), 0.04 (x1 = 0.04 -> monotone 0.06)
    p = [0.03, 0.01, 0.04, 0.02]
    assert holm_adjust(p) == pytest.approx([0.06, 0.04, 0.06, 0.06])
    with_nan = holm_adjust([0.01, np.nan, 0.04])  # NaN is not part of the family
    assert with_nan[0] == pytest.approx(0.02) and np.isnan(with_nan[1]) and with_nan[2] == pytest.approx(0.04)


def test_holm_collects_garbage_over_a_frozen_heap_and_unfreezes(monkeypatch):
    """statsmodels' Holm calls gc.collect() (0.1 s a call on the aggregate's heap): the heap
    is frozen around it, so the collection skips it, and unfrozen afterwards."""
    import gc

    from finch.report.stats import holm_adjust

    frozen_when_collecting = []
    monkeypatch.setattr(gc, "collect", lambda *a: frozen_when_collecting.append(gc.get_freeze_count()))
    assert holm_adjust([0.03, 0.01]) == pytest.approx([0.03, 0.02])
    assert len(frozen_when_collecting) == 1 and frozen_when_collecting[0] > 0
    assert gc.get_freeze_count() == 0


def test_seeds_needed_against_statsmodels_and_monotone():
    from statsmodels.stats.power import TTestPower

    from finch.report.stats import seeds_needed

    d = np.array([0.01, 0.03, -0.01, 0.02, 0.015])
    effect = d.mean() / d.std(ddof=1)
    expected = int(np.ceil(TTestPower().solve_power(effect_size=effect, alpha=0.05, power=0.8)))
    assert seeds_needed(d) == expected
    assert seeds_needed(d + 0.02) < seeds_needed(d)  # a bigger difference needs fewer seeds


def test_comparison_family_is_holm_adjusted_per_stage_and_metric():
    from finch.report.stats import adjust_family, paired_differences

    rng = np.random.default_rng(0)
    rows = []
    for variant, shift in (("base", 0.0), ("a", 0.05), ("b", 0.0), ("c", 0.02)):
        for seed in range(5):
            value = 0.7 + shift + rng.normal(0, 0.01)
            rows.append({"stage": "s", "variant": variant, "seed": seed, "metric": "accuracy", "value": value})
    runs = pd.DataFrame(rows)
    diffs = adjust_family(paired_differences(runs, "s", "base", ["accuracy"], 0.95, 999, 0))
    assert list(diffs.variant) == ["a", "b", "c"]
    order = np.argsort(diffs.t_p.to_numpy())
    adjusted = diffs.t_p_holm.to_numpy()[order]
    assert np.all(np.diff(adjusted) >= 0) and np.all(diffs.t_p_holm >= diffs.t_p)
    assert diffs.t_p_holm.iloc[0] == pytest.approx(min(1.0, 3 * diffs.t_p.iloc[0]))  # smallest p times 3


def test_seeds_needed_for_a_huge_effect_is_the_minimum():
    from finch.report.stats import seeds_needed

    assert seeds_needed([0.5, 0.501, 0.499, 0.5, 0.5002]) == 2


def test_seeds_needed_when_scipys_noncentral_t_gives_nan():
    """full vs linear_probe in the committed study: +0.152 over 3 seeds, sd 0.005 (effect ~29).
    scipy's noncentral t is NaN that far in its tail, so statsmodels' power was NaN and the
    report said infinitely many seeds for a difference resolved at p = 4e-4."""
    from statsmodels.stats.power import TTestPower

    from finch.report.stats import seeds_needed, t_test_power, t_test_power_by_definition

    assert np.isnan(TTestPower().power(effect_size=29.0, nobs=3, alpha=0.05))  # the library's gap
    assert t_test_power(29.0, 3) == pytest.approx(1.0, abs=1e-6)
    assert t_test_power(1.0, 10) == pytest.approx(TTestPower().power(effect_size=1.0, nobs=10, alpha=0.05))
    for effect, n in ((0.5, 12), (2.0, 3), (0.01, 200_000)):  # the fallback agrees where the library works
        assert t_test_power_by_definition(effect, n) == pytest.approx(
            TTestPower().power(effect_size=effect, nobs=n, alpha=0.05), abs=1e-6
        )
    assert seeds_needed([0.1469, 0.1519, 0.1569]) == 2
    assert seeds_needed([-0.031, -0.027, -0.023]) == 3  # effect 6.75: two pairs have power 0.55 only
    assert seeds_needed([0.03, -0.029, 0.001]) > 1000  # a tiny mean against a wide spread


def test_power_fallback_is_scipy_stats_definition_to_the_bit():
    """t_test_power_by_definition calls scipy's special functions directly; the integrand (and so
    the integral) is the one written with scipy.stats' distributions, to the bit."""
    import math

    from scipy import integrate, stats

    from finch.report.stats import t_test_power_by_definition

    def reference(effect, nobs, alpha=0.05):
        df = nobs - 1
        crit, shift = stats.t.ppf(1 - alpha / 2, df), effect * math.sqrt(nobs)

        def rejects(u):
            bound = crit * math.sqrt(stats.chi2.ppf(u, df) / df)
            return stats.norm.sf(bound - shift) + stats.norm.cdf(-bound - shift)

        return float(min(1.0, integrate.quad(rejects, 0, 1)[0]))

    for effect in (0.01, 0.3, 1.0, 2.5, 6.75, 29.0, 300.0):
        for nobs in (2, 3, 5, 17, 200):
            assert t_test_power_by_definition(effect, nobs) == reference(effect, nobs), (effect, nobs)
