"""The studies results.md reports on: one entry per training stage, in the page's order.

Each entry says how the study is titled and introduced, and which of the optional sections it
has. Sections whose data decides them (paired differences where ``aggregate.baselines`` names
a baseline, k-fold tables where the records carry k-fold results, ensembles where
``ensemble.json`` exists) are not declared here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Study:
    """How results.md presents one stage's classifier runs.

    ``references``: rows from other studies shown under the variants table, as
    ("stage/variant", label). ``synthetic_quality``: the GAN's samples, losses and the quality of
    its images open the section. ``pareto``: accuracy against cost, drawn where some variant
    trains fewer parameters than it has. ``target_task``: tested on the target classes, so its
    accuracy is comparable with the other studies' (pretraining is tested on the source classes).
    """

    key: str
    title: str
    note: str = ""
    references: tuple[tuple[str, str], ...] = ()
    synthetic_quality: bool = False
    pareto: bool = False
    target_task: bool = True


STUDIES: dict[str, Study] = {
    s.key: s
    for s in (
        Study(
            "floors",
            "Floors: classifiers on raw pixels",
            note="What no representation learning gets: shown in every study's table (stage `floors`).",
        ),
        Study("pretrain", "Pretraining on the source classes", target_task=False),
        Study("teacher", "CNN teacher (fine-tuned from the pretrained backbone)"),
        Study(
            "student",
            "Distilled ViT student (DeiT-style)",
            note=(
                "Variants: `none` (no teacher; both heads trained on the labels, prediction = their average), "
                "`soft` and `hard` (DeiT's distillation token with the soft KL or hard-label teacher term), "
                "`class_token` (a ViT without the distillation token, the teacher term on its only head). "
                "The teacher of each seed is that seed's CNN teacher. Reported prediction: the average of the "
                "class and distillation heads; the heads alone are listed too."
            ),
            references=(("teacher/default", "CNN teacher"),),
        ),
        Study(
            "finetune",
            "Transfer learning: which layers to train",
            note=(
                "Strategies on the CNN backbone (pretrained on the source classes): `linear_probe` and "
                "`mlp_probe` (heads on cached features), `frozen_backbone` (backbone frozen in the network, head "
                "trained with augmentation), `partial` (last stage(s) + head), `full` (every layer; the backbone "
                "at `finetune.backbone_lr_scale` x the learning rate, 1.0 in the default profile: one rate for "
                "all), `lp_ft` (linear probe, then the whole network fine-tuned from that head at "
                "`finetune.lp_ft_lr_scale` x the learning rate, Kumar et al. 2022), `scratch` (same network, "
                "random initialisation). On the ViT backbone: `vit_linear_probe`, `vit_last_block` (last block, "
                "final norm and head), `vit_attention_only` (attention weights + head), `vit_lora` (LoRA adapters "
                "on the attention projections + head), `vit_full`. For the probes, train time and test img/s "
                "exclude the backbone: it ran once, in `extract_features`. `frozen_backbone` trains the same "
                "linear head with the probe's epochs and optimizer, but through the network (frozen BatchNorm in "
                "eval mode) and with the rest of `finetune.recipe`: its label smoothing, learning-rate warm-up and "
                "augmentation (flip, translation; the default probe recipe has none of the three), so it differs "
                "from `linear_probe` in those too, not only in the path."
            ),
            pareto=True,
        ),
        Study(
            "augmented",
            "Synthetic images: how good they are, and what they add",
            note=(
                "Do GAN-made images help when data is scarce? With `synthetic.real_per_class` set (the default "
                "profile: 100), the GAN and every variant here see only the first N real training images of each "
                "class; validation and test splits are the other studies'. A class-conditional DCGAN (stage "
                "`train_gan`) learns those images; `generate` draws labelled images from a fixed seed. "
                "`synthetic_only` trains the teacher's model and recipe (epochs: `synthetic.epochs`) from random "
                "initialisation on as many synthetic images as there are real ones (the classification accuracy "
                "score, CAS, tested on the real test split); its reference is `real_scratch`, the same model and "
                "recipe from random initialisation on the real images. `mix_r` fine-tunes from the pretrained "
                "backbone on the real images plus r times as many synthetic ones; its reference is `real`: the "
                "same model, recipe and backbone on the same real images alone, with the same seeds. Model "
                "selection uses the real validation split in every variant."
            ),
            synthetic_quality=True,
        ),
        Study(
            "ablation",
            "Recipe ablation: one knob at a time against the teacher's recipe",
            note=(
                "Each variant is the teacher's model and recipe with the overrides named in `ablation.variants` "
                "(params.yaml), trained from the same pretrained backbone with the same seeds; the reference is "
                "the teacher itself, so each paired difference isolates one knob. Listing more names in "
                "`ablation.run` trains more variants."
            ),
        ),
    )
}


def study(stage: str) -> Study:
    """The registered study of ``stage``; a stage not registered is titled by its name."""
    return STUDIES.get(stage) or Study(stage, stage)


def stage_order(stage: str) -> tuple[int, str]:
    """Sort key: registered studies in registry order, then any other stage by name."""
    order = list(STUDIES)
    return (order.index(stage) if stage in order else len(order), stage)
