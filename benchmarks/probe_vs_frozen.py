"""Linear probe on cached features vs the frozen backbone run end to end, time per epoch.

Both train a linear head for the same epochs on the same target training images with the
same batch size; the frozen-backbone run pushes every image through the backbone each
epoch (with augmentation, as the `frozen_backbone` strategy does), the probe reads the
feature cache. Ratio = frozen-backbone epoch time / probe epoch time (target >= 50).
"""

from __future__ import annotations

import statistics

from finch.config import load_params
from finch.data.splits import load_task
from finch.io import load_tensors
from finch.pipeline.paths import BACKBONE, FEATURES, PREPARED
from finch.train.engine import fit
from finch.train.runtime import configure, seed_everything
from finch.transfer import build_network, feature_task, probe_head


def measure(epochs: int = 4, batch_size: int = 256) -> dict:
    cfg = load_params()
    device = configure(cfg.runtime)
    data = load_task(PREPARED, "target")
    fc = cfg.finetune
    # the same batch size for both: a head on 256-d features is overhead-bound at small batches
    probe_recipe = fc.probe_recipe.model_copy(update={"epochs": epochs, "batch_size": batch_size})
    frozen_recipe = fc.recipe.model_copy(update={"epochs": epochs, "batch_size": batch_size})

    task = feature_task(load_tensors(FEATURES / "cnn.safetensors"), data, "bench")
    seed_everything(0)
    probe = fit(
        probe_head("linear_probe", task.train.x.shape[1], task.num_classes, fc.mlp_hidden),
        task,
        probe_recipe,
        seed=0,
        device=device,
        progress=False,
    )
    seed_everything(0)
    net = build_network("frozen_backbone", fc, cfg.pretrain.model, BACKBONE, data)
    frozen = fit(net, data, frozen_recipe, seed=0, device=device, progress=False)

    # the first epoch carries one-off warm-up costs; the median of the rest is the steady state
    probe_s = statistics.median(r["epoch_time_s"] for r in probe.history[1:])
    frozen_s = statistics.median(r["epoch_time_s"] for r in frozen.history[1:])
    return {
        "name": "linear probe on cached features vs frozen backbone end to end (per epoch)",
        "ratio": frozen_s / probe_s,
        "target": "≥ 50",
        "ok": frozen_s / probe_s >= 50,
        "detail": f"{frozen_s * 1000:.0f} ms vs {probe_s * 1000:.1f} ms per epoch of {len(data.train)} images, "
        f"batch {probe_recipe.batch_size}, median of epochs 2-{epochs}",
    }
