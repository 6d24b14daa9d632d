"""DVC stage `train_augmented`: the teacher recipe on real + synthetic images, over seeds."""

from finch.pipeline.augmented import train_augmented
from finch.pipeline.common import run_stage

if __name__ == "__main__":
    run_stage("train_augmented", train_augmented, imports=("torch", "timm", "mlflow", "finch.study"))
