"""DVC stage `prepare`: sample and check the target and source tasks → data/prepared/."""

from finch.pipeline import prepare, run_stage

if __name__ == "__main__":
    run_stage("prepare", prepare)
