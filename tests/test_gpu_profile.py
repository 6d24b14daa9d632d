"""The GPU study's profile (profiles/fmnist_gpu.yaml), run on the CPU at smoke size.

CI has no GPU, so the profile's own numbers are never reproduced here; what is tested is that
its settings (all target images, the small-input stem of teacher and backbone, the long ViT
schedules, every student variant) build and train through the pipeline: the same profile with
the smoke profile's sizes and the CPU, up to the student stage (in one process, without DVC).
"""

from __future__ import annotations

import sys

import pytest
import yaml

from .servers import make_smoke_repo, run, run_stages, smoke_env

pytestmark = pytest.mark.slow

SMOKE_SIZED = {
    "extends": "fmnist_gpu",
    "profile": "fmnist_gpu_smoke",
    "seeds": [0],
    "runtime": {"device": "cpu", "threads": 1, "workers": 1, "progress": False},
    "data": {"per_class_train": 24, "per_class_pretrain": 30, "per_class_test": 50},  # not 1,000s of test images a run
    "synthetic": {"real_per_class": 10},  # the GAN study's scarce images fit the smoke-sized data
    "pretrain": {"recipe": {"epochs": 1, "batch_size": 32}, "vit_recipe": {"epochs": 1, "batch_size": 32}},
    # wsd over the epochs: no warm-up, so a one-epoch decay fits (the GPU recipe warms the student up for 5)
    "teacher": {"recipe": {"epochs": 1, "batch_size": 16, "scheduler": {"warmup_epochs": 0}}},
    "student": {"recipe": {"epochs": 2, "batch_size": 16, "scheduler": {"warmup_epochs": 0}}},
    "tracking": {"enabled": False},
}


def test_gpu_profile_trains_on_the_cpu_at_smoke_size(tmp_path):
    env = smoke_env()
    make_smoke_repo(tmp_path, env)
    (tmp_path / "profiles/fmnist_gpu_smoke.yaml").write_text(yaml.safe_dump(SMOKE_SIZED, sort_keys=False))
    run([sys.executable, "-m", "finch.cli", "profile", "fmnist_gpu_smoke"], tmp_path, env)
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    assert params["teacher"]["model"]["small_input_stem"] and params["pretrain"]["model"]["small_input_stem"]
    assert params["student"]["variants"] == ["none", "soft", "hard", "class_token"]
    assert params["student"]["recipe"]["augment"]["mixup_alpha"] > 0  # the GPU recipe, sizes shrunk
    run([sys.executable, "-m", "finch.cli", "check"], tmp_path, env)
    run_stages(tmp_path, env, ["prepare", "pretrain", "train_teacher", "train_student"])
    for variant in ("none", "soft", "hard", "class_token"):
        assert (tmp_path / f"reports/runs/student/{variant}/seed=0/record.json").is_file(), variant
