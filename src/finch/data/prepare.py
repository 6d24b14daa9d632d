"""The ``prepare`` stage: sample the target and source tasks, check them, save them.

Outputs (in one folder, renamed into place only when complete):
``target.safetensors`` and ``source.safetensors`` (uint8 images and int64 labels per
split) and ``card.json`` (classes, counts per class and split, size, channels, hashes).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np

from finch.config import DataConfig
from finch.config.data import validation_count
from finch.data.sources import RawData, read_source, training_image_counts
from finch.errors import ConfigError, DataError
from finch.io import atomic_dir, save_tensors, write_json

log = logging.getLogger(__name__)
SPLITS = ("train", "val", "test")


def resolve_classes(cfg: DataConfig, names: list[str]) -> tuple[list[int], list[int]]:
    """Indices of the target and source classes among ``names``."""

    def indices(wanted: list[str], key: str) -> list[int]:
        unknown = [w for w in wanted if w not in names]
        if unknown:
            raise DataError(f"data.{key}: unknown class(es) {unknown}; the data has {names}")
        return [names.index(w) for w in wanted]

    target = indices(cfg.target_classes, "target_classes") if cfg.target_classes else list(range(len(names)))
    if cfg.source_classes == "rest":
        source = [i for i in range(len(names)) if i not in target]
    else:
        source = indices(cfg.source_classes, "source_classes")
    overlap = set(target) & set(source)
    if overlap:
        raise DataError(
            f"data.source_classes and data.target_classes share {[names[i] for i in overlap]}; "
            "pretraining on target classes would leak"
        )
    return target, source


def check_scarce_size(cfg: DataConfig, real_per_class: int | None) -> None:
    """Fail before any work when the scarce-data study (``synthetic.real_per_class`` training
    images of each target class) asks for more than the data's smallest target class has after
    the validation split; the files are listed, not read."""
    counts = training_image_counts(cfg) if real_per_class is not None else None
    if not counts:
        return
    target = cfg.target_classes or sorted(counts)
    left = {}
    for name in target:
        if name not in counts:
            raise DataError(f"data.target_classes: unknown class {name!r}; the data has {sorted(counts)}")
        wanted = counts[name] if cfg.per_class_train is None else min(cfg.per_class_train, counts[name])
        left[name] = wanted - validation_count(wanted, cfg.val_fraction)
    smallest = min(left, key=left.get)
    if real_per_class > left[smallest]:
        raise ConfigError(
            f"synthetic.real_per_class is {real_per_class} but class {smallest!r} of {cfg.root} has "
            f"{left[smallest]} training images after the test and validation splits; set "
            f"synthetic.real_per_class to at most {left[smallest]} in your profile, or null (every training image)"
        )


def stratified_sample(
    labels: np.ndarray,
    classes: list[int],
    per_class: int | None,
    val_fraction: float,
    rng: np.random.Generator,
    class_names: list[str],
    key: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Pick ``per_class`` indices of each class, then carve a stratified validation part."""
    train_idx, val_idx = [], []
    for c in classes:
        pool = np.flatnonzero(labels == c)
        wanted = len(pool) if per_class is None else per_class
        if len(pool) < wanted:
            raise DataError(
                f"class {class_names[c]!r} has {len(pool)} training images but data.{key} "
                f"asks for {wanted}; lower it or set it to null (all images)"
            )
        chosen = np.sort(rng.choice(pool, size=wanted, replace=False))
        n_val = validation_count(wanted, val_fraction)
        if wanted - n_val < 1:
            raise DataError(
                f"class {class_names[c]!r}: {wanted} image(s) leave none for training after the validation split"
            )
        shuffled = rng.permutation(chosen)
        val_idx.append(np.sort(shuffled[:n_val]))
        train_idx.append(np.sort(shuffled[n_val:]))
    return np.concatenate(train_idx), np.concatenate(val_idx)


def first_per_class(labels: np.ndarray, classes: list[int], per_class: int | None) -> np.ndarray:
    """Indices of the test images of ``classes``: every one (``None``), or the first
    ``per_class`` of each class in the source's order (no random draw: a smaller test split is
    a prefix of the full one)."""
    if per_class is None:
        return np.flatnonzero(np.isin(labels, classes))
    return np.sort(np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in classes]))


def image_hashes(x: np.ndarray) -> list[str]:
    return [hashlib.sha1(img.tobytes()).hexdigest() for img in x]


def check_no_leak(splits: dict[str, tuple[np.ndarray, list[str]]], task: str) -> None:
    """Fail when the same image (byte for byte) is in two splits."""
    seen: dict[str, tuple[str, str]] = {}
    for split, (x, ids) in splits.items():
        for h, ident in zip(image_hashes(x), ids, strict=True):
            if h in seen and seen[h][0] != split:
                other_split, other_id = seen[h]
                raise DataError(
                    f"{task} task: the same image is in {other_split} ({other_id}) and "
                    f"{split} ({ident}); remove the duplicate so test results are honest"
                )
            seen.setdefault(h, (split, ident))


def build_task(
    raw: RawData,
    classes: list[int],
    per_class: int | None,
    cfg: DataConfig,
    rng: np.random.Generator,
    task: str,
    key: str,
) -> tuple[dict[str, np.ndarray], dict]:
    """Select one task's splits; labels are remapped to 0..len(classes)-1."""
    train_idx, val_idx = stratified_sample(raw.train_y, classes, per_class, cfg.val_fraction, rng, raw.class_names, key)
    test_idx = first_per_class(raw.test_y, classes, cfg.per_class_test)
    remap = np.full(len(raw.class_names), -1, np.int64)
    remap[classes] = np.arange(len(classes))
    chosen = {
        "train": (raw.train_x[train_idx], remap[raw.train_y[train_idx]], [raw.train_ids[i] for i in train_idx]),
        "val": (raw.train_x[val_idx], remap[raw.train_y[val_idx]], [raw.train_ids[i] for i in val_idx]),
        "test": (raw.test_x[test_idx], remap[raw.test_y[test_idx]], [raw.test_ids[i] for i in test_idx]),
    }
    check_no_leak({s: (x, ids) for s, (x, _, ids) in chosen.items()}, task)
    names = [raw.class_names[c] for c in classes]
    tensors, counts = {}, {}
    for split, (x, y, _) in chosen.items():
        if len(y) == 0:
            raise DataError(f"{task} task: the {split} split is empty; check data.{key} and the test folder")
        tensors[f"{split}_x"] = np.ascontiguousarray(x)
        tensors[f"{split}_y"] = y
        counts[split] = {names[i]: int((y == i).sum()) for i in range(len(names))}
    blob = b"".join(tensors[k].tobytes() for k in sorted(tensors))
    card = {"classes": names, "counts": counts, "content_hash": hashlib.sha256(blob).hexdigest()}
    return tensors, card


def prepare(cfg: DataConfig, out_dir: Path | str) -> dict:
    """Run the whole stage; return the dataset card."""
    raw = read_source(cfg)
    target_cls, source_cls = resolve_classes(cfg, raw.class_names)
    rng = np.random.default_rng(cfg.data_seed)
    target, target_card = build_task(raw, target_cls, cfg.per_class_train, cfg, rng, "target", "per_class_train")
    card = {
        "source": cfg.source,
        "origin": raw.origin,
        "image_size": cfg.image_size,
        "channels": cfg.channels,
        "mean": cfg.mean,
        "std": cfg.std,
        "data_seed": cfg.data_seed,
        "target": target_card,
        "source_task": None,
        "skipped_images": raw.skipped,
    }
    source = None
    if source_cls:
        source, card["source_task"] = build_task(
            raw, source_cls, cfg.per_class_pretrain, cfg, rng, "source", "per_class_pretrain"
        )
    with atomic_dir(out_dir) as tmp:
        save_tensors(tmp / "target.safetensors", target)
        if source is not None:
            save_tensors(tmp / "source.safetensors", source)
        write_json(tmp / "card.json", card)
    return card
