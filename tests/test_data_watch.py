"""DVC watches the images: `prepare` depends on `data.root` (dvc.yaml's `${data.root}`), so a
deleted, added or renamed image makes `dvc status` name it, through DVC's own directory hash;
an untouched tree does not. Asked through DVC's API on a repository with an image folder
outside it."""

from __future__ import annotations

import shutil

import pytest
import yaml
from dvc.repo import Repo

from .conftest import write_png
from .servers import make_smoke_repo, run, smoke_env

pytestmark = pytest.mark.slow
CLASSES = ("a", "b", "c")


def stale(repo) -> set[str]:
    """The stages `dvc status` names (with what changed), through DVC's API."""
    with Repo(str(repo)) as dvc:  # keys "<path to dvc.yaml>:<stage>" when asked from outside the repository
        return {key.rsplit(":", 1)[-1] for key in dvc.status()}


@pytest.fixture
def folder_repo(tmp_path):
    repo, images = tmp_path / "repo", tmp_path / "images"  # the images outside the repository
    repo.mkdir()
    env = smoke_env()
    make_smoke_repo(repo, env)
    for ci, name in enumerate(CLASSES):
        for i in range(12):
            write_png(images / name / f"{i}.png", value=100 * ci + i)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["data"].update(
        source="image_folder",
        root=str(images),
        image_size=10,
        channels=1,
        target_classes=["a", "b"],
        source_classes=["c"],
        per_class_train=None,
        per_class_pretrain=None,
        per_class_test=None,
    )
    params["synthetic"]["real_per_class"] = None
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["dvc", "repro", "prepare"], repo, env)
    assert "prepare" not in stale(repo)
    return repo, images, env


def test_deleting_adding_or_renaming_an_image_invalidates_prepare(folder_repo):
    repo, images, env = folder_repo
    changes = {
        "delete": lambda: (images / "a" / "3.png").unlink(),
        "add": lambda: write_png(images / "b" / "new.png", value=999),
        "rename": lambda: shutil.move(images / "b" / "5.png", images / "a" / "b5.png"),  # wrong class, same bytes
    }
    for what, change in changes.items():
        change()
        assert "prepare" in stale(repo), what
        run(["dvc", "repro", "prepare"], repo, env)
        assert "prepare" not in stale(repo), what
    card = yaml.safe_load((repo / "data/prepared/card.json").read_text())
    counts = card["target"]["counts"]
    # a: 12 - 1 deleted + 1 moved in; b: 12 + 1 added - 1 moved out
    assert {c: sum(split[c] for split in counts.values()) for c in ("a", "b")} == {"a": 12, "b": 12}


def test_an_untouched_tree_leaves_prepare_up_to_date(folder_repo):
    repo, images, _ = folder_repo
    (images / "a" / "0.png").touch()  # a new mtime, the same bytes: DVC re-hashes the file, nothing changed
    assert "prepare" not in stale(repo)
