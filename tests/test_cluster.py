"""A stage's runs as SLURM jobs (``runtime.executor: slurm``), through submitit's local executor:
the same code path as on a cluster minus ``sbatch``."""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import stat
from pathlib import Path

import pytest

from finch.config import FinchConfig
from finch.models import build_model
from finch.runner import train_plan
from finch.runs import find_records

from .conftest import REPO, TINY_MODEL
from .test_runner import CPU, metrics_of, toy_plan

KILLED_ONCE = Path("killed-once")  # in the stage's working directory, shared with its jobs


def _dies_once(seed: int):
    """The first job that builds this model is killed (SIGKILL: no result, no traceback)."""
    if not KILLED_ONCE.exists():
        KILLED_ONCE.touch()
        os.kill(os.getpid(), signal.SIGKILL)
    return build_model(TINY_MODEL, 2, 1)


def killed_once_plan(cfg, device):
    """:func:`toy_plan`, whose run `first` of seed 1 is killed the first time it starts."""
    planned = toy_plan(cfg, device)
    first = planned[0]
    dying = dataclasses.replace(
        first.variant, build_model=lambda seed: _dies_once(seed) if seed == 1 else build_model(TINY_MODEL, 2, 1)
    )
    return [dataclasses.replace(first, variant=dying), *planned[1:]]


def _broken(seed: int):
    raise ValueError("no model here: the job's error")


def failing_plan(cfg, device):
    """:func:`toy_plan` whose every `first` run raises."""
    planned = toy_plan(cfg, device)
    first = planned[0]
    return [dataclasses.replace(first, variant=dataclasses.replace(first.variant, build_model=_broken)), *planned[1:]]


def one_run_plan(cfg, device):
    """:func:`toy_plan`'s `first` variant, seed 0 alone."""
    return [dataclasses.replace(toy_plan(cfg, device)[0], seeds=[0])]


def slurm_config(folder: Path, **slurm) -> FinchConfig:
    return FinchConfig(
        runtime={
            "progress": False,
            "threads": 1,
            "executor": "slurm",
            "slurm": {"cluster": "local", "folder": str(folder), "array_parallelism": 2, "poll_s": 0.2, **slurm},
        },
        tracking={"enabled": False},
    )


@pytest.fixture
def jobs_import_the_tests(monkeypatch):
    """The jobs rebuild the plan from its module (``tests.test_cluster``): let them import it."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))


@pytest.mark.slow
def test_jobs_give_the_process_pools_numbers_even_with_a_job_killed(
    tmp_path, monkeypatch, caplog, jobs_import_the_tests
):
    results = {}
    pool_dir, jobs_dir = tmp_path / "pool", tmp_path / "jobs"
    for work in (pool_dir, jobs_dir):
        work.mkdir()
    monkeypatch.chdir(pool_dir)
    cfg = FinchConfig(runtime={"progress": False, "threads": 1, "workers": 2}, tracking={"enabled": False})
    train_plan(toy_plan, cfg, CPU)
    results["pool"] = metrics_of(pool_dir / "runs")

    monkeypatch.chdir(jobs_dir)
    caplog.set_level(logging.INFO)
    folders = train_plan(killed_once_plan, slurm_config(jobs_dir / "submitit"), CPU)
    results["jobs"] = metrics_of(jobs_dir / "runs")

    assert len(folders) == 4 and (jobs_dir / "runs/toy/second/ensemble.json").is_file()
    assert KILLED_ONCE.exists()  # the job was killed ...
    assert "toy/first/seed=1: job" in caplog.text and "resubmitting it" in caplog.text  # ... and sent again
    assert "jobs: " in caplog.text and "running" in caplog.text  # progress while the stage waits
    assert results["jobs"] == results["pool"]  # bit for bit: metrics, every epoch's losses, every budget
    keys = [{(r.variant, r.seed): r.run_key for r in find_records(root / "runs")} for root in (pool_dir, jobs_dir)]
    assert keys[0] == keys[1]  # the same runs: how they were spread is not part of their key
    folder = jobs_dir / "submitit"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700  # submitit's pickles: readable by their owner alone


@pytest.mark.slow
def test_a_failing_job_fails_the_stage_naming_its_run_and_log(tmp_path, monkeypatch, jobs_import_the_tests):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RuntimeError) as err:
        train_plan(failing_plan, slurm_config(tmp_path / "submitit", max_resubmits=0), CPU)
    text = str(err.value)
    assert text.startswith("toy/first/seed=") and "failed; its log: " in text
    log_path = Path(text.split("its log: ")[1].split()[0])
    assert log_path.is_file() and log_path.name.endswith("_log.err")
    assert "no model here: the job's error" in text and "no model here" in log_path.read_text()


UNDER_TORCHRUN = """
import sys
sys.path.insert(0, sys.argv[1])
from finch.config import FinchConfig
from finch.runner import train_plan
from finch.runs import find_records
from finch.train.runtime import configure
from tests.test_cluster import one_run_plan
cfg = FinchConfig(runtime={"progress": False, "threads": 1}, tracking={"enabled": False})
train_plan(one_run_plan, cfg, configure(cfg.runtime))
"""


@pytest.mark.slow
def test_a_job_of_two_tasks_trains_ddp_as_torchrun_does(tmp_path, monkeypatch, jobs_import_the_tests):
    import subprocess
    import sys

    torchrun_dir, jobs_dir = tmp_path / "torchrun", tmp_path / "jobs"
    for work in (torchrun_dir, jobs_dir):
        work.mkdir()
    script = tmp_path / "under_torchrun.py"
    script.write_text(UNDER_TORCHRUN)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    subprocess.run([*launcher, str(script), str(REPO)], cwd=torchrun_dir, check=True, capture_output=True)

    monkeypatch.chdir(jobs_dir)
    train_plan(one_run_plan, slurm_config(jobs_dir / "submitit", tasks_per_node=2), CPU)
    records = find_records(jobs_dir / "runs")
    assert [r.tags["finch.world_size"] for r in records] == ["2"]  # one record, written by rank 0
    assert records[0].params["runtime.tasks_per_job"] == 2  # in its key: a world size of 2 trains other numbers
    assert metrics_of(jobs_dir / "runs") == metrics_of(torchrun_dir / "runs")


def test_slurm_takes_its_gpus_per_job_not_torchrun():
    with pytest.raises(ValueError, match="set runtime.launcher: python"):
        FinchConfig(runtime={"executor": "slurm", "launcher": "torchrun --standalone --nproc_per_node=2"})


def test_no_slurm_here_is_said_plainly(tmp_path, monkeypatch):
    from finch.cluster import check_executor, make_executor
    from finch.errors import ConfigError

    monkeypatch.setattr("shutil.which", lambda name: None)  # no sbatch, as on this machine
    with pytest.raises(ConfigError, match="no sbatch"):  # finch check and every training stage, before any work
        check_executor(FinchConfig(runtime={"executor": "slurm"}))
    check_executor(FinchConfig(runtime={"executor": "slurm", "slurm": {"cluster": "local"}}))  # needs none

    with pytest.raises(RuntimeError, match="cluster: local"):
        make_executor(FinchConfig(runtime={"executor": "slurm", "slurm": {"folder": str(tmp_path / "sub")}}))


def test_the_slurm_executor_gets_the_resources_from_params(tmp_path, monkeypatch):
    from finch.cluster import make_executor

    monkeypatch.setattr("submitit.slurm.slurm.SlurmExecutor.affinity", staticmethod(lambda: 1))  # as on a cluster

    cfg = FinchConfig(
        runtime={
            "threads": 4,
            "executor": "slurm",
            "slurm": {
                "folder": str(tmp_path / "sub"),
                "partition": "gpu",
                "gpus_per_node": 4,
                "mem_gb": 64,
                "timeout_min": 600,
                "array_parallelism": 8,
                "setup": ["source .venv/bin/activate"],
                "additional": {"account": "vision"},
            },
        }
    )
    executor = make_executor(cfg)
    params = executor._executor.parameters
    assert params["partition"] == "gpu" and params["gpus_per_node"] == 4 and params["ntasks_per_node"] == 4
    assert params["cpus_per_task"] == 4 and params["mem"] == "64GB" and params["time"] == 600
    assert params["array_parallelism"] == 8 and params["setup"] == ["source .venv/bin/activate"]
    assert params["additional_parameters"] == {"account": "vision"}
    text = executor._executor._make_submission_file_text("python -m job", "uid")
    assert "#SBATCH --partition=gpu" in text and "#SBATCH --gpus-per-node=4" in text
    assert "#SBATCH --account=vision" in text and "source .venv/bin/activate" in text


def test_the_readmes_slurm_example_is_valid_params():
    import yaml

    text = (REPO / "README.md").read_text()
    section = text[text.index("## Running on a SLURM cluster") :]
    block = section[section.index("```yaml\n") + 8 : section.index("```\n", section.index("```yaml\n") + 8)]
    runtime = yaml.safe_load(block)["runtime"]
    cfg = FinchConfig(runtime=runtime)
    assert cfg.runtime.executor == "slurm" and cfg.runtime.slurm.gpus_per_node == 4


def test_a_failure_to_watch_the_jobs_fails_the_stage_instead_of_hanging(tmp_path, monkeypatch):
    from concurrent.futures import Future

    from finch.cluster import ClusterTask, SubmititPool

    cfg = slurm_config(tmp_path / "submitit")
    pool = SubmititPool(cfg, ClusterTask("tests.test_cluster:one_run_plan", cfg.model_dump()), {})

    def sacct_down():
        raise OSError("sacct: error: slurm_persist_conn_open_without_init: failed to open persistent connection")

    monkeypatch.setattr(pool, "_check_jobs", sacct_down)
    future = Future()
    pool.queued.append(("run", future, 0))
    with pytest.raises(RuntimeError, match="watching the SLURM jobs failed: sacct"):
        future.result(timeout=30)
    pool.shutdown(cancel_futures=True)
