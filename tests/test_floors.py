"""The floors: raw-pixel classifiers, their hyper-parameter chosen on the validation split."""

from finch.floors import floor_metrics

from .conftest import make_task


def test_floors_score_the_test_split_with_a_validated_choice():
    floors = floor_metrics(make_task())
    for floor in floors.values():
        assert floor["value"] in [float(v) for v in floor["val_accuracy"]]
        best = max(floor["val_accuracy"].values())
        assert floor["val_accuracy"][floor["value"]] == best  # the choice is the validation's best
        assert floor["metrics"]["accuracy"] > 0.9 and "ece" in floor["metrics"]  # bright vs dark: pixels suffice


def test_floors_fit_a_dataset_smaller_than_the_largest_k():
    floors = floor_metrics(make_task(n_train=8))  # fewer training images than k = 15
    assert floors["pixel_knn"]["value"] <= 8
    assert floors["pixel_knn"]["metrics"]["accuracy"] > 0.9  # 4 squares a class still tell bright from dark
