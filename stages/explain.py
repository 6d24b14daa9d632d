"""DVC stage `explain`: Grad-CAM maps of the teacher and a student on fixed test images, logged to MLflow."""

from finch.pipeline import explain
from finch.pipeline.entry import run_stage

if __name__ == "__main__":
    run_stage(explain)
