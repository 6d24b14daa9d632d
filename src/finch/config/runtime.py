"""How runs execute and are reported: runtime, evaluate, tracking, aggregate, verify."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from finch.config.base import Strict


class SlurmConfig(Strict):
    """Where and how ``runtime.executor: slurm`` submits a stage's runs (one job per run, through submitit)."""

    cluster: Literal["slurm", "local"] = Field(
        "slurm", description="slurm: sbatch job arrays; local: submitit's local executor (same path, no sbatch)"
    )
    partition: str | None = Field(None, description="SLURM partition (null: the cluster's default)")
    gpus_per_node: int = Field(0, ge=0, description="GPUs a job gets; above 1 the run trains DDP over them")
    tasks_per_node: int | None = Field(
        None, ge=1, description="processes a job runs DDP over (null: one per GPU, at least 1; gloo on CPUs)"
    )
    cpus_per_task: int | None = Field(None, ge=1, description="CPUs per task (null: runtime.threads)")
    mem_gb: float = Field(16.0, gt=0, description="memory a job gets (GB)")
    timeout_min: int = Field(240, ge=1, description="a job's time limit; past it the run is requeued and resumes")
    array_parallelism: int = Field(32, ge=1, description="jobs of a stage's array that run at once")
    max_resubmits: int = Field(
        2, ge=0, description="times a job that died without a result (killed, node lost) is resubmitted"
    )
    poll_s: float = Field(15.0, gt=0, description="seconds between looks at the jobs' states")
    folder: str = Field(
        ".finch/submitit",
        description="submitit's job files and logs (on the shared filesystem; created private to you: it holds "
        "pickles)",
    )
    setup: list[str] = Field(
        default_factory=list, description="shell lines run before each job (module load, source .venv/bin/activate)"
    )
    additional: dict[str, str | int] = Field(
        default_factory=dict, description="more sbatch options, e.g. {account: myproj, qos: normal}"
    )

    @property
    def tasks_per_job(self) -> int:
        """The processes a job runs (its DDP world size): tasks_per_node, or one per GPU, at least one."""
        return self.tasks_per_node or max(1, self.gpus_per_node)


class RuntimeConfig(Strict):
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int = Field(1, ge=1, description="torch CPU threads per worker (fixed: part of determinism)")
    workers: int = Field(
        2, ge=1, description="processes a training stage spreads its runs over (results do not depend on it)"
    )
    deterministic: bool = True
    progress: bool = True
    launcher: str = Field(
        "python",
        description="how the training stages start: python, or torchrun --standalone --nproc_per_node=N (DDP)",
    )
    executor: Literal["local", "slurm"] = Field(
        "local",
        description="local: runtime.workers processes here; slurm: one SLURM job per run (runtime.slurm)",
    )
    slurm: SlurmConfig = SlurmConfig()

    @model_validator(mode="after")
    def _one_way_to_distribute(self) -> RuntimeConfig:
        if self.executor == "slurm" and self.launcher.split()[0] != "python":
            raise ValueError(
                f"runtime.executor is slurm but runtime.launcher is {self.launcher!r}: under slurm each job "
                "trains DDP over its own GPUs (runtime.slurm.gpus_per_node); set runtime.launcher: python"
            )
        return self


class EvaluateConfig(Strict):
    ece_bins: int = Field(15, ge=2)


class TrackingConfig(Strict):
    enabled: bool = True
    uri: str | None = Field(None, description="null = sqlite mlflow.db at the repo root")
    experiment_prefix: str = "finch"
    log_weights: bool = True


class AggregateConfig(Strict):
    confidence: float = Field(0.95, gt=0.5, lt=1.0)
    bootstrap_resamples: int = Field(9999, ge=100)
    bootstrap_seed: int = 0
    plateau_delta: float = Field(
        0.01,
        gt=0.0,
        lt=1.0,
        description="plateau rule: a variant is at a plateau when the 95% interval of its gain between its last "
        "two budgets lies below this (accuracy; 0.01 = one point, about the binomial SE of 4,000 test images)",
    )
    headline_metrics: list[str] = Field(default_factory=lambda: ["accuracy", "f1_macro", "auroc_macro", "ece"])
    baselines: dict[str, list[str]] = Field(
        default_factory=lambda: {
            "student": ["none"],
            "finetune": ["linear_probe", "scratch"],
            "augmented": ["real"],
            "ablation": ["teacher/default"],
        },
        description="stage → variants (or other stage/variant) every variant is compared with, paired by seed",
    )
    variant_baselines: dict[str, dict[str, list[str]]] = Field(
        default_factory=lambda: {"augmented": {"synthetic_only": ["real_scratch"], "real_scratch": [], "real": []}},
        description="stage → {variant: its own baselines, replacing the stage's `baselines` ([] = none)}",
    )


class VerifyConfig(Strict):
    abs_tolerance: float = Field(0.01, ge=0.0, description="allowed |fresh - committed| per metric")
