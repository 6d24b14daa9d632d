"""DVC stage `ablation`: the teacher's recipe with one knob changed per variant, over every seed."""

from finch.pipeline.ablation import train_ablation
from finch.pipeline.common import run_stage

if __name__ == "__main__":
    run_stage(
        "ablation",
        train_ablation,
        imports=("torch", "timm", "mlflow", "finch.study"),
        imports_when=lambda cfg: bool(cfg.ablation.run),  # the default study trains no ablation
    )
