"""DVC stage `floors`: pixel logistic regression and k-NN on the target splits → reports/floors.json."""

from finch.pipeline import floors
from finch.pipeline.entry import run_stage

if __name__ == "__main__":
    run_stage(floors)
