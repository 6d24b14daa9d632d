"""Tampered weights and malicious pickles: every loader refuses them with an error naming the
file, and nothing is ever unpickled (a pickled ``os.makedirs`` call would leave a marker folder)."""

from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from finch.distill import load_teacher
from finch.errors import ModelError
from finch.io import load_tensors, save_tensors
from finch.models import backbone_state, build_model, load_backbone
from finch.train.checkpoint import load_resume_state

from .conftest import TINY_MODEL

CPU = torch.device("cpu")


class MakesMarker:
    """Pickles to the call ``os.makedirs(marker)``: unpickling it creates the marker folder."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return os.makedirs, (self.marker,)


WEIGHTS_LOADERS = {
    "load_tensors": load_tensors,
    "load_backbone": lambda path: load_backbone(build_model(TINY_MODEL, 2, 1), path),
    "load_teacher": lambda path: load_teacher(TINY_MODEL, path, 2, 1, CPU),
}


def test_marker_is_created_when_the_payload_is_unpickled(tmp_path):
    """The control for the cases below: their payload would leave the marker if unpickled."""
    marker = tmp_path / "UNPICKLED"
    payload = pickle.dumps({"fc.weight": MakesMarker(marker)})
    assert not marker.exists()
    pickle.loads(payload)  # noqa: S301  (the point of the control)
    assert marker.is_dir()


@pytest.mark.parametrize("loader", WEIGHTS_LOADERS)
def test_random_bytes_are_refused_naming_the_file(tmp_path, loader):
    path = tmp_path / "backbone.safetensors"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(ModelError, match="not a readable safetensors file") as err:
        WEIGHTS_LOADERS[loader](path)
    assert str(path) in str(err.value) and "re-run the stage" in str(err.value)


@pytest.mark.parametrize("writer", ["pickle.dumps", "torch.save"])
@pytest.mark.parametrize("loader", WEIGHTS_LOADERS)
def test_pickled_weights_are_refused_and_never_unpickled(tmp_path, loader, writer):
    marker = tmp_path / "UNPICKLED"
    path = tmp_path / "weights.safetensors"
    payload = {"fc.weight": MakesMarker(marker)}
    if writer == "torch.save":  # a zip archive holding the pickle
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    with pytest.raises(ModelError, match="not a readable safetensors file") as err:
        WEIGHTS_LOADERS[loader](path)
    assert str(path) in str(err.value)
    assert not marker.exists(), "the payload was unpickled"


def test_malicious_resume_checkpoint_is_refused_with_a_warning(tmp_path, caplog):
    marker = tmp_path / "UNPICKLED"
    ckpt = tmp_path / "seed=0.pt"
    torch.save({"fingerprint": "run", "epoch": 1, "payload": MakesMarker(marker)}, ckpt)
    with caplog.at_level(logging.WARNING, logger="finch.train.checkpoint"):
        assert load_resume_state(ckpt, "run") is None  # a fresh start
    assert not marker.exists(), "the checkpoint was unpickled"
    assert f"{ckpt}: unreadable resume checkpoint" in caplog.text


def test_reshaped_backbone_tensor_is_named_and_the_model_left_untouched(tmp_path):
    state = backbone_state(build_model(TINY_MODEL, 2, 1))
    name = next(k for k, v in state.items() if v.ndim == 4)
    state[name] = torch.zeros(*(d + 1 for d in state[name].shape))
    path = tmp_path / "backbone.safetensors"
    save_tensors(path, state)
    model = build_model(TINY_MODEL, 2, 1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ModelError, match="shape differs") as err:
        load_backbone(model, path)
    assert str(path) in str(err.value) and name in str(err.value) and "re-run the pretrain" in str(err.value)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
