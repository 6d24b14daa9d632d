"""The closed-form linear probe: scikit-learn's logistic regression on cached features (issue 26.5).

An AdamW probe trained for a fixed number of epochs was still improving at 4x its schedule, which
inflated every difference reported against it; a convex problem solved to the end is not.
"""

from __future__ import annotations

import torch
from torch import nn

from finch.data.splits import TaskData

# C (inverse L2 strength) of the closed-form linear probes, chosen on the validation split
PROBE_C_GRID = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)


def fit_logistic_probe(head: nn.Linear, data: TaskData, seed: int = 0):
    """A linear probe trained to the end: scikit-learn's multinomial ``LogisticRegression`` on the
    standardised cached features, its C chosen on the validation split (the first of equals, as
    the floors choose theirs), written into ``head`` (the standardisation folded into its weights,
    so the head takes the raw features). Convex: the same model for every seed. Returns a
    :class:`~finch.train.engine.FitResult` whose one history row holds C and the validation accuracy."""
    import time

    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    from finch.train.engine import FitResult

    start = time.perf_counter()
    x_train, y_train = data.train.x.numpy().astype(np.float64), data.train.y.numpy()
    x_val, y_val = data.val.x.numpy().astype(np.float64), data.val.y.numpy()
    scaler = StandardScaler().fit(x_train)
    z_train, z_val = scaler.transform(x_train), scaler.transform(x_val)
    with threadpool_limits(limits=1):  # single-threaded BLAS: the same numbers on any core count
        fits = {c: LogisticRegression(C=c, max_iter=5000).fit(z_train, y_train) for c in PROBE_C_GRID}
    val_acc = {c: float(m.score(z_val, y_val)) for c, m in fits.items()}
    best = max(PROBE_C_GRID, key=lambda c: (val_acc[c], -PROBE_C_GRID.index(c)))
    model = fits[best]
    weight = model.coef_ / scaler.scale_[None, :]  # w·(x − μ)/σ + b = (w/σ)·x + (b − (w/σ)·μ)
    bias = model.intercept_ - weight @ scaler.mean_
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(weight))
        head.bias.copy_(torch.from_numpy(bias))
    seconds = time.perf_counter() - start
    row = {"epoch": 1, "C": best, "val_accuracy": val_acc[best], "epoch_time_s": seconds}
    return FitResult(model=head.eval(), history=[row], best_epoch=1, train_time_s=seconds, train_loop_s=seconds)
