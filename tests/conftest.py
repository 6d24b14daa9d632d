"""Shared fixtures: CPU only, tiny synthetic data, tiny models."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from finch.config import ModelConfig, RecipeConfig
from finch.data.splits import Split, TaskData

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _cpu_threads():
    torch.set_num_threads(1)


def squares(n: int, size: int = 12, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Dark (label 0) and bright (label 1) squares on a noisy background."""
    g = np.random.default_rng(seed)
    y = np.arange(n) % 2
    x = g.integers(0, 40, size=(n, 1, size, size))
    lo, hi = size // 4, size - size // 4
    x[:, :, lo:hi, lo:hi] += np.where(y == 1, 180, 20)[:, None, None, None]
    return torch.from_numpy(np.clip(x, 0, 255).astype(np.uint8)), torch.from_numpy(y.astype(np.int64))


def make_task(n_train: int = 64, size: int = 12) -> TaskData:
    tr, va, te = squares(n_train, size, 1), squares(32, size, 2), squares(64, size, 3)
    return TaskData(
        name="toy",
        class_names=["dark", "bright"],
        train=Split(*tr),
        val=Split(*va),
        test=Split(*te),
        mean=(0.3,),
        std=(0.3,),
        content_hash="toy",
    )


@pytest.fixture
def toy_task() -> TaskData:
    return make_task()


TINY_MODEL = ModelConfig(name="resnet18", kwargs={"channels": [8, 8, 16, 16], "stem_width": 8})


def tiny_recipe(**overrides) -> RecipeConfig:
    base = {
        "epochs": 4,
        "batch_size": 16,
        "optimizer": {"name": "adamw", "lr": 0.01, "weight_decay": 0.0},
        "scheduler": {"name": "cosine", "warmup_epochs": 0},
        "budgets": [],  # the tests' runs: epochs, best validation epoch (the default recipe's budgets are wsd's)
        "select_on": "val_accuracy",
        "loss": {"label_smoothing": 0.0},  # the tests' numbers were set without it (the default recipe's is 0.1)
        "augment": {"flip": True, "translate": 1},
    }
    base.update(overrides)
    return RecipeConfig.model_validate(base)


def write_png(path: Path, value: int, size: int = 10, mode: str = "L") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    arr = rng.integers(0, 255, size=(size, size) if mode == "L" else (size, size, 3)).astype(np.uint8)
    Image.fromarray(arr, mode=mode).save(path)


def write_idx(path: Path, array: np.ndarray, magic: int) -> None:
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def fake_fashion_mnist(tmp_path: Path) -> Path:
    """A Fashion-MNIST-format folder: 10 classes, 20 train and 5 test images each."""
    root = tmp_path / "fmnist"
    root.mkdir()
    rng = np.random.default_rng(0)
    for prefix, per in (("train", 20), ("t10k", 5)):
        y = np.repeat(np.arange(10), per)
        x = rng.integers(0, 256, size=(len(y), 28, 28))
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", x, 2051)
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", y, 2049)
    return root


def train_seeds(variant, data, seeds, cfg, device, runs_root, models_root) -> list[Path]:
    """Every seed of ``variant`` in this process, as a stage trains them (finch.runner); returns
    the record folders."""
    from finch.runner import PlannedVariant, train_planned

    cfg = cfg.model_copy(update={"runtime": cfg.runtime.model_copy(update={"workers": 1})})
    planned = PlannedVariant(variant, data, list(seeds), Path(models_root), Path(runs_root))
    return train_planned([planned], cfg, device)


# Modules whose set-up runs a pipeline, a server or a browser, longest first. xdist hands out
# whole files in collection order (scripts/test.sh: --dist loadfile --no-loadscope-reorder), so
# starting these first lets the short files fill in around them instead of the end-to-end file
# starting last and running alone (longest-processing-time-first scheduling).
LONG_FIRST = (
    "test_pipeline_e2e",
    "test_dvc_queue",
    "test_tracking_server",
    "test_cluster",
    "test_tracking_auth",
    "test_mlflow_ui",
    "test_gpu_profile",
    "test_faults",
    "test_own_dataset",
    "test_runner",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONG_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.stem, len(LONG_FIRST)))  # stable: files keep their order
