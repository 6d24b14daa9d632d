"""Batched tensor augmentation vs a per-sample torchvision/PIL pipeline through a DataLoader.

Both produce one epoch of flipped, randomly translated, normalised batches of the target
training images. Ratio = PIL pipeline time / batched time.
"""

from __future__ import annotations

import time

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from finch.config import AugmentConfig, load_params
from finch.data.splits import load_task
from finch.train.augment import BatchAugment, black_level, normalise
from finch.train.runtime import configure


class PILImages(Dataset):
    def __init__(self, x: torch.Tensor, y: torch.Tensor, transform):
        self.images = [Image.fromarray(img[0].numpy()) for img in x]
        self.y, self.transform = y, transform

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i):
        return self.transform(self.images[i]), self.y[i]


def measure(epochs: int = 3, shift: int = 2, batch: int = 64) -> dict:
    cfg = load_params()
    device = configure(cfg.runtime)
    data = load_task("data/prepared", "target")
    mean, std = data.normalisation(device)
    aug = BatchAugment(AugmentConfig(flip=True, translate=shift), data.num_classes, 0.0, device, black_level(mean, std))
    g = torch.Generator().manual_seed(0)
    t = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(len(data.train), generator=g)
        for s in range(0, len(order), batch):
            idx = order[s : s + batch]
            aug(normalise(data.train.x[idx], mean, std), data.train.y[idx], g)
    batched = time.perf_counter() - t

    pipeline = transforms.Compose(
        [
            transforms.RandomHorizontalFlip(),
            transforms.RandomCrop(data.image_size, padding=shift),
            transforms.ToTensor(),
            transforms.Normalize(data.mean, data.std),
        ]
    )
    loader = DataLoader(PILImages(data.train.x, data.train.y, pipeline), batch_size=batch, shuffle=True)
    t = time.perf_counter()
    for _ in range(epochs):
        for _batch in loader:
            pass
    per_sample = time.perf_counter() - t
    return {
        "name": "batched augmentation vs per-sample PIL DataLoader",
        "per_sample_s": per_sample,
        "batched_s": batched,
        "ratio": per_sample / batched,
        "target": "> 1 (faster)",
        "ok": per_sample > batched,
        "detail": f"{epochs} epochs of {len(data.train)} images, flip + translate ±{shift} px",
    }
