"""k-fold runs: a recipe with ``kfold.k >= 2`` trains one model per fold of train + val and
predicts with all of them (:class:`FoldEnsemble`); no fold is selected on its validation score."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

from finch.config import RecipeConfig
from finch.data.splits import TaskData
from finch.train.engine import FitResult, fit
from finch.train.losses import Objective
from finch.train.runtime import seed_everything

log = logging.getLogger(__name__)


def kfold_splits(data: TaskData, k: int, seed: int) -> list[TaskData]:
    """``k`` stratified folds of train + val (scikit-learn): fold ``f`` validates on its own
    images and trains on the others; the test split is untouched."""
    import numpy as np
    from sklearn.model_selection import StratifiedKFold

    from finch.data.splits import Split

    x = torch.cat([data.train.x, data.val.x])
    y = torch.cat([data.train.y, data.val.y])
    folds = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(np.zeros(len(y)), y.numpy())
    return [
        replace(data, train=Split(x[tr], y[tr]), val=Split(x[va], y[va]))
        for tr, va in ((torch.as_tensor(a), torch.as_tensor(b)) for a, b in folds)
    ]


class FoldEnsemble(torch.nn.Module):
    """The k fold models as one predictor: for each head (name → outputs-to-logits), the mean of
    the folds' probabilities, returned as its logarithm (a softmax gives the mean back)."""

    def __init__(self, models: list[torch.nn.Module], heads: dict[str, Callable]):
        super().__init__()
        self.folds = torch.nn.ModuleList(models)
        self.heads = dict(heads)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        outputs = [model(x) for model in self.folds]
        return {
            name: torch.stack([torch.softmax(logits_of(o).float(), dim=-1) for o in outputs]).mean(0).log()
            for name, logits_of in self.heads.items()
        }

    def readers(self) -> dict[str, Callable]:
        """Each head's logits in this model's outputs (for :func:`finch.evaluate.predict_heads`)."""
        return {name: _HeadReader(name) for name in self.heads}


class _HeadReader:
    """``outputs[name]``: one head of a :class:`FoldEnsemble`'s outputs."""

    def __init__(self, name: str):
        self.name = name

    def __call__(self, outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return outputs[self.name]


def _mean_history(histories: list[list[dict]]) -> list[dict]:
    """Per epoch, the mean of each column over the folds that reached it (early stopping)."""
    import numpy as np

    epochs = max(len(h) for h in histories)
    out = []
    for e in range(epochs):
        rows = [h[e] for h in histories if len(h) > e]
        out.append({k: float(np.mean([r[k] for r in rows])) for k in rows[0]})
    return out


def fit_kfold(
    build_model: Callable[[int], torch.nn.Module],
    data: TaskData,
    recipe: RecipeConfig,
    seed: int,
    objective: Objective | None,
    device: torch.device,
    checkpoint: Path,
    key: str,
    name: str,
    progress: bool,
) -> tuple[FitResult, dict]:
    """Train one model per fold and predict with all of them: the returned model is their
    :class:`FoldEnsemble` (the mean of the k models' probabilities). The summary keeps every
    fold's validation and test accuracy (the spread) and best epoch; the history is the folds'
    mean per epoch."""
    import numpy as np

    from finch.evaluate import predict_heads

    k = recipe.kfold.k
    results, val_acc, test_acc = [], [], []
    readout = objective or Objective(recipe.loss, data.num_classes, mixing=False)  # for predictions
    for f, fold_data in enumerate(kfold_splits(data, k, seed)):
        seed_everything(seed)
        model = build_model(seed)
        result = fit(
            model,
            fold_data,
            recipe,
            seed=seed,
            device=device,
            objective=objective,
            checkpoint_path=checkpoint.with_name(f"{checkpoint.stem}-fold={f}.pt"),
            fingerprint=f"{key}-fold{f}",
            progress=progress,
            desc=f"{name} fold {f + 1}/{k}",
        )
        # the selected epoch's validation accuracy; wsd: that of the end of its last decay
        best = result.budgets[-1] if result.budgets else result.history[result.best_epoch - 1]
        val_acc.append(float(best["val_accuracy"]))
        probs, _ = predict_heads(
            result.model,
            data.test,
            data.to_inputs,
            recipe.eval_batch_size,
            device,
            {"main": readout.logits},
            recipe.channels_last,
            recipe.tta,
        )
        test_acc.append(float((probs["main"].argmax(1) == data.test.y.numpy()).mean()))
        results.append(result)
    summary = {
        "k": k,
        "prediction": "mean of the fold models' probabilities",
        "val_accuracy": val_acc,
        "test_accuracy": test_acc,
        "best_epoch": [r.best_epoch for r in results],
        "val_accuracy_mean": float(np.mean(val_acc)),
        "val_accuracy_std": float(np.std(val_acc, ddof=1)),
        "test_accuracy_mean": float(np.mean(test_acc)),
        "test_accuracy_std": float(np.std(test_acc, ddof=1)),
    }
    log.info(
        "%s: %d-fold validation accuracy %.4f ± %.4f; the %d fold models are ensembled",
        name,
        k,
        summary["val_accuracy_mean"],
        summary["val_accuracy_std"],
        k,
    )
    heads = {"main": readout.logits, **readout.heads()}
    ensemble = FitResult(
        model=FoldEnsemble([r.model for r in results], heads).eval(),
        history=_mean_history([r.history for r in results]),
        best_epoch=None,
        train_time_s=sum(r.train_time_s for r in results),
        train_images_per_s=float(np.mean([r.train_images_per_s for r in results])),
        stopped_early=any(r.stopped_early for r in results),
    )
    return ensemble, summary
