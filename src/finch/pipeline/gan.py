"""Stages `train_gan` and `generate`: the conditional DCGAN, its labelled images and their quality."""

from __future__ import annotations

from finch.config import FinchConfig
from finch.pipeline.common import BACKBONE, METRICS, MODELS, PREPARED, REPORTS, RUNS, log

GAN_DIR = MODELS / "gan"
SYNTHETIC = "data/synthetic"


def train_gan(cfg: FinchConfig) -> None:
    """Train the class-conditional DCGAN on the target training images (the first
    ``synthetic.real_per_class`` of each class in the scarce-data regime); log it like any run."""
    import time

    from finch.data.splits import first_per_class, load_task
    from finch.gan import train_gan as train
    from finch.io import save_tensors
    from finch.runs import RunKind, RunRecord, write_stage_metrics
    from finch.tracking import log_runs_safely
    from finch.train.runtime import configure, numerics

    device = configure(cfg.runtime)
    data = first_per_class(load_task(PREPARED, "target"), cfg.synthetic.real_per_class)
    settings = {"gan": cfg.gan.model_dump(), "data_hash": data.content_hash, "runtime": cfg.runtime.model_dump()}
    start = time.perf_counter()
    result = train(data, cfg.gan, cfg.gan.seed, device, grid_dir=GAN_DIR / "grids")
    weights = GAN_DIR / "generator.safetensors"
    last = result.history[-1]
    record = RunRecord.create(
        stage="gan",
        variant="default",
        seed=cfg.gan.seed,
        kind=RunKind.GAN,
        settings=settings,
        profile=cfg.profile,
        device=str(device),
        numerics=numerics(device.type),
        metrics={
            "final_d_loss": last["d_loss"],
            "final_g_loss": last["g_loss"],
            "warnings": float(len(result.warnings)),
        },
        cost={"train_time_s": time.perf_counter() - start},
        warnings=result.warnings,
        class_names=data.class_names,
        weights=str(weights),
        artifacts={"sample_grids": str(GAN_DIR / "grids")},
        history=result.history,
    )
    save_tensors(
        weights, result.generator.state_dict(), {"run_key": record.run_key, "classes": ",".join(data.class_names)}
    )
    folder = record.write(RUNS)
    log_runs_safely([folder], cfg.tracking, cfg.profile)
    write_stage_metrics(RUNS, "gan", METRICS / "train_gan.json")


def generate(cfg: FinchConfig) -> None:
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
        f"{SYNTHETIC}/synthetic.safetensors",
        {"train_x": images, "train_y": labels},
        {"per_class": per_class, "seed": cfg.synthetic.seed, "classes": ",".join(data.class_names)},
    )
    grid = torch.cat([images[labels == c][:10] for c in range(data.num_classes)])
    save_grid(grid, 10, REPORTS / "gan_samples.png")

    features = DomainFeatures(feature_extractor(cfg.pretrain.model, BACKBONE, data.in_chans), data.mean, data.std)
    features.to(device)
    real_f, fake_f = features.of(data.test.x), features.of(images)
    # equal sizes throughout, and per set a real-vs-real reference of that size (see set_quality)
    quality = {
        "per_class_generated": per_class,
        **synthetic_quality(
            real_f, data.test.y, fake_f, labels, data.class_names, cfg.synthetic.pr_k, cfg.synthetic.seed
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
