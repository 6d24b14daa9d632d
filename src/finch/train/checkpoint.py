"""Resume checkpoints: the whole training state at the end of an epoch.

Written with ``torch.save`` to a temporary name and renamed; read back with
``torch.load(weights_only=True)``, so nothing is ever unpickled.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from finch.io import write_with

log = logging.getLogger(__name__)


def save_resume_state(path: Path, state: dict, fingerprint: str) -> None:
    """Write ``state`` (tensors and plain data only) with the ``fingerprint`` of its run.

    A run killed (SIGKILL, power loss) while writing leaves its temporary file behind, beside an
    intact earlier checkpoint; the next write of the same checkpoint removes it.
    """
    path = Path(path)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # write_with's temporary names for this path
        stale.unlink(missing_ok=True)
    write_with(path, lambda tmp: torch.save({"fingerprint": fingerprint, **state}, tmp))


def load_resume_state(path: Path, fingerprint: str) -> dict | None:
    """The saved state if ``path`` holds one for this exact run (same fingerprint)."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a damaged or foreign file: start afresh, say so
        log.warning("%s: unreadable resume checkpoint (%s); starting from scratch", path, err)
        return None
    if state.get("fingerprint") != fingerprint:
        log.warning("%s: checkpoint belongs to other settings; starting from scratch", path)
        return None
    return state
