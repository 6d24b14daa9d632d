import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from finch.config import DataConfig
from finch.data.prepare import prepare
from finch.data.sources import read_source
from finch.data.splits import load_task
from finch.errors import DataError

from .conftest import write_idx, write_png


def folder_cfg(root: Path, **kw) -> DataConfig:
    base = dict(
        source="image_folder",
        root=str(root),
        image_size=8,
        channels=1,
        target_classes=None,
        per_class_train=None,
        source_classes=[],
        mean=[0.5],
        std=[0.5],
        val_fraction=0.25,
    )
    base.update(kw)
    return DataConfig(**base)


def make_tree(root: Path, classes=("a", "b", "c"), per_class=8, split_dirs=False) -> None:
    for ci, name in enumerate(classes):
        for i in range(per_class):
            sub = root / ("train" if i < per_class - 2 else "test") if split_dirs else root
            write_png(sub / name / f"{i}.png", value=100 * ci + i, size=10 + i % 3)


def test_image_folder_prepares_splits_and_card(tmp_path):
    make_tree(tmp_path / "tree")
    card = prepare(folder_cfg(tmp_path / "tree"), tmp_path / "out")
    task = load_task(tmp_path / "out", "target")
    assert task.class_names == ["a", "b", "c"]
    assert task.train.x.shape[1:] == (1, 8, 8) and task.train.x.dtype == torch.uint8
    total = len(task.train) + len(task.val) + len(task.test)
    assert total == 24
    assert set(card["target"]["counts"]) == {"train", "val", "test"}
    assert all(v == 2 for v in card["target"]["counts"]["test"].values())  # stratified test (20% of 8)
    assert len(card["target"]["content_hash"]) == 64


def test_image_folder_with_train_test_dirs_and_rgb(tmp_path):
    make_tree(tmp_path / "tree", split_dirs=True)
    card = prepare(folder_cfg(tmp_path / "tree", channels=3, mean=[0.5] * 3, std=[0.5] * 3), tmp_path / "out")
    task = load_task(tmp_path / "out")
    assert task.in_chans == 3
    assert sum(card["target"]["counts"]["test"].values()) == 6


@pytest.mark.parametrize(
    "case,match",
    [
        ("missing_root", "folder not found"),
        ("empty_root", "folder is empty"),
        ("empty_class", "class folder has no images"),
        ("corrupt", r"bad\.png: unreadable or corrupt image"),
    ],
)
def test_bad_image_folders_fail_clearly_and_leave_nothing(tmp_path, case, match):
    root = tmp_path / "tree"
    if case != "missing_root":
        root.mkdir()
    if case in ("empty_class", "corrupt"):
        make_tree(root)
    if case == "empty_class":
        (root / "d").mkdir()
    if case == "corrupt":
        (root / "b" / "bad.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match=match):
        prepare(folder_cfg(root), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_every_corrupt_image_is_named_in_one_error(tmp_path):
    root = tmp_path / "tree"
    make_tree(root)
    bad = [root / "a" / "bad1.png", root / "b" / "bad2.jpg", root / "c" / "bad3.png"]
    for path in bad:
        path.write_bytes(b"not an image")
    with pytest.raises(DataError, match="3 unreadable or corrupt image") as err:
        prepare(folder_cfg(root), tmp_path / "out")
    for path in bad:  # all of them, wherever the split put them, not the first one only
        assert f"{path}: unreadable or corrupt image" in str(err.value)
    assert "data.on_bad_image: skip" in str(err.value)
    assert not (tmp_path / "out").exists()


def test_corrupt_image_can_be_skipped_and_reported(tmp_path):
    root = tmp_path / "tree"
    make_tree(root)
    (root / "b" / "bad.png").write_bytes(b"garbage")
    card = prepare(folder_cfg(root, on_bad_image="skip"), tmp_path / "out")
    assert [Path(p).name for p in card["skipped_images"]] == ["bad.png"]


def test_same_image_in_train_and_test_is_a_leak(tmp_path):
    root = tmp_path / "tree"
    make_tree(root, split_dirs=True)
    shutil.copy(root / "train" / "a" / "0.png", root / "test" / "a" / "copy.png")
    with pytest.raises(DataError, match=r"same image is in (train|val) .* and test"):
        prepare(folder_cfg(root), tmp_path / "out")


def make_cub(root: Path, n_classes=3, per_class=4) -> None:
    images, labels, split, classes = [], [], [], []
    img_id = 1
    for c in range(1, n_classes + 1):
        classes.append(f"{c} {c:03d}.Bird_{c}")
        for i in range(per_class):
            rel = f"{c:03d}.Bird_{c}/img_{i}.jpg"
            write_png(root / "images" / rel, value=10 * c + i, size=12, mode="RGB")
            images.append(f"{img_id} {rel}")
            labels.append(f"{img_id} {c}")
            split.append(f"{img_id} {1 if i < per_class - 1 else 0}")
            img_id += 1
    for name, lines in (
        ("images.txt", images),
        ("image_class_labels.txt", labels),
        ("train_test_split.txt", split),
        ("classes.txt", classes),
    ):
        (root / name).write_text("\n".join(lines) + "\n")


def cub_cfg(root: Path) -> DataConfig:
    return DataConfig(
        source="cub200",
        root=str(root),
        image_size=8,
        channels=3,
        target_classes=None,
        per_class_train=None,
        source_classes=[],
        val_fraction=0.34,
        mean=[0.5] * 3,
        std=[0.5] * 3,
    )


def test_cub_official_split(tmp_path):
    make_cub(tmp_path / "cub")
    raw = read_source(cub_cfg(tmp_path / "cub"))
    assert raw.class_names == ["001.Bird_1", "002.Bird_2", "003.Bird_3"]
    assert len(raw.train_y) == 9 and len(raw.test_y) == 3
    assert raw.train_x.shape == (9, 3, 8, 8)


@pytest.mark.parametrize(
    "breakage,match",
    [
        ("drop_label", "list different image ids"),
        ("bad_label", "outside 1..3"),
        ("missing_image", "listed in images.txt"),
        ("no_classes_file", "missing classes.txt"),
    ],
)
def test_cub_inconsistent_files_fail(tmp_path, breakage, match):
    root = tmp_path / "cub"
    make_cub(root)
    if breakage == "drop_label":
        lines = (root / "image_class_labels.txt").read_text().splitlines()[:-1]
        (root / "image_class_labels.txt").write_text("\n".join(lines) + "\n")
    elif breakage == "bad_label":
        (root / "image_class_labels.txt").write_text(
            (root / "image_class_labels.txt").read_text().replace("1 1\n", "1 7\n", 1)
        )
    elif breakage == "missing_image":
        next((root / "images").rglob("*.jpg")).unlink()
    else:
        (root / "classes.txt").unlink()
    with pytest.raises(DataError, match=match):
        read_source(cub_cfg(root))


def fm_cfg(root: Path, **kw) -> DataConfig:
    base = dict(
        root=str(root),
        target_classes=["T-shirt/top", "Pullover", "Coat", "Shirt"],
        per_class_train=10,
        per_class_pretrain=8,
        val_fraction=0.2,
    )
    base.update(kw)
    return DataConfig(**base)


def test_fashion_mnist_target_and_source_tasks(fake_fashion_mnist, tmp_path):
    card = prepare(fm_cfg(fake_fashion_mnist), tmp_path / "out")
    target, source = load_task(tmp_path / "out", "target"), load_task(tmp_path / "out", "source")
    assert target.class_names == ["T-shirt/top", "Pullover", "Coat", "Shirt"]
    assert card["target"]["counts"]["train"] == {c: 8 for c in target.class_names}
    assert card["target"]["counts"]["val"] == {c: 2 for c in target.class_names}
    assert len(target.test) == 20 and int(target.train.y.max()) == 3
    assert len(source.class_names) == 6 and "Shirt" not in source.class_names
    again = prepare(fm_cfg(fake_fashion_mnist), tmp_path / "again")
    assert again["target"]["content_hash"] == card["target"]["content_hash"]  # fixed data seed


def test_per_class_test_keeps_the_first_test_images_of_each_class(fake_fashion_mnist, tmp_path):
    prepare(fm_cfg(fake_fashion_mnist), tmp_path / "all")
    card = prepare(fm_cfg(fake_fashion_mnist, per_class_test=2), tmp_path / "few")
    full, few = load_task(tmp_path / "all"), load_task(tmp_path / "few")
    assert card["target"]["counts"]["test"] == {c: 2 for c in few.class_names}
    for c in range(4):  # the first two of each class, in the source's order
        assert torch.equal(few.test.x[few.test.y == c], full.test.x[full.test.y == c][:2])
    # training and validation splits do not change (no random draw is spent on the test split)
    assert torch.equal(few.train.x, full.train.x) and torch.equal(few.val.x, full.val.x)
    assert len(load_task(tmp_path / "few", "source").test) == 6 * 2


def test_fashion_mnist_resize_to_rgb(fake_fashion_mnist, tmp_path):
    prepare(fm_cfg(fake_fashion_mnist, image_size=32, channels=3, mean=[0.3] * 3, std=[0.3] * 3), tmp_path / "o")
    assert load_task(tmp_path / "o").train.x.shape[1:] == (3, 32, 32)


def test_fashion_mnist_bad_inputs(fake_fashion_mnist, tmp_path):
    with pytest.raises(DataError, match="asks for 30"):
        prepare(fm_cfg(fake_fashion_mnist, per_class_train=30), tmp_path / "o")
    with pytest.raises(DataError, match="unknown class"):
        prepare(fm_cfg(fake_fashion_mnist, target_classes=["Hat"]), tmp_path / "o")
    write_idx(fake_fashion_mnist / "train-labels-idx1-ubyte.gz", np.repeat(np.arange(10), 20) + 1, 2049)
    with pytest.raises(DataError, match="out of range 0..9"):
        prepare(fm_cfg(fake_fashion_mnist), tmp_path / "o")
    (fake_fashion_mnist / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="missing train-images"):
        prepare(fm_cfg(fake_fashion_mnist), tmp_path / "o")
    with pytest.raises(DataError, match="folder not found"):
        prepare(fm_cfg(tmp_path / "nowhere"), tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_an_unset_data_root_fails_naming_the_key_and_the_debian_folder(tmp_path):
    """dvc.yaml's prepare depends on ${data.root}: an unset root would render as a path 'None'."""
    with pytest.raises(ValueError, match=r"data\.root is not set.*/usr/share/datasets/fashion-mnist"):
        DataConfig(root=None)
    with pytest.raises(Exception, match=r"no Fashion-MNIST idx files.*apt-get install dataset-fashion-mnist"):
        prepare(DataConfig(root=str(tmp_path)), tmp_path / "out")
