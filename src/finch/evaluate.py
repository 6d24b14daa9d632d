"""Evaluation shared by every stage: the same metric keys everywhere.

Metrics come from scikit-learn and torchmetrics; this module only chooses and names them.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import numpy as np
import torch
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
    top_k_accuracy_score,
)
from torchmetrics.functional.classification import multiclass_calibration_error

from finch.data.splits import Split
from finch.train.augment import normalise


def class_key(name: str) -> str:
    """A metric-key-safe form of a class name (``T-shirt/top`` → ``t_shirt_top``)."""
    return re.sub(r"[^0-9a-z]+", "_", name.lower()).strip("_")


@torch.no_grad()
def predict_proba(
    model: torch.nn.Module,
    split: Split,
    mean: torch.Tensor,
    std: torch.Tensor,
    batch_size: int,
    device: torch.device,
    logits_of: Callable = lambda out: out,
    channels_last: bool = False,
) -> tuple[np.ndarray, float]:
    """Class probabilities for every image of ``split`` and the throughput in img/s."""
    was_training = model.training
    model.eval()
    probs = []
    start = time.perf_counter()
    for i in range(0, len(split), batch_size):
        x = normalise(split.x[i : i + batch_size].to(device), mean, std)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast_for(device):
            logits = logits_of(model(x))
        probs.append(torch.softmax(logits.float(), dim=-1).cpu())
    elapsed = time.perf_counter() - start
    model.train(was_training)
    return torch.cat(probs).numpy().astype(np.float64), len(split) / max(elapsed, 1e-9)


def autocast_for(device: torch.device, dtype: torch.dtype | None = None):
    """bf16 autocast on CUDA when supported; a no-op context on the CPU."""
    if device.type == "cuda":
        dtype = dtype or (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
        return torch.autocast("cuda", dtype=dtype)
    return torch.autocast("cpu", enabled=False)


def classification_metrics(
    y_true: np.ndarray, probs: np.ndarray, class_names: list[str], ece_bins: int = 15
) -> tuple[dict[str, float], list[list[int]]]:
    """Test metrics and the confusion matrix (rows: true class, columns: predicted)."""
    num_classes = len(class_names)
    labels = list(range(num_classes))
    y_pred = probs.argmax(1)
    precision, recall, f1, _ = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average="macro", zero_division=0
    )
    metrics = {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "precision_macro": float(precision),
        "recall_macro": float(recall),
        "f1_macro": float(f1),
    }
    present = np.unique(y_true)
    if len(present) == num_classes and num_classes > 2:
        metrics["auroc_macro"] = float(roc_auc_score(y_true, probs, multi_class="ovr", average="macro", labels=labels))
    elif num_classes == 2 and len(present) == 2:
        metrics["auroc_macro"] = float(roc_auc_score(y_true, probs[:, 1]))
    metrics["ece"] = float(
        multiclass_calibration_error(
            torch.from_numpy(probs).float(),
            torch.from_numpy(y_true).long(),
            num_classes=num_classes,
            n_bins=ece_bins,
            norm="l1",
        )
    )
    if num_classes > 5:
        metrics["top5_accuracy"] = float(top_k_accuracy_score(y_true, probs, k=5, labels=labels))
    cm = confusion_matrix(y_true, y_pred, labels=labels)
    per_class = np.divide(np.diag(cm), cm.sum(1), out=np.zeros(num_classes), where=cm.sum(1) > 0)
    for name, acc in zip(class_names, per_class, strict=True):
        metrics[f"class_acc.{class_key(name)}"] = float(acc)
    return metrics, cm.tolist()
