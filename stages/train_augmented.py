"""DVC stage `train_augmented`: the teacher recipe on real + synthetic images, over seeds."""

from finch.pipeline import train_augmented
from finch.pipeline.entry import run_stage

if __name__ == "__main__":
    run_stage(train_augmented)
