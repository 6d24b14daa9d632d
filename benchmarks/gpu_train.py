"""GPU: Finch's engine against timm's own training step, on generated CUB-layout images.

Needs a CUDA GPU; CI and the CPU benchmarks (benchmarks/run.py) never run it. Usage:

    python benchmarks/gpu_train.py --out reports/benchmarks_gpu.json
    torchrun --standalone --nproc_per_node=gpu benchmarks/gpu_train.py --engine-only --out gpu_ddp.json

For the GPU profile's models (ResNet-50 and DeiT-tiny) at 224 px, batch 64, bf16 autocast and
channels_last (the cub200 profile's settings), with randomly initialised weights:

- the reference is timm's own train step (its ``benchmark.py --bench train``): the model from
  ``timm.create_model``, ``timm.optim.create_optimizer_v2`` (SGD), cross-entropy, autocast, and one
  fixed random batch already on the GPU: no data path at all. It is timed over many steps with one
  synchronisation at the end (timm's script synchronises after every step, which only slows it);
- Finch trains the same model through :func:`finch.train.engine.fit` on images prepared from a
  generated CUB-200-2011 folder (``prepare`` of the cub200 source, 224 px): the images kept on
  the GPU as uint8, a fresh permutation per epoch, normalisation per batch, the cub200 recipe's
  SGD with its cosine schedule, augmentation off (the reference has none). Its rate is ``fit``'s
  training images per second (validation excluded), of a second ``fit`` after a warm-up one.

Each pair is measured in interleaved rounds and the medians compared (single short runs on the
lent GPU moved by ±20%).

ratio = Finch's images/s / the reference's (target ≥ 1.0), once with the default deterministic
settings (``runtime.deterministic``: deterministic algorithms, no cuDNN autotuning) and once
without (cuDNN autotuning, as timm's script sets); both loops run under the same settings.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

MODELS = ("resnet50", "deit_tiny_patch16_224")
IMAGE_SIZE, BATCH, CLASSES = 224, 64, 200
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def make_cub_folder(root: Path, classes: int, per_class: int, size: int = 256, seed: int = 0) -> None:
    """A CUB-200-2011 folder in its official layout (images.txt, image_class_labels.txt,
    train_test_split.txt, classes.txt, images/<class>/<file>.jpg): smooth random colour images,
    the last quarter of each class in the test split."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    images, labels, split, names = [], [], [], []
    for c in range(1, classes + 1):
        folder = f"{c:03d}.Bird_{c}"
        names.append(f"{c} {folder}")
        (root / "images" / folder).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            image_id = len(images) + 1
            coarse = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC).save(
                root / "images" / folder / f"{i}.jpg", quality=90
            )
            images.append(f"{image_id} {folder}/{i}.jpg")
            labels.append(f"{image_id} {c}")
            split.append(f"{image_id} {int(i < per_class * 3 // 4)}")
    for name, lines in (
        ("images.txt", images),
        ("image_class_labels.txt", labels),
        ("train_test_split.txt", split),
        ("classes.txt", names),
    ):
        (root / name).write_text("\n".join(lines) + "\n")


def prepared_task(work: Path, per_class: int):
    """The generated folder through Finch's own ``prepare`` (cub200 source, 224 px, RGB)."""
    from finch.config import DataConfig
    from finch.data.prepare import prepare
    from finch.data.splits import load_task

    make_cub_folder(work / "CUB_200_2011", CLASSES, per_class)
    cfg = DataConfig(
        source="cub200",
        root=str(work / "CUB_200_2011"),
        image_size=IMAGE_SIZE,
        channels=3,
        target_classes=None,
        source_classes=[],
        per_class_train=None,
        val_fraction=0.1,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
    )
    prepare(cfg, work / "prepared")
    return load_task(work / "prepared", "target")


def recipe(epochs: int):
    """The cub200 profile's teacher recipe (SGD, cosine), augmentation off, bf16, channels_last."""
    from finch.config import RecipeConfig

    return RecipeConfig.model_validate(
        {
            "epochs": epochs,
            "batch_size": BATCH,
            "optimizer": {"name": "sgd", "lr": 0.01, "weight_decay": 0.0001, "momentum": 0.9},
            "scheduler": {"name": "cosine", "warmup_epochs": 1},
            "loss": {"label_smoothing": 0.0},  # as before the default recipe smoothed
            "augment": {"flip": False, "translate": 0},
            "amp": "bf16",
            "channels_last": True,
            "eval_batch_size": 256,
        }
    )


def engine_rate(name: str, data, device: torch.device, epochs: int) -> float:
    """Finch's training images/s: ``fit`` of one warm-up epoch, then ``epochs`` timed ones."""
    from finch.config import ModelConfig
    from finch.models import build_model
    from finch.train.engine import fit

    model = build_model(ModelConfig(name=name), data.num_classes, data.in_chans)
    fit(model, data, recipe(1), seed=0, device=device, progress=False)  # warm-up: kernels, autotuning
    result = fit(model, data, recipe(epochs), seed=0, device=device, progress=False)
    return result.train_images_per_s


def timm_rate(name: str, device: torch.device, steps: int, warmup: int = 10) -> float:
    """timm's benchmark.py train step at the same model, batch, precision and memory format."""
    import timm
    from timm.optim import create_optimizer_v2

    model = timm.create_model(name, num_classes=CLASSES, in_chans=3)
    model.to(device=device, memory_format=torch.channels_last).train()
    optimizer = create_optimizer_v2(model, opt="sgd", lr=0.01, weight_decay=0.0001, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()
    x = torch.randn(BATCH, 3, IMAGE_SIZE, IMAGE_SIZE, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, CLASSES, (BATCH,), device=device)

    def step() -> None:
        optimizer.zero_grad()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss_fn(model(x), y).backward()
        optimizer.step()

    for _ in range(warmup):
        step()
    torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize(device)
    return steps * BATCH / (time.perf_counter() - start)


def settings(deterministic: bool) -> None:
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.benchmark = not deterministic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("reports/benchmarks_gpu.json"))
    parser.add_argument("--per-class", type=int, default=12, help="generated images per class (3/4 train)")
    parser.add_argument("--epochs", type=int, default=6, help="timed epochs of Finch's fit")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (the median is reported)")
    parser.add_argument("--engine-only", action="store_true", help="Finch's engine alone (e.g. under torchrun)")
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    args = parser.parse_args()

    from finch import distributed
    from finch.config import RuntimeConfig
    from finch.train.runtime import configure

    if not torch.cuda.is_available():
        raise SystemExit("gpu_train.py needs a CUDA GPU (none is visible)")
    device = configure(RuntimeConfig(device="cuda", threads=8, workers=1, deterministic=True))
    world = distributed.world_size()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        data = prepared_task(Path(tmp), args.per_class)
        prepare_s = time.perf_counter() - start
        steps = args.epochs * (len(data.train) // world // BATCH)
        for deterministic in (True, False) if world == 1 else (True,):
            settings(deterministic)
            for name in args.models:
                # interleaved rounds, so that drift in the machine's speed hits both loops; medians
                finch, ref = [], []
                for _ in range(args.rounds):
                    finch.append(engine_rate(name, data, device, args.epochs))
                    if not args.engine_only:
                        ref.append(timm_rate(name, device, steps))
                row = {"model": name, "deterministic": deterministic, "world": world, "steps": steps}
                row["finch_img_s"], row["finch_rounds"] = statistics.median(finch), finch
                if ref:
                    row["timm_img_s"], row["timm_rounds"] = statistics.median(ref), ref
                    row["ratio"] = row["finch_img_s"] / row["timm_img_s"]
                rows.append(row)
                print(json.dumps(row), flush=True)
    if not distributed.is_main():
        distributed.shutdown()
        return
    report = {
        "device": torch.cuda.get_device_name(device),
        "gpus": torch.cuda.device_count(),
        "torch": torch.__version__,
        "timm": __import__("timm").__version__,
        "host": platform.node(),
        "launcher": "torchrun" if "LOCAL_RANK" in os.environ else "python",
        "image_size": IMAGE_SIZE,
        "batch": BATCH,
        "precision": "bf16 autocast, channels_last",
        "train_images": len(data.train),
        "prepare_s": prepare_s,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    distributed.shutdown()


if __name__ == "__main__":
    main()
