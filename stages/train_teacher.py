"""DVC stage `train_teacher`: the CNN teacher over every seed in params.yaml."""

from finch.pipeline.common import run_stage
from finch.pipeline.teacher import train_teacher

if __name__ == "__main__":
    run_stage("train_teacher", train_teacher, imports=("torch", "timm", "mlflow", "finch.study"))
