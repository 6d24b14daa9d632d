"""DVC stage `aggregate`: intervals, tables, figures and the MLflow sync from the run records."""

from finch.pipeline import aggregate
from finch.pipeline.entry import run_stage

if __name__ == "__main__":
    run_stage(aggregate)
