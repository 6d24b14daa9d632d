"""DVC stage `extract_features`: each pretrained backbone once over the target splits → data/features/."""

from finch.pipeline import extract_features
from finch.pipeline.entry import run_stage

if __name__ == "__main__":
    run_stage(extract_features)
