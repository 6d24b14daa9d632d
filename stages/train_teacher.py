"""DVC stage `train_teacher`: the CNN teacher over every seed in params.yaml."""

from finch.pipeline import train_teacher
from finch.pipeline.entry import run_stage

if __name__ == "__main__":
    run_stage(train_teacher)
