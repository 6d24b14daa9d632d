"""DVC stage `aggregate`: intervals, tables, figures and the MLflow sync from the run records."""

from finch.pipeline.aggregate import aggregate
from finch.pipeline.common import run_stage

if __name__ == "__main__":
    run_stage("aggregate", aggregate, imports=("pandas", "scipy.stats", "matplotlib", "mlflow"))
