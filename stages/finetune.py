"""DVC stage `finetune`: every freezing strategy over every seed (probes on the cached features)."""

from finch.pipeline import finetune
from finch.pipeline.entry import run_stage

if __name__ == "__main__":
    run_stage(finetune)
