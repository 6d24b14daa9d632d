"""DVC stage `generate`: labelled synthetic images, their grid and their quality."""

from finch.pipeline.common import run_stage
from finch.pipeline.gan import generate

if __name__ == "__main__":
    run_stage("generate", generate, imports=("torch", "timm", "mlflow", "finch.study"))
