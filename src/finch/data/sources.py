"""Readers for the supported image sources, each returning a :class:`RawData`.

- Fashion-MNIST idx files (Debian's ``dataset-fashion-mnist`` or any folder, e.g. torchvision's download);
- an ImageFolder tree (``root/<class>/*`` or ``root/{train,test}/<class>/*``);
- CUB-200-2011 in its official layout, with its official train/test split.

Images come back as uint8 arrays ``[N, C, H, W]`` at the configured size and channels.
"""

from __future__ import annotations

import gzip
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from finch.config import FASHION_MNIST_CLASSES, DataConfig
from finch.config.data import DEBIAN_FASHION_MNIST
from finch.errors import DataError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


@dataclass
class RawData:
    class_names: list[str]
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    train_ids: list[str]
    test_ids: list[str]
    origin: str
    skipped: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------- images
def load_image(path: Path, size: int, channels: int) -> np.ndarray:
    """Read one image file as uint8 ``[C, size, size]`` (shorter side resized, centre crop)."""
    try:
        with Image.open(path) as img:
            img.load()
            img = img.convert("L" if channels == 1 else "RGB")
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise DataError(
            f"{path}: unreadable or corrupt image ({err}); replace or delete the file, or set data.on_bad_image: skip"
        ) from None
    w, h = img.size
    scale = size / min(w, h)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((new_w, new_h), Image.Resampling.BICUBIC)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    img = img.crop((left, top, left + size, top + size))
    arr = np.asarray(img, dtype=np.uint8)
    return arr[None] if channels == 1 else arr.transpose(2, 0, 1).copy()


def load_images(paths: list[Path], size: int, channels: int) -> tuple[np.ndarray, list[int], dict[str, str]]:
    """Load many files; return (images, indices kept, unreadable file → why). Every file is
    tried, so a folder with several bad images is reported whole, not one file per attempt."""
    images, kept, bad = [], [], {}
    for i, path in enumerate(paths):
        try:
            images.append(load_image(path, size, channels))
            kept.append(i)
        except DataError as err:
            bad[str(path)] = str(err)
    stacked = np.stack(images) if images else np.zeros((0, channels, size, size), np.uint8)
    return stacked, kept, bad


def handle_bad_images(bad: dict[str, str], on_bad_image: str) -> list[str]:
    """Fail naming every unreadable image (``data.on_bad_image: fail``), or warn and return them
    as the skipped files (``skip``)."""
    if bad and on_bad_image == "fail":
        listed = "\n".join(f"  - {why}" for why in bad.values())
        raise DataError(
            f"{len(bad)} unreadable or corrupt image(s); replace or delete them, or set "
            f"data.on_bad_image: skip (skipped files are listed in the dataset card):\n{listed}"
        )
    for path in bad:
        log.warning("skipping unreadable image %s (data.on_bad_image=skip)", path)
    return list(bad)


def resize_array(x: np.ndarray, size: int, channels: int) -> np.ndarray:
    """Resize/expand in-memory uint8 ``[N, C, H, W]`` images to the configured shape."""
    import torch
    import torch.nn.functional as F

    if x.shape[1] != channels:
        if x.shape[1] == 1 and channels == 3:
            x = np.repeat(x, 3, axis=1)
        else:
            x = np.round(x.astype(np.float32).mean(axis=1, keepdims=True)).astype(np.uint8)
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    t = torch.from_numpy(x).float()
    t = F.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return t.round().clamp(0, 255).to(torch.uint8).numpy()


# ------------------------------------------------------------------------ fashion-mnist
def _read_idx(path: Path, magic: int) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as err:
        raise DataError(f"{path}: cannot read idx file ({err})") from None
    if len(raw) < 8 or int.from_bytes(raw[:4], "big") != magic:
        raise DataError(f"{path}: not an idx file (expected magic number {magic})")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise DataError(f"{path}: truncated idx file ({data.size} of {np.prod(dims)} values)")
    return data.reshape(dims)


def _find_idx(root: Path, stem: str) -> Path | None:
    for folder in (root, root / "FashionMNIST" / "raw"):
        for name in (stem, stem + ".gz"):
            if (folder / name).is_file():
                return folder / name
    return None


def fashion_mnist_root(cfg: DataConfig) -> Path:
    """data.root, where Fashion-MNIST's idx files are (or under FashionMNIST/raw/, torchvision's layout)."""
    root = Path(cfg.root)
    if not root.is_dir():
        raise DataError(
            f"data.root {root}: folder not found; set it to the folder with Fashion-MNIST's idx files "
            f"(Debian's dataset-fashion-mnist: {DEBIAN_FASHION_MNIST})"
        )
    if not _find_idx(root, "train-images-idx3-ubyte"):
        raise DataError(
            f"data.root {root}: no Fashion-MNIST idx files (train-images-idx3-ubyte[.gz], ...). Install Debian's "
            f"(apt-get install dataset-fashion-mnist: {DEBIAN_FASHION_MNIST}), or download them once with "
            'torchvision (python -c "from torchvision.datasets import FashionMNIST as F; '
            "F('data/raw', download=True); F('data/raw', train=False, download=True)\") and set data.root: data/raw"
        )
    return root


def read_fashion_mnist(cfg: DataConfig) -> RawData:
    root = fashion_mnist_root(cfg)
    if not root.is_dir():
        raise DataError(f"data.root {root}: folder not found; point it at the Fashion-MNIST idx files")
    parts = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        img_path = _find_idx(root, f"{prefix}-images-idx3-ubyte")
        lbl_path = _find_idx(root, f"{prefix}-labels-idx1-ubyte")
        if img_path is None or lbl_path is None:
            raise DataError(
                f"{root}: missing {prefix}-images-idx3-ubyte[.gz] or "
                f"{prefix}-labels-idx1-ubyte[.gz]; is data.root the Fashion-MNIST folder?"
            )
        x = _read_idx(img_path, 2051)
        y = _read_idx(lbl_path, 2049).astype(np.int64)
        if len(x) != len(y):
            raise DataError(f"{img_path} has {len(x)} images but {lbl_path} has {len(y)} labels")
        bad = np.flatnonzero((y < 0) | (y >= len(FASHION_MNIST_CLASSES)))
        if bad.size:
            raise DataError(f"{lbl_path}: label {y[bad[0]]} at index {bad[0]} is out of range 0..9")
        parts[split] = (resize_array(x[:, None], cfg.image_size, cfg.channels), y)
    return RawData(
        class_names=list(FASHION_MNIST_CLASSES),
        train_x=parts["train"][0],
        train_y=parts["train"][1],
        test_x=parts["test"][0],
        test_y=parts["test"][1],
        train_ids=[f"train[{i}]" for i in range(len(parts["train"][1]))],
        test_ids=[f"test[{i}]" for i in range(len(parts["test"][1]))],
        origin=str(root),
    )


# ------------------------------------------------------------------------- imagefolder
def _class_folders(root: Path) -> dict[str, list[Path]]:
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DataError(f"{root}: no class folders; expected {root}/<class>/<image files>")
    out = {}
    for folder in folders:
        files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise DataError(
                f"{folder}: class folder has no images (extensions {', '.join(IMAGE_EXTENSIONS)}); "
                "add images or remove the folder"
            )
        out[folder.name] = files
    return out


def read_image_folder(cfg: DataConfig) -> RawData:
    classes, train_tree, test_tree = image_folder_trees(cfg)
    return _load_trees(cfg, classes, train_tree, test_tree, origin=str(cfg.root))


def image_folder_trees(cfg: DataConfig) -> tuple[list[str], dict[str, list[Path]], dict[str, list[Path]]]:
    """The classes and each one's training and test files of an image folder (listed, not read)."""
    if not cfg.root:
        raise DataError("data.source is image_folder but data.root is not set; set it to the tree's root")
    root = Path(cfg.root)
    if not root.is_dir():
        raise DataError(f"data.root {root}: folder not found; set data.root to the image tree's folder")
    if not any(root.iterdir()):
        raise DataError(f"data.root {root}: folder is empty")
    if (root / "train").is_dir() and (root / "test").is_dir():
        train_tree, test_tree = _class_folders(root / "train"), _class_folders(root / "test")
        if set(train_tree) != set(test_tree):
            raise DataError(
                f"{root}: train/ and test/ have different classes "
                f"(only in train: {sorted(set(train_tree) - set(test_tree))}, "
                f"only in test: {sorted(set(test_tree) - set(train_tree))})"
            )
    else:
        tree = _class_folders(root)
        rng = np.random.default_rng(cfg.data_seed)
        train_tree, test_tree = {}, {}
        for name, files in tree.items():
            order = rng.permutation(len(files))
            n_test = max(1, round(cfg.test_fraction * len(files)))
            if len(files) - n_test < 2:
                raise DataError(f"{root / name}: {len(files)} image(s) is too few to split; need at least 3")
            test_tree[name] = [files[i] for i in sorted(order[:n_test])]
            train_tree[name] = [files[i] for i in sorted(order[n_test:])]
    return sorted(train_tree), train_tree, test_tree


def _load_trees(cfg, classes, train_tree, test_tree, origin) -> RawData:
    parts, bad = {}, {}
    for split, tree in (("train", train_tree), ("test", test_tree)):
        paths, labels = [], []
        for label, name in enumerate(classes):
            paths += tree[name]
            labels += [label] * len(tree[name])
        x, kept, unreadable = load_images(paths, cfg.image_size, cfg.channels)
        bad.update(unreadable)
        parts[split] = (x, np.asarray(labels, np.int64)[kept], [str(paths[i]) for i in kept])
    skipped = handle_bad_images(bad, cfg.on_bad_image)  # both splits read: every bad file in one error
    return RawData(
        class_names=classes,
        train_x=parts["train"][0],
        train_y=parts["train"][1],
        test_x=parts["test"][0],
        test_y=parts["test"][1],
        train_ids=parts["train"][2],
        test_ids=parts["test"][2],
        origin=origin,
        skipped=skipped,
    )


# ------------------------------------------------------------------------------ cub200
CUB_FILES = ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt")


def _read_pairs(path: Path) -> dict[int, str]:
    out: dict[int, str] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or not parts[0].isdigit():
            raise DataError(f"{path}:{n}: expected '<id> <value>', got {line!r}")
        key = int(parts[0])
        if key in out:
            raise DataError(f"{path}:{n}: id {key} appears twice")
        out[key] = parts[1].strip()
    return out


def read_cub200(cfg: DataConfig) -> RawData:
    names, train_tree, test_tree = cub200_trees(cfg)
    return _load_trees(cfg, names, train_tree, test_tree, origin=str(cfg.root))


def cub200_trees(cfg: DataConfig) -> tuple[list[str], dict[str, list[Path]], dict[str, list[Path]]]:
    """CUB-200-2011's classes and each one's training and test files (its own split; listed, not read)."""
    if not cfg.root:
        raise DataError("data.source is cub200 but data.root is not set; point it at CUB_200_2011/")
    root = Path(cfg.root)
    if not root.is_dir():
        raise DataError(f"data.root {root}: folder not found; set data.root to the CUB_200_2011 folder")
    missing = [f for f in (*CUB_FILES, "images") if not (root / f).exists()]
    if missing:
        raise DataError(f"{root}: not the CUB-200-2011 layout, missing {', '.join(missing)}")
    images = _read_pairs(root / "images.txt")
    labels = _read_pairs(root / "image_class_labels.txt")
    split = _read_pairs(root / "train_test_split.txt")
    classes = _read_pairs(root / "classes.txt")
    for name, table in (("image_class_labels.txt", labels), ("train_test_split.txt", split)):
        if set(table) != set(images):
            diff = sorted(set(table) ^ set(images))[:5]
            raise DataError(
                f"{root / name} and images.txt list different image ids (e.g. {diff}); the CUB files disagree"
            )
    class_ids = sorted(classes)
    if class_ids != list(range(1, len(class_ids) + 1)):
        raise DataError(f"{root / 'classes.txt'}: class ids must be 1..{len(class_ids)}")
    train_tree: dict[str, list[Path]] = {classes[c]: [] for c in class_ids}
    test_tree: dict[str, list[Path]] = {classes[c]: [] for c in class_ids}
    for img_id in sorted(images):
        lbl = labels[img_id]
        if not lbl.isdigit() or not 1 <= int(lbl) <= len(class_ids):
            raise DataError(
                f"{root / 'image_class_labels.txt'}: image {img_id} has label {lbl!r}, "
                f"outside 1..{len(class_ids)} of classes.txt"
            )
        if split[img_id] not in ("0", "1"):
            raise DataError(
                f"{root / 'train_test_split.txt'}: image {img_id} has split {split[img_id]!r}, expected 0 or 1"
            )
        path = root / "images" / images[img_id]
        if not path.is_file():
            raise DataError(f"{path}: listed in images.txt (id {img_id}) but missing")
        tree = train_tree if split[img_id] == "1" else test_tree
        tree[classes[int(lbl)]].append(path)
    names = [classes[c] for c in class_ids]
    for name in names:
        if not train_tree[name]:
            raise DataError(f"{root}: class {name!r} has no training images in train_test_split.txt")
    return names, train_tree, test_tree


READERS = {
    "fashion_mnist": read_fashion_mnist,
    "image_folder": read_image_folder,
    "cub200": read_cub200,
}


def read_source(cfg: DataConfig) -> RawData:
    """Read the configured source into memory."""
    return READERS[cfg.source](cfg)


def training_image_counts(cfg: DataConfig) -> dict[str, int] | None:
    """Each class's training images (before the validation split) of a file-tree source, from
    listing its files (nothing decoded); None for Fashion-MNIST (its counts are fixed)."""
    trees = {"image_folder": image_folder_trees, "cub200": cub200_trees}.get(cfg.source)
    if trees is None:
        return None
    _, train_tree, _ = trees(cfg)
    return {name: len(files) for name, files in train_tree.items()}
