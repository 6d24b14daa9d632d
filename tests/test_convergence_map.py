"""scripts/convergence_map.py: which variants it maps and how it reads their longer runs."""

import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("convergence_map", REPO / "scripts" / "convergence_map.py")
cmap = importlib.util.module_from_spec(spec)
sys.modules["convergence_map"] = cmap  # its dataclass looks its module up there
spec.loader.exec_module(cmap)

CSV = """stage,variant,seed,epochs,best_val,longer_epochs,longer_best_val,gain,seed_spread,threshold,converged
augmented,real,0,30,0.70,60,0.75,0.05,0.002,0.002,False
student,none,0,20,0.69,40,0.70,0.01,0.02,0.02,True
teacher,default,0,30,0.83,60,0.846,0.016,0.005,0.005,False
"""
FLOORS = {
    "floors": {
        "pixel_logreg": {"value": 0.01, "val_accuracy": {"0.01": 0.75, "0.1": 0.76}},  # the chosen C's, not the max
        "pixel_knn": {"value": 5, "val_accuracy": {"5": 0.72}},
    },
    "scarce": {"stages": ["augmented"], "floors": {"pixel_logreg": {"value": 0.1, "val_accuracy": {"0.1": 0.70}}}},
}


def test_maps_the_still_improving_variants_or_the_named_ones(tmp_path):
    (tmp_path / "c.csv").write_text(CSV)
    checked = cmap.read_check(tmp_path / "c.csv")
    assert [c.name for c in cmap.choose(checked, None)] == ["augmented/real", "teacher/default"]
    assert [c.name for c in cmap.choose(checked, ["student/none"])] == ["student/none"]
    with pytest.raises(SystemExit, match="not in the study's convergence check"):
        cmap.choose(checked, ["student/soft"])
    with pytest.raises(SystemExit, match="run `dvc repro` first"):
        cmap.read_check(tmp_path / "missing.csv")


def test_floor_is_the_chosen_setting_and_scarce_for_scarce_stages():
    assert cmap.highest_floor_val(FLOORS, "teacher") == 0.75
    assert cmap.highest_floor_val(FLOORS, "augmented") == 0.70


def test_verdict_applies_the_study_rule_one_doubling_further(tmp_path):
    (tmp_path / "c.csv").write_text(CSV)
    real, _, teacher = cmap.read_check(tmp_path / "c.csv")
    records = {
        "real": {"epochs": 120, "best_val_accuracy": 0.7505, "seconds": 10.0},  # +0.0005 <= 0.002
        "teacher": {"epochs": 120, "best_val_accuracy": 0.86, "seconds": 30.0},  # +0.014 > 0.005
    }
    text = cmap.render([(real, records["real"]), (teacher, records["teacher"])], 4.0, FLOORS, "test machine")
    rows = {line.split(" | ")[0].lstrip("| "): line for line in text.splitlines() if line.startswith("| ")}
    assert "converged at the x2 budget" in rows["augmented/real"]
    assert "still improving at x2" in rows["teacher/default"]
    # first budget above the floor: real passes 0.70 only at 60 epochs; the teacher at its 30
    assert rows["augmented/real"].endswith("| 60 epochs |") and rows["teacher/default"].endswith("| 30 epochs |")
    assert "40 run-seconds" in text
