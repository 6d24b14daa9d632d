"""DVC stage `pretrain`: the CNN backbone from the source classes (or timm's weights)."""

from finch.pipeline import pretrain
from finch.pipeline.entry import run_stage

if __name__ == "__main__":
    run_stage(pretrain)
