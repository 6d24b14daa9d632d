"""Stage `generate`: labelled images from the trained DCGAN, a grid of them, and their quality."""

from __future__ import annotations

import logging

from finch.config import FinchConfig
from finch.pipeline.paths import BACKBONE, GAN_DIR, PREPARED, REPORTS, SYNTHETIC

log = logging.getLogger(__name__)


def run(cfg: FinchConfig) -> None:
    """Labelled synthetic images (stored like the prepared splits), a grid, and their quality."""
    import torch

    from finch.data.splits import first_per_class, load_task
    from finch.gan import DomainFeatures, Generator, sample, save_grid, synthetic_quality
    from finch.io import load_tensors, save_tensors, write_json
    from finch.train.runtime import configure
    from finch.transfer import feature_extractor

    device = configure(cfg.runtime)
    data = first_per_class(load_task(PREPARED, "target"), cfg.synthetic.real_per_class)  # the GAN's real images
    gen = Generator(data.num_classes, data.in_chans, data.image_size, cfg.gan)
    gen.load_state_dict(load_tensors(GAN_DIR / "generator.safetensors"))
    gen.to(device)
    real_per_class = int(torch.bincount(data.train.y).min())
    per_class = cfg.synthetic.per_class or int(round(real_per_class * max([1.0, *cfg.synthetic.ratios])))
    images, labels = sample(gen, per_class, cfg.synthetic.seed, device)
    save_tensors(
        SYNTHETIC / "synthetic.safetensors",
        {"train_x": images, "train_y": labels},
        {"per_class": per_class, "seed": cfg.synthetic.seed, "classes": ",".join(data.class_names)},
    )
    grid = torch.cat([images[labels == c][:10] for c in range(data.num_classes)])
    save_grid(grid, 10, REPORTS / "gan_samples.png")

    features = DomainFeatures(feature_extractor(cfg.pretrain.model, BACKBONE, data.in_chans), data.mean, data.std)
    features.to(device)
    # against the validation images (never the test split); equal sizes throughout, and per set a
    # real-vs-real reference of that size over several draws (see set_quality)
    real_f, fake_f = features.of(data.val.x), features.of(images)
    quality = {
        "per_class_generated": per_class,
        "real_split": "validation",
        **synthetic_quality(
            real_f, data.val.y, fake_f, labels, data.class_names, cfg.synthetic.pr_k, cfg.synthetic.seed
        ),
    }
    write_json(REPORTS / "synthetic_quality.json", quality)
    overall = quality["overall"]
    shown = {key: "—" if value is None else f"{value:.4g}" for key, value in overall.items() if key != "reference"}
    log.info(
        "synthetic images: %d per class; FD %s (real vs real %s), KID %s, precision %s, recall %s",
        per_class,
        shown["fid"],
        overall["reference"]["fid"],
        shown["kid"],
        shown["precision"],
        shown["recall"],
    )
