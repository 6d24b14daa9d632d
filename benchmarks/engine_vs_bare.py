"""Engine vs a bare hand-written loop: same model, data, batch, optimizer, epochs.

Both do the same work per epoch (shuffle, normalise, forward, cross-entropy, backward,
AdamW step, one validation pass); the engine adds its machinery (objective, scheduler hook,
history, best-state copy). Ratio = bare time / engine time (target ≥ 0.95).
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from finch.config import RecipeConfig, load_params
from finch.data.splits import load_task
from finch.models import build_model
from finch.train.augment import normalise
from finch.train.engine import fit
from finch.train.runtime import configure, seed_everything


def bare_loop(model, data, epochs: int, batch: int, lr: float, wd: float, device) -> None:
    mean, std = data.normalisation(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd)
    g = torch.Generator().manual_seed(0)
    steps = len(data.train) // batch
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(data.train), generator=g)
        for s in range(steps):
            idx = order[s * batch : (s + 1) * batch]
            loss = F.cross_entropy(model(normalise(data.train.x[idx], mean, std)), data.train.y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            for i in range(0, len(data.val), 500):
                model(normalise(data.val.x[i : i + 500], mean, std))


def measure(epochs: int = 5, repeats: int = 2) -> dict:
    cfg = load_params()
    device = configure(cfg.runtime)
    data = load_task("data/prepared", "target")
    recipe = RecipeConfig.model_validate(
        {
            "epochs": epochs,
            "batch_size": 64,
            "optimizer": {"name": "adamw", "lr": 1e-3, "weight_decay": 0.05},
            "scheduler": {"name": "none"},
            "loss": {"label_smoothing": 0.0},  # as before the default recipe smoothed
            "augment": {"flip": False, "translate": 0},
        }
    )
    times = {"bare": [], "engine": []}
    for _ in range(repeats):  # interleaved, so drift in machine speed hits both
        seed_everything(0)
        model = build_model(cfg.teacher.model, data.num_classes, data.in_chans)
        t = time.perf_counter()
        bare_loop(model, data, epochs, 64, 1e-3, 0.05, device)
        times["bare"].append(time.perf_counter() - t)
        seed_everything(0)
        model = build_model(cfg.teacher.model, data.num_classes, data.in_chans)
        t = time.perf_counter()
        fit(model, data, recipe, seed=0, device=device, progress=False)
        times["engine"].append(time.perf_counter() - t)
    bare, engine = min(times["bare"]), min(times["engine"])
    return {
        "name": "engine vs bare loop",
        "bare_s": bare,
        "engine_s": engine,
        "ratio": bare / engine,
        "target": "≥ 0.95",
        "ok": bare / engine >= 0.95,
        "detail": f"{epochs} epochs of {len(data.train)} images, best of {repeats}",
    }
