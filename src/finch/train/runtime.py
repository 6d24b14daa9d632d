"""Device choice, thread count, determinism and the random-number state of a run."""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import random
from pathlib import Path

import numpy as np
import torch

from finch.config import RuntimeConfig


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("runtime.device is cuda but no CUDA device is visible; use auto or cpu")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def configure(cfg: RuntimeConfig) -> torch.device:
    """Fix threads and deterministic algorithms (same seed, same machine → same numbers); under
    ``torchrun``, join the process group and take this rank's GPU."""
    torch.set_num_threads(cfg.threads)
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    device = resolve_device(cfg.device)
    from finch import distributed

    if distributed.initialise(device.type) and device.type == "cuda":  # under torchrun: this rank's GPU
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


@functools.cache
def numerics(device_type: str) -> str:
    """What decides a run's float rounding besides its settings, seed and thread count: the torch
    build and the kernels it picks for this processor (its vector width and instruction sets) or
    GPU. Runs with the same string give the same numbers; across strings, training diverges the
    way a different seed does (`finch verify` then checks the study statistically)."""
    parts = [f"torch {torch.__version__}"]
    if device_type == "cuda":
        props = torch.cuda.get_device_properties(0)
        parts += [props.name, f"sm {props.major}.{props.minor}", f"cudnn {torch.backends.cudnn.version()}"]
    else:
        try:
            cpuinfo = dict(line.split(":", 1) for line in Path("/proc/cpuinfo").read_text().splitlines() if ":" in line)
        except OSError:  # not Linux: the model from platform, no flag list
            cpuinfo = {}
        info = {key.strip(): value.strip() for key, value in cpuinfo.items()}  # the last processor's (all alike)
        model = info.get("model name") or platform.processor() or platform.machine()
        flags = " ".join(sorted((info.get("flags") or info.get("Features") or "").split()))
        flags_hash = hashlib.sha256(flags.encode()).hexdigest()[:8] if flags else "unknown"
        parts += [f"cpu {torch.backends.cpu.get_cpu_capability()}", model, f"flags {flags_hash}"]
    return " | ".join(parts)


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return the run's own CPU generator."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def rng_state(generator: torch.Generator) -> dict:
    """Every random state a run draws from, as tensors and plain data (no pickle needed)."""
    np_name, np_keys, np_pos, np_gauss, np_cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "generator": generator.get_state(),
        "numpy": [np_name, torch.from_numpy(np_keys.astype(np.int64)), np_pos, np_gauss, np_cached],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict, generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    generator.set_state(state["generator"])
    name, keys, pos, gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, gauss, cached))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
