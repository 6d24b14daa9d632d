"""DVC stage `generate`: labelled synthetic images, their grid and their quality."""

from finch.pipeline import generate
from finch.pipeline.entry import run_stage

if __name__ == "__main__":
    run_stage(generate)
