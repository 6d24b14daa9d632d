"""DVC stage `extract_features`: each pretrained backbone once over the target splits → data/features/."""

from finch.pipeline.common import run_stage
from finch.pipeline.features import extract_features

if __name__ == "__main__":
    run_stage("extract_features", extract_features, imports=("torch", "timm"))
