"""DVC stage `finetune`: every freezing strategy over every seed (probes on the cached features)."""

from finch.pipeline.common import run_stage
from finch.pipeline.finetune import finetune

if __name__ == "__main__":
    run_stage("finetune", finetune, imports=("torch", "timm", "peft", "mlflow", "finch.study"))
