"""DVC stage `train_student`: the distilled ViT student, every variant over every seed."""

from finch.pipeline import train_student
from finch.pipeline.entry import run_stage

if __name__ == "__main__":
    run_stage(train_student)
