"""Bad inputs the other tests do not feed: each must end in an error a user can act on, or a
warning, and never leave a half-written or temporary file behind.

Weights and pickle cases are in test_weights_safety.py; the code scan is in test_lint.py.
"""

from __future__ import annotations

import errno
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy
import torch

from finch.config import FinchConfig
from finch.data.prepare import prepare
from finch.errors import NonFiniteLossError
from finch.io import read_json, save_tensors, write_text
from finch.models import build_model
from finch.runs import find_records
from finch.tracking import Tracker, sync
from finch.train.engine import fit
from finch.train.losses import Objective

from .conftest import REPO, TINY_MODEL, tiny_recipe, train_seeds
from .test_data import folder_cfg, make_tree
from .test_study import variant

CPU = torch.device("cpu")


def temp_leftovers(folder: Path) -> list[str]:
    """finch.io's temporary files and folders (``.<dest name>.*.tmp``) left in ``folder``."""
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp"))


def full_disk_write_text(self: Path, data: str, *args, **kwargs) -> int:
    """``Path.write_text`` on a disk that fills up after half the text."""
    with open(self, "w") as f:
        f.write(data[: len(data) // 2])
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))


def full_disk_save_file(tensors, filename, metadata=None) -> None:
    """``safetensors.numpy.save_file`` on a disk that fills up after 64 bytes."""
    Path(filename).write_bytes(b"\x00" * 64)
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(filename))


# --------------------------------------------------------------------------------- data


def test_skipped_corrupt_image_is_warned_and_every_readable_image_kept(tmp_path, caplog):
    root = tmp_path / "tree"
    make_tree(root)  # 3 classes x 8 images
    (root / "b" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    card = prepare(folder_cfg(root, on_bad_image="skip"), tmp_path / "out")
    assert [Path(p).name for p in read_json(tmp_path / "out" / "card.json")["skipped_images"]] == ["bad.png"]
    assert sum(sum(split.values()) for split in card["target"]["counts"].values()) == 24
    assert "bad.png" in caplog.text and "on_bad_image=skip" in caplog.text


# ----------------------------------------------------------------------------- training


def test_non_finite_loss_leaves_no_checkpoint(toy_task, tmp_path):
    class NaNLoss(Objective):
        def loss(self, outputs, targets, inputs):
            return super().loss(outputs, targets, inputs) * math.nan

    recipe = tiny_recipe(epochs=2)
    ckpt = tmp_path / "ckpt" / "seed=0.pt"
    model = build_model(TINY_MODEL, toy_task.num_classes, toy_task.in_chans)
    with pytest.raises(NonFiniteLossError, match=r"epoch 1, step 1.*recipe\.grad_clip"):
        fit(
            model,
            toy_task,
            recipe,
            seed=0,
            device=CPU,
            objective=NaNLoss(recipe.loss, 2, mixing=False),
            checkpoint_path=ckpt,
            fingerprint="nan",
            progress=False,
        )
    assert not ckpt.exists() and temp_leftovers(ckpt.parent) == []


# ------------------------------------------------------------------------------- writes

WRITER = """
import sys
from pathlib import Path
from finch.io import write_text
dest, version = sys.argv[1], Path(sys.argv[2]).read_text()
for _ in range(20):
    write_text(dest, version)
"""


def test_concurrent_writers_never_show_a_torn_file(tmp_path):
    dest = tmp_path / "out" / "result.txt"
    versions = {tag: f"begin {tag}\n" + tag * 1_000_000 + f"\nend {tag}\n" for tag in "AB"}
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    procs = []
    for tag, text in versions.items():
        (tmp_path / tag).write_text(text)
        procs.append(subprocess.Popen([sys.executable, "-c", WRITER, str(dest), str(tmp_path / tag)], env=env))
    reads, torn = 0, []
    while any(p.poll() is None for p in procs):
        try:
            seen = dest.read_text()
        except FileNotFoundError:  # before the first rename
            continue
        reads += 1
        if seen not in versions.values():
            torn.append(f"{len(seen)} chars, ends {seen[-8:]!r}")
    assert [p.wait() for p in procs] == [0, 0]
    assert reads > 0 and torn == [], f"{len(torn)} of {reads} reads saw a mixed or truncated file: {torn[:3]}"
    assert dest.read_text() in versions.values()
    assert temp_leftovers(dest.parent) == []


def test_full_disk_keeps_the_old_text_file(tmp_path, monkeypatch):
    report = tmp_path / "report.md"
    write_text(report, "complete old version\n")
    monkeypatch.setattr(Path, "write_text", full_disk_write_text)
    with pytest.raises(OSError) as err:
        write_text(report, "new version " * 1000)
    assert err.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert report.read_text() == "complete old version\n"
    assert temp_leftovers(tmp_path) == []


def test_full_disk_leaves_no_weights_file(tmp_path, monkeypatch):
    weights = tmp_path / "weights.safetensors"
    monkeypatch.setattr(safetensors.numpy, "save_file", full_disk_save_file)
    with pytest.raises(OSError) as err:
        save_tensors(weights, {"x": np.zeros(1000, np.float32)})
    assert err.value.errno == errno.ENOSPC
    assert not weights.exists() and temp_leftovers(tmp_path) == []


def test_full_disk_keeps_the_previous_prepared_folder(tmp_path, monkeypatch):
    make_tree(tmp_path / "tree")
    out = tmp_path / "prepared"
    prepare(folder_cfg(tmp_path / "tree"), out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    monkeypatch.setattr(safetensors.numpy, "save_file", full_disk_save_file)
    with pytest.raises(OSError):
        prepare(folder_cfg(tmp_path / "tree", data_seed=1), out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert temp_leftovers(tmp_path) == []


# ----------------------------------------------------------------------------- tracking

SECRETS = {"FINCH_TEST_API_TOKEN": "finch-test-token-7f3a9c", "AWS_SECRET_ACCESS_KEY": "test+AWS/secret9b1e44"}


def test_secrets_in_the_environment_are_never_logged(toy_task, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = FinchConfig(profile="secrets", runtime={"progress": False}, tracking={"uri": uri})
    train_seeds(variant(toy_task, tiny_recipe(epochs=1)), toy_task, [0], cfg, CPU, tmp_path / "runs", tmp_path / "m")
    assert sync(find_records(tmp_path / "runs"), cfg.tracking, cfg.profile)["logged"] == 1
    (run,) = Tracker(cfg.tracking, cfg.profile).search()
    data = run.data
    logged = [*data.params.items(), *data.tags.items(), *((k, str(v)) for k, v in data.metrics.items())]
    texts = [run.info.run_name or ""] + [text for pair in logged for text in pair]
    assert len(texts) > 20  # params, tags and metrics were really logged
    for needle in [*SECRETS, *SECRETS.values()]:
        assert not [t for t in texts if needle in t], f"{needle} was logged"
    stored = [
        p for p in tmp_path.rglob("*") if p.is_file() and any(v.encode() in p.read_bytes() for v in SECRETS.values())
    ]
    assert stored == [], f"secret bytes stored in {stored}"
