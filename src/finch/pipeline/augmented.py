"""Stage `train_augmented`: the teacher's recipe on real plus synthetic images (and on synthetic only).

The real-only reference is the `train_teacher` stage itself (same recipe, data and seeds), so
the report pairs every variant here with the teacher of the same seed.
"""

from __future__ import annotations

from finch.config import FinchConfig
from finch.pipeline.common import BACKBONE, METRICS, MODELS, PREPARED, RUNS, file_hash
from finch.pipeline.gan import SYNTHETIC


def mix_name(ratio: float) -> str:
    return f"mix_{ratio:g}"


def train_augmented(cfg: FinchConfig) -> None:
    from dataclasses import replace

    import torch

    from finch.data.splits import Split, load_task
    from finch.distributed import is_main
    from finch.io import load_tensors
    from finch.models import build_model, load_backbone
    from finch.runs import write_stage_metrics
    from finch.study import Variant, train_variant
    from finch.tracking import log_runs_safely
    from finch.train.runtime import configure

    device = configure(cfg.runtime)
    data = load_task(PREPARED, "target")
    synthetic_file = f"{SYNTHETIC}/synthetic.safetensors"
    synthetic = load_tensors(synthetic_file)
    sx, sy = synthetic["train_x"], synthetic["train_y"]
    real_counts = torch.bincount(data.train.y, minlength=data.num_classes)

    def synthetic_subset(share: float) -> Split:
        """``share`` x the real count of each class, the first ones generated (deterministic)."""
        idx = []
        for c in range(data.num_classes):
            pool = torch.nonzero(sy == c).squeeze(1)
            want = int(round(share * int(real_counts[c])))
            if want > len(pool):
                raise ValueError(
                    f"{synthetic_file}: {len(pool)} images of class {c}, {want} needed; raise synthetic.per_class"
                )
            idx.append(pool[:want])
        idx = torch.cat(idx)
        return Split(sx[idx], sy[idx])

    mixes = [("synthetic_only", None)] if cfg.synthetic.synthetic_only else []
    mixes += [(mix_name(r), r) for r in cfg.synthetic.ratios]
    tc = cfg.teacher
    folders = []
    for name, ratio in mixes:
        if ratio is None:  # the classification accuracy score: synthetic training images only
            train = synthetic_subset(1.0)
        else:
            extra = synthetic_subset(ratio)
            train = Split(torch.cat([data.train.x, extra.x]), torch.cat([data.train.y, extra.y]))
        task = replace(data, name=f"target+{name}", train=train, content_hash=f"{data.content_hash}+{name}")

        def build(seed):
            model = build_model(tc.model, data.num_classes, data.in_chans)
            load_backbone(model, BACKBONE)
            return model

        settings = {
            "model": tc.model.model_dump(),
            "recipe": tc.recipe.model_dump(),
            "backbone_hash": file_hash(BACKBONE),
            "mix": name,
            "synthetic_hash": file_hash(synthetic_file),
        }
        variant = Variant(stage="augmented", name=name, build_model=build, recipe=tc.recipe, settings=settings)
        folders += train_variant(variant, task, cfg.seeds, cfg, device, RUNS, MODELS / "augmented")
    log_runs_safely(folders, cfg.tracking, cfg.profile)
    if is_main():
        write_stage_metrics(RUNS, "augmented", METRICS / "train_augmented.json")
