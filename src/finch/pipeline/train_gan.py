"""Stage `train_gan`: the class-conditional DCGAN on the scarce real images, logged like any run."""

from __future__ import annotations

from finch.config import FinchConfig
from finch.pipeline.paths import GAN_DIR, PREPARED, RUNS, stage_metrics


def run(cfg: FinchConfig) -> None:
    """Train the class-conditional DCGAN on the target training images (the first
    ``synthetic.real_per_class`` of each class in the scarce-data regime); log it like any run."""
    import time

    from finch.data.splits import first_per_class, load_task
    from finch.gan import Discriminator
    from finch.gan import train_gan as train
    from finch.io import save_tensors
    from finch.model_summary import run_summary
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
        model_summaries={
            "generator": run_summary(result.generator),
            # not kept after training; its size does not depend on the weights, so a fresh one tells it
            "discriminator": run_summary(Discriminator(data.num_classes, data.in_chans, data.image_size, cfg.gan)),
        },
    )
    save_tensors(
        weights, result.generator.state_dict(), {"run_key": record.run_key, "classes": ",".join(data.class_names)}
    )
    folder = record.write(RUNS)
    log_runs_safely([folder], cfg.tracking, cfg.profile)
    write_stage_metrics(RUNS, "gan", stage_metrics("train_gan"))
