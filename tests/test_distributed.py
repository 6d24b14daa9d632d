"""Training under torchrun (DDP, gloo on the CPU, 2 processes): it trains, evaluates the
whole test split once (no row dropped or counted twice), and rank 0 alone writes and logs."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from finch import distributed

from .conftest import REPO

SCRIPT = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {repo!r})
    import torch
    from finch import distributed
    from finch.config import FinchConfig
    from finch.models import build_model
    from finch.study import Variant
    from finch.tracking import log_runs_safely
    from finch.train.runtime import configure
    from tests.conftest import TINY_MODEL, make_task, tiny_recipe, train_seeds

    cfg = FinchConfig(runtime={{"threads": 1, "progress": False}}, profile="ddp")
    device = configure(cfg.runtime)
    task = make_task(n_train=96)
    recipe = tiny_recipe(epochs=3, batch_size=16)
    variant = Variant(
        stage="toy", name="ddp", recipe=recipe, settings={{"recipe": recipe.model_dump()}},
        build_model=lambda seed: build_model(TINY_MODEL, task.num_classes, task.in_chans),
    )
    folders = train_seeds(variant, task, [0, 1], cfg, device, {out!r} + "/runs", {out!r} + "/models")
    log_runs_safely(folders, cfg.tracking, cfg.profile)
    print("RANK", distributed.rank(), "WORLD", distributed.world_size(), "FOLDERS", len(folders), flush=True)
    distributed.shutdown()
    """
)


@pytest.mark.slow
def test_two_processes_train_evaluate_everything_and_log_once(tmp_path):
    script = tmp_path / "train_ddp.py"
    script.write_text(SCRIPT.format(repo=str(REPO), out=str(tmp_path)))
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)]
    out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "RANK 0 WORLD 2 FOLDERS 2" in out.stdout and "RANK 1 WORLD 2 FOLDERS 0" in out.stdout

    records = sorted((tmp_path / "runs" / "toy" / "ddp").glob("seed=*/record.json"))
    assert len(records) == 2  # one record per seed, written once
    for path in records:
        rec = json.loads(path.read_text())
        assert rec["tags"]["finch.world_size"] == "2"
        assert np.sum(rec["confusion"]) == 64  # the whole test split, each image once
        assert len((path.parent / "history.csv").read_text().splitlines()) == 1 + 3  # header + 3 epochs
        confusion = np.array(rec["confusion"])
        assert rec["metrics"]["accuracy"] == pytest.approx(np.trace(confusion) / confusion.sum())  # gathered right
    assert (tmp_path / "runs" / "toy" / "ddp" / "ensemble.json").is_file()

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["finch-ddp"])
    assert sorted(runs["tags.mlflow.runName"]) == ["toy/ddp/seed=0", "toy/ddp/seed=1"]  # logged by rank 0 only


def test_single_process_helpers_are_no_ops():
    assert distributed.world_size() == 1 and distributed.rank() == 0 and distributed.is_main()
    idx = torch.arange(10)
    assert torch.equal(distributed.shard(idx), idx)
    assert distributed.mean_over_ranks(3.5) == 3.5
    rows = distributed.gather_rows(5, lambda i: {"p": i.numpy()[:, None] * 2.0})
    assert rows["p"][:, 0].tolist() == [0, 2, 4, 6, 8]
    model = torch.nn.Linear(2, 2)
    assert distributed.wrap(model, torch.device("cpu")) is model
