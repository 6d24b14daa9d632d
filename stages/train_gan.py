"""DVC stage `train_gan`: the class-conditional DCGAN on the target training images."""

from finch.pipeline import train_gan
from finch.pipeline.entry import run_stage

if __name__ == "__main__":
    run_stage(train_gan)
