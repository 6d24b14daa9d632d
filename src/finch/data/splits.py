"""Reading the prepared splits back for training and evaluation."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from finch.errors import DataError
from finch.io import load_tensors, read_json

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Split:
    """Images (uint8 ``[N, C, H, W]``) and labels (int64 ``[N]``) of one split."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)


def split_hash(content_hash: str, seed: int) -> str:
    """The content hash of a task's data on ``seed``'s own split (:meth:`TaskData.resplit`)."""
    return f"{content_hash}+split{seed}"


@dataclass(frozen=True)
class TaskData:
    """One classification task: three splits, class names and normalisation."""

    name: str
    class_names: list[str]
    train: Split
    val: Split
    test: Split
    mean: tuple[float, ...]
    std: tuple[float, ...]
    content_hash: str
    kind: str = "images"  # "images" (uint8, normalised per batch) or "features" (float vectors)
    origin: str = ""  # the file it was read from (data/prepared/target.safetensors, a feature cache)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def is_images(self) -> bool:
        return self.kind == "images"

    @property
    def in_chans(self) -> int:
        return int(self.train.x.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.train.x.shape[-1])

    def dataset_inputs(self, splits: tuple[str, ...] = ("train", "val", "test")) -> list[dict[str, str]]:
        """What a run trained, selected and tested on, as MLflow dataset inputs (``name``,
        ``digest`` = the first 16 characters of the content hash, ``source``, ``context``)."""
        context = {"train": "training", "val": "validation", "test": "testing"}
        return [
            {
                "name": f"{self.name}/{split}",
                "digest": self.content_hash[:16],
                "source": self.origin or self.name,
                "context": context[split],
            }
            for split in splits
        ]

    def resplit(self, seed: int) -> TaskData:
        """The same training and validation images, drawn apart again for ``seed``: per class, a
        seeded permutation of the class's train+validation images gives it as many validation
        images as before, the rest train (in their original order); the test split is untouched.
        It depends only on the labels and ``seed``, so an image task and its cached features get
        the same split."""
        x = torch.cat([self.train.x, self.val.x])
        y = torch.cat([self.train.y, self.val.y])
        generator = torch.Generator().manual_seed(1_000_003 + seed)
        val = torch.zeros(len(y), dtype=torch.bool)
        for c in range(self.num_classes):
            members = torch.nonzero(y == c).squeeze(1)
            n_val = int((self.val.y == c).sum())
            val[members[torch.randperm(len(members), generator=generator)[:n_val]]] = True
        train_idx, val_idx = torch.nonzero(~val).squeeze(1), torch.nonzero(val).squeeze(1)
        return replace(
            self,
            train=Split(x[train_idx], y[train_idx]),
            val=Split(x[val_idx], y[val_idx]),
            content_hash=split_hash(self.content_hash, seed),
        )

    def to_inputs(self, x: torch.Tensor, device: torch.device) -> torch.Tensor:
        """A raw batch of this task → model inputs: standardised images, or float features."""
        if not self.is_images:
            return x.to(device).float()
        mean, std = self.normalisation(device)
        return (x.to(device).float() / 255.0 - mean) / std

    def on_device(self, device: torch.device, max_share: float = 0.25) -> TaskData:
        """This task with its training and validation splits moved to ``device`` once (images stay
        uint8), so that no batch is copied from the host per step; the test split stays where it
        is. Unchanged on the CPU, or when the two splits would take more than ``max_share`` of the
        device's free memory (then batches are copied per step, as on the CPU)."""
        from dataclasses import replace

        if device.type != "cuda" or self.train.x.device == device:
            return self
        size = sum(t.numel() * t.element_size() for s in (self.train, self.val) for t in (s.x, s.y))
        free, _ = torch.cuda.mem_get_info(device)
        if size > max_share * free:
            log.info(
                "%s: %.0f MiB of training data stay on the host (%.0f MiB free on %s)",
                self.name,
                size / 2**20,
                free / 2**20,
                device,
            )
            return self
        moved = {s: Split(getattr(self, s).x.to(device), getattr(self, s).y.to(device)) for s in ("train", "val")}
        return replace(self, **moved)

    def normalisation(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel mean and std shaped ``[1, C, 1, 1]`` for batches on ``device``."""
        shape = (1, -1, 1, 1)
        return (
            torch.tensor(self.mean, device=device).view(shape),
            torch.tensor(self.std, device=device).view(shape),
        )


def load_task(prepared_dir: Path | str, task: str = "target") -> TaskData:
    """Load ``target`` or ``source`` from the ``prepare`` stage's folder."""
    prepared_dir = Path(prepared_dir)
    card_path = prepared_dir / "card.json"
    if not card_path.is_file():
        raise DataError(f"{card_path}: missing; run the prepare stage first (dvc repro prepare)")
    card = read_json(card_path)
    task_card = card["target"] if task == "target" else card.get("source_task")
    if task_card is None:
        raise DataError(f"{prepared_dir}: no {task} task was prepared (data.source_classes is empty)")
    tensors = load_tensors(prepared_dir / f"{task}.safetensors")
    splits = {s: Split(tensors[f"{s}_x"], tensors[f"{s}_y"]) for s in ("train", "val", "test")}
    return TaskData(
        name=task,
        class_names=list(task_card["classes"]),
        mean=tuple(card["mean"]),
        std=tuple(card["std"]),
        content_hash=task_card["content_hash"],
        origin=str(prepared_dir / f"{task}.safetensors"),
        **splits,
    )


def first_per_class(task: TaskData, per_class: int | None) -> TaskData:
    """``task`` with only the first ``per_class`` training images of each class (in the prepared
    order, itself a random draw): a scarce-data regime on the same validation and test splits.
    ``None`` returns ``task`` unchanged."""
    from dataclasses import replace

    if per_class is None:
        return task
    counts = torch.bincount(task.train.y, minlength=task.num_classes)
    if int(counts.min()) < per_class:
        short = task.class_names[int(counts.argmin())]
        raise DataError(
            f"synthetic.real_per_class is {per_class} but class {short!r} has {int(counts.min())} training images; "
            "lower it or set it to null (all)"
        )
    keep = torch.cat([torch.nonzero(task.train.y == c).squeeze(1)[:per_class] for c in range(task.num_classes)])
    keep = keep.sort().values
    return replace(
        task,
        train=Split(task.train.x[keep], task.train.y[keep]),
        content_hash=f"{task.content_hash}+first{per_class}",
    )
