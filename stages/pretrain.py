"""DVC stage `pretrain`: the CNN backbone from the source classes (or timm's weights)."""

from finch.pipeline.common import run_stage
from finch.pipeline.pretrain import pretrain

if __name__ == "__main__":
    run_stage("pretrain", pretrain, imports=("torch", "timm", "mlflow", "finch.study"))
