"""DVC stage `ablation`: the teacher's recipe with one knob changed per variant, over every seed."""

from finch.pipeline import ablation
from finch.pipeline.entry import run_stage

if __name__ == "__main__":
    run_stage(ablation)
