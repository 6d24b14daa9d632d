"""Finch's saved tensors are the same bytes for the same content, whatever process wrote them."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors import safe_open

from finch.io import load_tensors, save_tensors, sort_safetensors_metadata

# Enough keys that safetensors' per-process hash order (safetensors#584) differs between runs.
METADATA = {"stage": "teacher", "run_key": "a1b2", "é": 'naïve "quoted"', "z": 3, "m": "x", "b": "y"}

SAVE = """
import sys
import numpy as np
import torch
from finch.io import save_tensors
metadata = {metadata!r}
if sys.argv[2] == "torch":
    tensors = {{"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.ones(2, dtype=torch.int64)}}
else:
    tensors = {{"w": np.arange(6, dtype=np.uint8).reshape(2, 3), "b": np.ones(2, dtype=np.int64)}}
save_tensors(sys.argv[1], tensors, metadata)
"""


def header(path: Path) -> bytes:
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    return raw[8 : 8 + length]


@pytest.mark.parametrize("kind", ["torch", "numpy"])
def test_the_same_tensors_and_metadata_give_the_same_bytes_in_every_process(tmp_path, kind):
    script = SAVE.format(metadata=METADATA)
    paths = [tmp_path / f"{i}.safetensors" for i in range(4)]
    for path in paths:
        subprocess.run([sys.executable, "-c", script, str(path), kind], check=True)
    contents = {path.read_bytes() for path in paths}
    assert len(contents) == 1, "saved files differ between processes"
    keys = list(json.loads(header(paths[0]))["__metadata__"])
    assert keys == sorted(keys)
    with safe_open(paths[0], "np") as f:
        assert f.metadata() == {k: str(v) for k, v in METADATA.items()}
        assert f.get_tensor("w").tolist() == [[0, 1, 2], [3, 4, 5]]


def test_a_header_that_would_not_round_trip_is_left_as_it_was(tmp_path):
    path = tmp_path / "odd.safetensors"
    # Valid JSON that Python would serialise differently (spaces after separators).
    text = b'{"__metadata__": {"b": "1", "a": "2"}}'
    path.write_bytes(struct.pack("<Q", len(text)) + text)
    before = path.read_bytes()
    sort_safetensors_metadata(path)
    assert path.read_bytes() == before


def test_sorted_metadata_files_still_load(tmp_path):
    import torch

    from finch.io import load_tensors

    path = tmp_path / "w.safetensors"
    save_tensors(path, {"x": torch.full((3,), 2.0)}, {"k2": 1, "k1": 2})
    assert load_tensors(path)["x"].tolist() == [2.0, 2.0, 2.0]
    assert list(json.loads(header(path))["__metadata__"]) == ["k1", "k2"]


def test_a_missing_weights_file_names_the_stage_that_writes_it(tmp_path, monkeypatch):
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    with pytest.raises(FileNotFoundError, match=r"run `dvc repro generate`, the stage that writes it"):
        load_tensors("data/synthetic/synthetic.safetensors")
    with pytest.raises(FileNotFoundError, match=r"run `dvc repro pretrain`"):
        load_tensors(tmp_path / "models/pretrain/backbone.safetensors")
    with pytest.raises(FileNotFoundError, match=r"; run the stage that writes it"):
        load_tensors("elsewhere/weights.safetensors")
