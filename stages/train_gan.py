"""DVC stage `train_gan`: the class-conditional DCGAN on the target training images."""

from finch.pipeline.common import run_stage
from finch.pipeline.gan import train_gan

if __name__ == "__main__":
    run_stage("train_gan", train_gan, imports=("torch", "timm", "mlflow", "finch.study"))
