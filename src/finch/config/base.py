"""What every config section shares: strict, frozen models, and the merge profiles are made with."""

from __future__ import annotations

import copy

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def deep_merge(base: dict, override: dict) -> dict:
    """A copy of ``base`` with ``override``'s keys replaced, recursing into nested mappings;
    shares no mutable value with either input."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out
