"""The table of Finch's stages: one row per DVC stage, in pipeline order.

A stage ``X`` is ``dvc.yaml``'s stage ``X``, run as ``stages/X.py``, whose work is
``finch.pipeline.X.run``. Its row names what the stage reads and writes; ``dvc.yaml`` is
checked against this table (tests/test_stages.py), and the stage's code deps are what its
module really imports (scripts/dvc_deps.py). This module imports nothing heavy: every stage
process reads it before anything else.
"""

from __future__ import annotations

from dataclasses import dataclass

BACKBONE = "models/pretrain/backbone.safetensors"
VIT_BACKBONE = "models/pretrain/vit_backbone.safetensors"
TRAINING_IMPORTS = ("torch", "timm", "mlflow")  # imported at start-up, so the stage's start-up time counts them


@dataclass(frozen=True)
class Stage:
    """One DVC stage: what it reads and writes.

    ``records`` is the stage name in its run records (``reports/runs/<records>/``, MLflow's
    ``stage`` tag), where that differs from the DVC name; ``imports`` are the third-party
    modules the process imports right after reading its parameters (timed as start-up).
    ``launched`` stages start through ``runtime.launcher`` (torchrun for DDP)."""

    name: str
    params: tuple[str, ...]
    outs: tuple[str, ...]
    deps: tuple[str, ...] = ()  # artefacts (code deps follow from the imports)
    metrics: tuple[str, ...] = ()
    records: str | None = None
    imports: tuple[str, ...] = ()
    launched: bool = False

    @property
    def script(self) -> str:
        return f"stages/{self.name}.py"

    @property
    def module(self) -> str:
        return f"finch.pipeline.{self.name}"

    @property
    def cmd(self) -> str:
        return f"{'${runtime.launcher}' if self.launched else 'python'} {self.script}"

    @property
    def timing(self) -> str:
        return f"reports/timing/{self.name}.json"


def _training(name: str, records: str, params: tuple[str, ...], deps: tuple[str, ...], seeds: bool = True) -> Stage:
    """A stage that trains classifiers through the runner: models, run records, metrics, timing."""
    common = ("profile", "seeds", "runtime") if seeds else ("profile", "runtime")
    return Stage(
        name=name,
        params=common + params + ("evaluate",) + (("data.split_per_seed",) if seeds else ()),
        outs=(f"models/{records}", f"reports/runs/{records}", f"reports/timing/{name}.json"),
        deps=("data/prepared", *deps),
        metrics=(f"reports/metrics/{name}.json",),
        records=records,
        imports=TRAINING_IMPORTS,
        launched=True,
    )


STAGES: dict[str, Stage] = {
    s.name: s
    for s in (
        # ${data.root}: the images themselves (DVC's templating from params.yaml), so DVC sees them change
        Stage(
            "prepare", params=("data",), outs=("data/prepared", "reports/timing/prepare.json"), deps=("${data.root}",)
        ),
        Stage(
            "floors",
            params=("evaluate", "synthetic.real_per_class"),
            outs=("reports/floors.json", "reports/timing/floors.json"),
            deps=("data/prepared",),
            imports=("sklearn",),
        ),
        _training("pretrain", "pretrain", ("pretrain",), (), seeds=False),
        _training("train_teacher", "teacher", ("teacher",), (BACKBONE,)),
        _training("train_student", "student", ("teacher.model", "student"), ("models/teacher",)),
        Stage(
            "extract_features",
            params=("runtime", "pretrain.model", "pretrain.vit_model"),
            outs=("data/features", "reports/timing/extract_features.json"),
            deps=("data/prepared", BACKBONE, VIT_BACKBONE),
            imports=("torch", "timm"),
        ),
        _training(
            "finetune",
            "finetune",
            ("pretrain.model", "pretrain.vit_model", "finetune"),
            ("data/features", BACKBONE, VIT_BACKBONE),
        ),
        Stage(
            "train_gan",
            params=("profile", "runtime", "gan", "synthetic.real_per_class"),
            outs=("models/gan", "reports/runs/gan", "reports/timing/train_gan.json"),
            deps=("data/prepared",),
            metrics=("reports/metrics/train_gan.json",),
            records="gan",
            imports=TRAINING_IMPORTS,
        ),
        Stage(
            "generate",
            params=("runtime", "gan", "synthetic", "pretrain.model"),
            outs=("data/synthetic", "reports/gan_samples.png", "reports/timing/generate.json"),
            deps=("data/prepared", "models/gan/generator.safetensors", BACKBONE),
            metrics=("reports/synthetic_quality.json",),
            imports=("torch", "timm"),
        ),
        _training("train_augmented", "augmented", ("teacher", "synthetic"), ("data/synthetic", BACKBONE)),
        _training("ablation", "ablation", ("teacher", "ablation"), (BACKBONE,)),
        Stage(
            "explain",
            params=("profile", "seeds", "teacher.model", "student", "runtime", "explain", "tracking"),
            outs=("reports/explanations.png", "reports/timing/explain.json"),
            deps=("data/prepared", "models/teacher", "models/student"),
            imports=("torch", "timm", "mlflow", "pytorch_grad_cam"),
        ),
        Stage(
            "aggregate",
            params=("profile", "aggregate", "tracking"),
            outs=(
                "reports/runs.csv",
                "reports/numerics.json",
                "reports/results.md",
                "reports/comparisons.csv",
                "reports/budgets.csv",
                "reports/plateau.csv",
                "reports/budget_comparisons.csv",
                "reports/summary.csv",
                "reports/headline.md",
                "reports/figures",
                "reports/plots",
                "reports/models",
                "reports/timing/aggregate.json",
            ),
            deps=(
                "reports/runs/pretrain",
                "reports/runs/teacher",
                "reports/runs/student",
                "reports/runs/finetune",
                "reports/runs/gan",
                "reports/runs/augmented",
                "reports/runs/ablation",
                "reports/synthetic_quality.json",
                "reports/floors.json",
                "data/prepared/card.json",
            ),
            metrics=("reports/summary.json",),
            imports=("pandas", "scipy.stats", "matplotlib", "mlflow"),
        ),
    )
}


def stage_writing(path: str) -> str | None:
    """The stage whose outputs hold ``path`` (relative to the repository root), or None."""
    path = path.strip("/")
    for stage in STAGES.values():
        if any(path == out or path.startswith(f"{out}/") for out in (*stage.outs, *stage.metrics)):
            return stage.name
    return None
