"""Data-parallel training under ``torchrun`` (PyTorch DDP), and its no-op single-process case.

Under ``torchrun --nproc_per_node=N`` every process runs the whole stage: each trains on
its shard of every epoch's permutation (the same permutation on every rank, since every
rank draws from the same seeded generator, like ``DistributedSampler``), DDP averages the
gradients, predictions are computed on disjoint shards and gathered whole, and only rank 0
writes files and logs to MLflow. Without ``torchrun`` every function here is a no-op.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import torch
import torch.distributed as dist


def initialise(device_type: str) -> bool:
    """Join the process group that ``torchrun`` describes in the environment; return whether
    training is distributed. gloo on the CPU, NCCL on CUDA (one GPU per local rank)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
    return True


def shutdown() -> None:
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    """Rank 0, or the only process: the one that writes outputs and logs runs."""
    return rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def shard(indices: torch.Tensor) -> torch.Tensor:
    """This rank's share of ``indices`` (every ``world_size``-th, from ``rank``)."""
    return indices[rank() :: world_size()]


def mean_over_ranks(value: float) -> float:
    """The mean of a per-rank number over all ranks."""
    if not dist.is_initialized():
        return value
    t = torch.tensor([float(value)], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item()) / world_size()


def wrap(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``model`` in DDP when distributed (gradients averaged over ranks); else itself."""
    if not dist.is_initialized():
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def gather_rows(n: int, predict: Callable[[torch.Tensor], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Run ``predict(indices)`` on this rank's disjoint shard of ``range(n)`` and assemble
    every rank's rows in order; raises if a row is missing or predicted twice."""
    if not dist.is_initialized():
        return predict(torch.arange(n))
    mine = shard(torch.arange(n))
    parts: list = [None] * world_size()
    dist.all_gather_object(parts, (mine.numpy(), predict(mine)))
    seen = np.zeros(n, dtype=np.int64)
    out: dict[str, np.ndarray] = {}
    for idx, rows in parts:
        seen[idx] += 1
        for name, values in rows.items():
            if name not in out:
                out[name] = np.empty((n, *values.shape[1:]), dtype=values.dtype)
            out[name][idx] = values
    if not np.all(seen == 1):
        raise RuntimeError(f"distributed evaluation covered {int((seen > 0).sum())} of {n} rows, some twice")
    return out
