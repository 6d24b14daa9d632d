"""Small file helpers: atomic writes and repository paths.

Every output is written to a temporary name beside its destination and renamed into
place, so a crash or a full disk never leaves a truncated file that looks complete.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np


def repo_root() -> Path:
    """The repository root: ``DVC_ROOT`` when DVC runs us, else the nearest dvc.yaml up."""
    env = os.environ.get("DVC_ROOT")
    if env:
        return Path(env).resolve()
    here = Path.cwd().resolve()
    for candidate in (here, *here.parents):
        if (candidate / "dvc.yaml").is_file():
            return candidate
    return here


def shared_root(root: Path | None = None) -> Path:
    """The main workspace, also from a ``dvc exp run --queue`` temporary copy.

    DVC runs queued experiments in ``<repo>/.dvc/tmp/exps/<tmp>/``; results that must be
    shared (the MLflow database) belong to ``<repo>``.
    """
    root = (root or repo_root()).resolve()
    parts = root.parts
    for i in range(len(parts) - 3):
        if parts[i : i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    return root


@contextmanager
def atomic_path(dest: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; rename it onto ``dest`` on success."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o644)
        os.replace(tmp_path, dest)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextmanager
def atomic_dir(dest: Path | str) -> Iterator[Path]:
    """Yield a temporary folder beside ``dest``; it replaces ``dest`` on success."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o755)
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def write_text(dest: Path | str, text: str) -> None:
    with atomic_path(dest) as tmp:
        tmp.write_text(text)


def write_json(dest: Path | str, data: Any) -> None:
    write_text(dest, json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_json(path: Path | str) -> Any:
    return json.loads(Path(path).read_text())


def write_with(dest: Path | str, writer: Callable[[Path], None]) -> None:
    """Atomically create ``dest`` with ``writer(tmp_path)`` (for library savers)."""
    with atomic_path(dest) as tmp:
        writer(tmp)


def save_tensors(dest: Path | str, tensors: dict, metadata: dict | None = None) -> None:
    """Save torch tensors or NumPy arrays as safetensors, atomically.

    NumPy input goes through ``safetensors.numpy`` so the prepare stage never imports torch.
    """
    meta = {k: str(v) for k, v in (metadata or {}).items()}
    if all(isinstance(v, np.ndarray) for v in tensors.values()):
        from safetensors.numpy import save_file

        arrays = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
        saver = lambda tmp: save_file(arrays, str(tmp), metadata=meta)  # noqa: E731
    else:
        from safetensors.torch import save_file

        tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
        saver = lambda tmp: save_file(tensors, str(tmp), metadata=meta)  # noqa: E731

    def write(tmp: Path) -> None:
        saver(tmp)
        sort_safetensors_metadata(tmp)

    write_with(dest, write)


def sort_safetensors_metadata(path: Path | str) -> None:
    """Rewrite a safetensors header in place with its ``__metadata__`` keys sorted.

    safetensors keeps the metadata in a hash map whose order changes from process to process
    (safetensors#584), so the same tensors and metadata would give different bytes on every run,
    and every hash of the file (DVC's, Finch's run keys) would change with them. The header is
    re-serialised the way safetensors writes it (compact JSON, UTF-8, space-padded to its old
    length); where that would not give the same JSON content in the same length, the file is
    left as it was.
    """
    with open(path, "r+b") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        raw = f.read(length)
        header = json.loads(raw)
        metadata = header.get("__metadata__")
        if not isinstance(metadata, dict) or len(metadata) < 2:
            return
        ordered = {"__metadata__": dict(sorted(metadata.items()))}
        ordered.update((k, v) for k, v in header.items() if k != "__metadata__")
        text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode()
        if len(text) != len(raw.rstrip(b" ")) or json.loads(text) != header:
            return
        f.seek(8)
        f.write(text.ljust(length, b" "))


def load_tensors(path: Path | str) -> dict:
    """Load a safetensors file as torch tensors, with a clear error when it is not one."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: weights file not found; {_rerun(path, 'run')}")
    try:
        return load_file(str(path))
    except Exception as err:  # safetensors raises several error types
        from finch.errors import ModelError

        raise ModelError(
            f"{path}: not a readable safetensors file ({err}); delete it and {_rerun(path, 're-run')}"
        ) from None


def _rerun(path: Path, verb: str) -> str:
    """What writes ``path``: `dvc repro <stage>` where a stage of the table does, else the stage."""
    from finch.pipeline.table import stage_writing

    try:
        relative = path.resolve().relative_to(repo_root()).as_posix()
    except ValueError:
        relative = path.as_posix()
    stage = stage_writing(relative)
    return f"{verb} `dvc repro {stage}`, the stage that writes it" if stage else f"{verb} the stage that writes it"
