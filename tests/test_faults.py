"""Fault drill: a training process killed with SIGKILL mid-epoch resumes from its last
checkpoint and ends with exactly the metrics of an uninterrupted run (RNG state, sampler
position, optimizer, scheduler and EMA state restored)."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from .conftest import REPO

SCRIPT = textwrap.dedent(
    """
    import logging, sys, time
    sys.path.insert(0, {repo!r})
    logging.basicConfig(level=logging.INFO)
    from finch.config import FinchConfig
    from finch.models import build_model
    from finch.study import Variant
    from finch.train.losses import Objective
    from finch.train.runtime import configure
    from tests.conftest import TINY_MODEL, make_task, tiny_recipe, train_seeds

    class Slow(Objective):  # a slow loss, so that a kill lands mid-epoch; the numbers are untouched
        def loss(self, outputs, targets, inputs):
            time.sleep(0.03)
            return super().loss(outputs, targets, inputs)

    cfg = FinchConfig(runtime={{"threads": 1, "progress": False}}, tracking={{"enabled": False}})
    device = configure(cfg.runtime)
    task = make_task(n_train=64)
    recipe = tiny_recipe(
        epochs=8, batch_size=16, ema={{"enabled": True, "decay": 0.9}},
        scheduler={{"name": "plateau", "patience_epochs": 1, "decay_rate": 0.5, "warmup_epochs": 0}},
        augment={{"flip": True, "translate": 1, "mixup_alpha": 0.2}},
    )
    variant = Variant(
        stage="toy", name="kill", recipe=recipe, settings={{"recipe": recipe.model_dump()}},
        build_model=lambda seed: build_model(TINY_MODEL, task.num_classes, task.in_chans),
        objective=lambda data, seed: Slow(recipe.loss, data.num_classes, mixing=True),
    )
    train_seeds(variant, task, [0], cfg, device, "runs", "models")
    print("DONE", flush=True)
    """
)


def start(workdir: Path) -> subprocess.Popen:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "train.py").write_text(SCRIPT.format(repo=str(REPO)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "train.py"], cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def record(workdir: Path) -> tuple[dict, str]:
    folder = workdir / "runs" / "toy" / "kill" / "seed=0"
    return json.loads((folder / "record.json").read_text()), (folder / "history.csv").read_text()


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run(tmp_path):
    clean = start(tmp_path / "clean")  # the uninterrupted run, beside the victim: same numbers whatever runs beside
    victim = start(tmp_path / "killed")
    checkpoint = tmp_path / "killed" / ".finch" / "checkpoints" / "toy" / "kill" / "seed=0.pt"
    deadline = time.time() + 300
    while not checkpoint.exists():  # the first end-of-epoch checkpoint
        assert victim.poll() is None and time.time() < deadline, "finished or stalled before its first checkpoint"
        time.sleep(0.02)
    time.sleep(0.35)  # well into a later epoch (each step sleeps 0.03 s)
    assert victim.poll() is None, "the run finished before it could be killed; slow it down"
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=60)
    assert victim.returncode == -signal.SIGKILL
    assert not (tmp_path / "killed" / "runs" / "toy" / "kill" / "seed=0" / "record.json").exists()
    assert checkpoint.exists()  # kept for the rerun, whole (a kill mid-write leaves only a temp file)
    assert all(p.name.startswith(f".{checkpoint.name}.") for p in checkpoint.parent.iterdir() if p != checkpoint)

    resumed = start(tmp_path / "killed")
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0 and "DONE" in out, err[-2000:]
    assert "resumed from the checkpoint after epoch" in err
    out, err = clean.communicate(timeout=600)
    assert clean.returncode == 0 and "DONE" in out, err[-2000:]

    (rec_clean, hist_clean), (rec_resumed, hist_resumed) = record(tmp_path / "clean"), record(tmp_path / "killed")
    assert rec_resumed["metrics"] == rec_clean["metrics"]  # bit-identical, not approximately
    assert rec_resumed["best_epoch"] == rec_clean["best_epoch"]
    drop_time = lambda text: [",".join(line.split(",")[:-1]) for line in text.splitlines()]  # noqa: E731
    assert drop_time(hist_resumed) == drop_time(hist_clean)  # every epoch's loss, accuracy and lr


def test_a_temp_file_left_by_a_killed_checkpoint_write_is_removed_by_the_next(tmp_path):
    from finch.train.checkpoint import load_resume_state, save_resume_state

    checkpoint = tmp_path / "seed=0.pt"
    stale = tmp_path / ".seed=0.pt.abc123.tmp"  # what write_with leaves when killed mid-write
    other = tmp_path / ".seed=0-longer.pt.def456.tmp"  # another run's, still being written
    stale.write_bytes(b"half a checkpoint")
    other.write_bytes(b"in progress")
    save_resume_state(checkpoint, {"epoch": 3}, "run")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([checkpoint.name, other.name])
    assert load_resume_state(checkpoint, "run")["epoch"] == 3
