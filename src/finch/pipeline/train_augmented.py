"""Stage `train_augmented`: the teacher's recipe on real plus synthetic images (and on synthetic only).

The stage asks whether GAN-made images help when data is scarce: with `synthetic.real_per_class`
set, the GAN and every variant here see only the first N real training images of each class
(validation and test splits unchanged). The mixes start from the pretrained backbone, like the
teacher; their reference is `real`: the teacher's model and recipe from the backbone on the same
real images with the same seeds, so the report pairs each mix with `real` of the same seed.
The classification accuracy score (`synthetic_only`, Ravuri & Vinyals 2019) trains on
generated images alone, from random initialisation: a backbone pretrained on real images
would carry real-image knowledge into it. Its reference is
`real_scratch`: the same model and recipe, from random initialisation, on the real images.
"""

from __future__ import annotations

from functools import partial

from finch.config import FinchConfig
from finch.pipeline.paths import BACKBONE, MODELS, PREPARED, SYNTHETIC, file_hash


def mix_name(ratio: float) -> str:
    return f"mix_{ratio:g}"


def augmented_variants(cfg: FinchConfig, data, synthetic_file: str) -> list[tuple]:
    """What the stage trains: (variant, its task) for the synthetic-only run and its real-image
    reference (both from random initialisation), and for the real images alone and each mix (from
    the pretrained backbone)."""
    from dataclasses import replace

    import torch

    from finch.data.splits import Split
    from finch.io import load_tensors
    from finch.models import build_from_backbone
    from finch.study import Variant

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

    # (name, synthetic share or None for none, real images?, from the pretrained backbone?)
    runs = [("synthetic_only", 1.0, False, False), ("real_scratch", None, True, False)]
    runs = runs if cfg.synthetic.synthetic_only else []
    runs += [("real", None, True, True)] + [(mix_name(r), r, True, True) for r in cfg.synthetic.ratios]
    tc = cfg.teacher
    # the teacher's recipe; every variant the same optimizer steps (synthetic.budgets), whatever its images
    budgets = cfg.synthetic.budgets
    recipe = (
        tc.recipe if budgets is None else type(tc.recipe).model_validate(tc.recipe.model_dump() | {"budgets": budgets})
    )
    reference = len(data.train)  # budgets count epochs of the real images
    out = []
    for name, share, real, pretrained in runs:
        parts = ([data.train] if real else []) + ([synthetic_subset(share)] if share is not None else [])
        train = Split(torch.cat([p.x for p in parts]), torch.cat([p.y for p in parts]))
        task = replace(data, name=f"target+{name}", train=train, content_hash=f"{data.content_hash}+{name}")

        settings = {
            "model": tc.model.model_dump(),
            "recipe": recipe.model_dump(),
            **({"backbone_hash": file_hash(BACKBONE)} if pretrained else {"init": "random"}),
            "mix": name,
            **({"synthetic_hash": file_hash(synthetic_file)} if share is not None else {}),
        }
        build = partial(
            build_from_backbone, tc.model, data.num_classes, data.in_chans, BACKBONE if pretrained else None
        )
        variant = Variant(
            stage="augmented",
            name=name,
            build_model=build,
            recipe=recipe,
            settings=settings,
            budget_reference=reference,
            resplit=False,  # the scarce images (and the GAN that learnt from them) come from the fixed split
        )
        out.append((variant, task))
    return out


def plan(cfg: FinchConfig, device) -> list:
    """The stage's variants over every seed (see :func:`augmented_variants`)."""
    from finch.data.splits import first_per_class, load_task
    from finch.runner import PlannedVariant

    data = first_per_class(load_task(PREPARED, "target"), cfg.synthetic.real_per_class)
    return [
        PlannedVariant(variant, task, cfg.seeds, MODELS / "augmented")
        for variant, task in augmented_variants(cfg, data, f"{SYNTHETIC}/synthetic.safetensors")
    ]


def run(cfg: FinchConfig) -> None:
    from finch.pipeline.training import run_training_stage

    run_training_stage(plan, cfg, "train_augmented")
