"""Parameter counts of a model, per block and trainable vs total, as JSON (a run record keeps
its model's; :mod:`finch.report.model_tables` renders them as markdown).

Counted from ``named_parameters`` (no forward pass, so two-input models such as the GAN's
discriminator need no example input): every parameter is counted once, in the first row
that holds it (tied weights are not counted twice), and the rows add up to the total.

Rows are the modules ``depth`` levels below the root; a wrapper with a single child and no
parameters of its own (the student's ``TwoHeadStudent.vit``, peft's ``base_model.model``;
not a one-element Sequential/ModuleList) does not use up a level. Parameters held directly
by a module above that depth (a ViT's ``cls_token``, ``pos_embed``) get a row each, and
modules without parameters none.
"""

from __future__ import annotations

from typing import Any

from torch import nn

CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)  # a one-block list is still a level
SUMMARY_DEPTH = 2  # what a run record keeps: blocks two levels down (a few dozen rows, a few kB)


def _row(name: str, kind: str, params: list[nn.Parameter]) -> dict[str, Any]:
    return {
        "name": name,
        "type": kind,
        "params": sum(p.numel() for p in params),
        "trainable": sum(p.numel() for p in params if p.requires_grad),
    }


def layer_rows(model: nn.Module, depth: int = 2) -> list[dict[str, Any]]:
    """Rows ``{name, type, params, trainable}`` in definition order; see the module docstring."""
    seen: set[int] = set()
    rows: list[dict[str, Any]] = []

    def fresh(params) -> list[nn.Parameter]:
        out = [p for p in params if id(p) not in seen]
        seen.update(id(p) for p in out)
        return out

    def walk(module: nn.Module, path: str, level: int) -> None:
        children = list(module.named_children())
        if level >= depth or not children:
            params = fresh(module.parameters())
            if params:
                rows.append(_row(path or "(model)", type(module).__name__, params))
            return
        own = list(module.named_parameters(recurse=False))
        for name, param in own:
            if fresh([param]):
                rows.append(_row(f"{path}.{name}" if path else name, "Parameter", [param]))
        wrapper = len(children) == 1 and not own and not isinstance(module, CONTAINERS)
        for name, child in children:
            walk(child, f"{path}.{name}" if path else name, level if wrapper else level + 1)

    walk(model, "", 0)
    return rows


def summarize(model: nn.Module, depth: int = 2) -> dict[str, Any]:
    """JSON-able summary: ``{model, total, trainable, frozen, depth, layers: [rows]}``."""
    params = list(model.parameters())  # unique parameters, as the optimizer sees them
    total = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    return {
        "model": type(model).__name__,
        "total": total,
        "trainable": trainable,
        "frozen": total - trainable,
        "depth": depth,
        "layers": layer_rows(model, depth),
    }


def run_summary(model: nn.Module, frozen_outside: int = 0) -> dict[str, Any]:
    """:func:`summarize` at :data:`SUMMARY_DEPTH`, as a run record keeps it. ``frozen_outside``:
    frozen parameters the run uses outside ``model`` (a probe's backbone, run once to cache its
    features); recorded as ``frozen_outside`` where non-zero, not in the rows or the total (the
    run's ``params_total`` metric counts them)."""
    summary = summarize(model, SUMMARY_DEPTH)
    if frozen_outside:
        summary["frozen_outside"] = frozen_outside
    return summary
