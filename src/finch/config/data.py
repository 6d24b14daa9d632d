"""``data``: which images, how many, and how they are normalised."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from finch.config.base import Strict

DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"  # Debian's dataset-fashion-mnist
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


def validation_count(wanted: int, val_fraction: float) -> int:
    """Images of a class carved for validation out of ``wanted`` (at least one): the prepare
    stage's split, and the checks that must agree with it."""
    return max(1, round(val_fraction * wanted))


class DataConfig(Strict):
    source: Literal["fashion_mnist", "image_folder", "cub200"] = "fashion_mnist"
    root: str | None = Field(
        DEBIAN_FASHION_MNIST,
        description="the data's folder (Fashion-MNIST: its idx files; an image tree; CUB_200_2011/), inside or "
        "outside the repository: dvc.yaml's prepare stage depends on it, so DVC sees an image added, removed or "
        "changed",
    )
    image_size: int = Field(28, ge=8, le=1024)
    channels: Literal[1, 3] = 1
    target_classes: list[str] | None = Field(
        default_factory=lambda: ["T-shirt/top", "Pullover", "Coat", "Shirt"],
        description="class names of the fine-grained target task; null = all",
    )
    source_classes: list[str] | Literal["rest"] = Field(
        "rest", description="classes for pretraining; 'rest' = all not in the target"
    )
    per_class_train: int | None = Field(1000, ge=2, description="null = all images")
    per_class_pretrain: int | None = Field(1000, ge=2, description="null = all images")
    per_class_test: int | None = Field(
        None, ge=1, description="at most this many test images per class, the first in the source's order; null = all"
    )
    val_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0, description="image_folder without a test/ folder only")
    data_seed: int = Field(0, ge=0)
    split_per_seed: bool = Field(
        True,
        description="each seed of a study draws its own stratified train/validation split from the training "
        "images (the test split fixed), so seeds vary the data as well as initialisation and order; "
        "false: data_seed's split for every seed",
    )
    on_bad_image: Literal["fail", "skip"] = "fail"
    mean: list[float] = Field(default_factory=lambda: [0.2860])
    std: list[float] = Field(default_factory=lambda: [0.3530])

    @model_validator(mode="after")
    def _root_is_a_folder(self) -> DataConfig:
        if not self.root:
            raise ValueError(
                "data.root is not set: dvc.yaml's prepare stage depends on the data's folder (${data.root}), so DVC "
                f"sees the images change; set it (Fashion-MNIST: {DEBIAN_FASHION_MNIST}, Debian's "
                "dataset-fashion-mnist; an image tree's root; CUB_200_2011/)"
            )
        return self

    @model_validator(mode="after")
    def _norm_matches_channels(self) -> DataConfig:
        for key in ("mean", "std"):
            if len(getattr(self, key)) != self.channels:
                raise ValueError(
                    f"data.{key} has {len(getattr(self, key))} values but data.channels is "
                    f"{self.channels}; give one value per channel"
                )
        if any(s <= 0 for s in self.std):
            raise ValueError("data.std values must be > 0")
        return self
