"""DVC stage `prepare`: sample and check the target and source tasks → data/prepared/."""

from finch.pipeline import prepare
from finch.pipeline.entry import run_stage

if __name__ == "__main__":
    run_stage(prepare)
