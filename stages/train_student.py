"""DVC stage `train_student`: the distilled ViT student, every variant over every seed."""

from finch.pipeline.common import run_stage
from finch.pipeline.student import train_student

if __name__ == "__main__":
    run_stage("train_student", train_student, imports=("torch", "timm", "mlflow", "finch.study"))
