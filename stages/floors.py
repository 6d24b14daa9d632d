"""DVC stage `floors`: pixel logistic regression and k-NN on the target splits → reports/floors.json."""

from finch.pipeline.common import run_stage
from finch.pipeline.floors import compute_floors

if __name__ == "__main__":
    run_stage("floors", compute_floors, imports=("sklearn",))
