"""Evaluation shared by every stage: the same metric keys everywhere.

Metrics come from scikit-learn; this module only chooses and names them. The calibration error
is torchmetrics' binning (:func:`expected_calibration_error`, pinned to it by a test) without its
import: ``import torchmetrics`` loads every domain it has (text, audio, image, transformers
included), ~2 s in each of a study's ~30 training processes.
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

from finch import distributed
from finch.data.splits import Split

HEAD_METRICS = ("accuracy", "f1_macro", "auroc_macro", "ece")  # reported per extra head
TTA_MODES = ("none", "flip")


def class_key(name: str) -> str:
    """A metric-key-safe form of a class name (``T-shirt/top`` → ``t_shirt_top``)."""
    return re.sub(r"[^0-9a-z]+", "_", name.lower()).strip("_")


def predict_proba(
    model: torch.nn.Module,
    split: Split,
    to_inputs: Callable,
    batch_size: int,
    device: torch.device,
    logits_of: Callable = lambda out: out,
    channels_last: bool = False,
    tta: str = "none",
) -> tuple[np.ndarray, float]:
    """Class probabilities for every image of ``split`` and the throughput in img/s.

    ``to_inputs(raw_batch, device)`` makes model inputs (``TaskData.to_inputs``).
    """
    probs, speed = predict_heads(model, split, to_inputs, batch_size, device, {"main": logits_of}, channels_last, tta)
    return probs["main"], speed


@torch.no_grad()
def predict_heads(
    model: torch.nn.Module,
    split: Split,
    to_inputs: Callable,
    batch_size: int,
    device: torch.device,
    heads: dict[str, Callable],
    channels_last: bool = False,
    tta: str = "none",
) -> tuple[dict[str, np.ndarray], float]:
    """Probabilities of several heads (name → outputs-to-logits) from one pass over ``split``.

    ``tta="flip"``: each head's probability is the mean of the image's and its horizontal
    mirror's (test-time augmentation; Page's and airbench's flip TTA).

    Under torchrun each rank predicts a disjoint shard and every rank gets all rows back, in
    order (:func:`finch.distributed.gather_rows`: no row dropped or counted twice).
    """
    if tta not in TTA_MODES:
        raise ValueError(f"tta {tta!r}: one of {TTA_MODES}")
    was_training = model.training
    model.eval()

    def predict(rows: torch.Tensor) -> dict[str, np.ndarray]:
        probs: dict[str, list] = {name: [] for name in heads}
        # one process predicts rows 0..n-1: slices (views) instead of gathering copies of each batch
        first = int(rows[0]) if len(rows) else 0
        contiguous = bool(len(rows)) and torch.equal(rows, torch.arange(first, first + len(rows)))
        for i in range(0, len(rows), batch_size):
            raw = split.x[first + i : first + i + batch_size] if contiguous else split.x[rows[i : i + batch_size]]
            x = to_inputs(raw, device)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            if tta == "flip" and x.dim() != 4:
                raise ValueError(f"tta flip mirrors images (N, C, H, W); these inputs have shape {tuple(x.shape)}")
            views = (x, x.flip(-1)) if tta == "flip" else (x,)
            with autocast_for(device):
                outputs = [model(view) for view in views]
            for name, logits_of in heads.items():
                p = sum(torch.softmax(logits_of(out).float(), dim=-1) for out in outputs) / len(outputs)
                probs[name].append(p.cpu())
        return {name: torch.cat(p).numpy().astype(np.float64) if p else np.zeros((0, 0)) for name, p in probs.items()}

    start = time.perf_counter()
    out = distributed.gather_rows(len(split), predict)
    elapsed = time.perf_counter() - start
    model.train(was_training)
    return out, len(split) / max(elapsed, 1e-9)


def agreement_with(
    reference: torch.nn.Module, probs: np.ndarray, split: Split, to_inputs: Callable, batch_size: int, device
) -> tuple[dict[str, float], dict[str, float]]:
    """Share of ``split`` where ``reference`` (a teacher) and ``probs`` agree on the class,
    plus the reference's parameter count (metrics) and throughput (cost)."""
    ref_probs, speed = predict_proba(reference, split, to_inputs, batch_size, device)
    total = sum(p.numel() for p in reference.parameters())
    agree = float((ref_probs.argmax(1) == probs.argmax(1)).mean())
    return (
        {
            "teacher_agreement": agree,
            "teacher_accuracy": float((ref_probs.argmax(1) == split.y.numpy()).mean()),
            "teacher_params_total": total,
        },
        {"teacher_eval_images_per_s": speed},
    )


def autocast_for(device: torch.device, dtype: torch.dtype | None = None):
    """bf16 autocast on CUDA when supported; a no-op context on the CPU."""
    if device.type == "cuda":
        dtype = dtype or (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
        return torch.autocast("cuda", dtype=dtype)
    return torch.autocast("cpu", enabled=False)


def expected_calibration_error(probs: np.ndarray, y_true: np.ndarray, n_bins: int = 15) -> float:
    """Top-label expected calibration error (L1): the gap between accuracy and mean confidence
    in ``n_bins`` equal-width confidence bins, weighted by the bins' shares of the images.

    The same float32 operations, in the same order, as torchmetrics'
    ``multiclass_calibration_error(..., norm="l1")`` (``_binning_bucketize``), so the number is
    the same to the bit (tested against it); ``probs`` are probabilities (rows sum to 1).
    """
    confidences, predictions = torch.from_numpy(np.asarray(probs)).float().max(dim=1)
    accuracies = predictions.eq(torch.from_numpy(np.asarray(y_true)).long()).float()
    boundaries = torch.linspace(0, 1, n_bins + 1, dtype=confidences.dtype)
    index = torch.bucketize(confidences, boundaries, right=True) - 1
    count = torch.zeros(n_bins + 1).scatter_add_(0, index, torch.ones_like(confidences))
    conf = torch.nan_to_num(torch.zeros(n_bins + 1).scatter_add_(0, index, confidences) / count)
    acc = torch.nan_to_num(torch.zeros(n_bins + 1).scatter_add_(0, index, accuracies) / count)
    return float(torch.sum(torch.abs(acc - conf) * (count / count.sum())))


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
    metrics["ece"] = expected_calibration_error(probs, y_true, ece_bins)
    if num_classes > 5:
        metrics["top5_accuracy"] = float(top_k_accuracy_score(y_true, probs, k=5, labels=labels))
    cm = confusion_matrix(y_true, y_pred, labels=labels)
    per_class = np.divide(np.diag(cm), cm.sum(1), out=np.zeros(num_classes), where=cm.sum(1) > 0)
    for name, acc in zip(class_names, per_class, strict=True):
        metrics[f"class_acc.{class_key(name)}"] = float(acc)
    return metrics, cm.tolist()
