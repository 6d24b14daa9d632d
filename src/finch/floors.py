"""What no representation learning gets: classifiers on raw pixels, the floor every study is read against.

A model that scores below a logistic regression or a k-nearest-neighbour vote on the raw pixels
has learned nothing the pixels did not already say. Both floors are fitted on the training split,
their one hyper-parameter chosen on the validation split (never the test split), and tested once
on the test split with the same metrics as every model (:func:`finch.evaluate.classification_metrics`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from finch.data.splits import Split, TaskData
from finch.evaluate import classification_metrics
from finch.runs import pack_correct


@dataclass(frozen=True)
class Floor:
    """One pixel classifier: its label in reports, and the grid its hyper-parameter is chosen from."""

    name: str
    label: str
    param: str
    grid: tuple[float, ...]

    def build(self, value: float):
        from sklearn.linear_model import LogisticRegression
        from sklearn.neighbors import KNeighborsClassifier

        if self.name == "pixel_logreg":
            return LogisticRegression(C=value, max_iter=2000)
        return KNeighborsClassifier(n_neighbors=int(value))


FLOORS = (
    Floor("pixel_logreg", "logistic regression on raw pixels", "C", (0.001, 0.01, 0.1, 1.0)),
    Floor("pixel_knn", "k-nearest neighbours on raw pixels", "k", (1, 5, 15)),
)


def pixels(split: Split) -> np.ndarray:
    """Images as flat float vectors in [0, 1]."""
    return split.x.reshape(len(split), -1).numpy().astype(np.float32) / 255.0


def floor_metrics(data: TaskData, ece_bins: int = 15) -> dict[str, dict]:
    """Each floor: the chosen hyper-parameter, its validation accuracy, and test metrics.

    Single-threaded BLAS/OpenMP, so the numbers do not depend on the machine's core count.
    """
    from threadpoolctl import threadpool_limits

    x_train, x_val, x_test = pixels(data.train), pixels(data.val), pixels(data.test)
    y_train, y_val, y_test = data.train.y.numpy(), data.val.y.numpy(), data.test.y.numpy()
    out = {}
    with threadpool_limits(limits=1):
        for floor in FLOORS:
            # k-NN cannot ask for more neighbours than there are training images (a small dataset)
            grid = [v for v in floor.grid if floor.param != "k" or v <= len(y_train)] or [1]
            val_acc = {v: float(floor.build(v).fit(x_train, y_train).score(x_val, y_val)) for v in grid}
            best = max(grid, key=lambda v: (val_acc[v], -grid.index(v)))  # ties: the first
            model = floor.build(best).fit(x_train, y_train)
            probs = model.predict_proba(x_test)
            metrics, _ = classification_metrics(y_test, probs, data.class_names, ece_bins)
            out[floor.name] = {
                "label": floor.label,
                "param": floor.param,
                "value": best,
                "val_accuracy": val_acc,
                "metrics": metrics,
                # which test images it got right: the report's interval over the test sample
                "test_images": len(y_test),
                "test_correct": pack_correct(probs.argmax(1) == y_test),
            }
    return out
