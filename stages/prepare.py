"""DVC stage `prepare`: sample and check the target and source tasks → data/prepared/."""

from finch.pipeline.common import run_stage
from finch.pipeline.prepare import prepare

if __name__ == "__main__":
    run_stage("prepare", prepare)
