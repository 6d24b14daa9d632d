"""DVC stage `explain`: Grad-CAM maps of the teacher and a student, and every model's parameter summary."""

from finch.pipeline.common import run_stage
from finch.pipeline.explain import explain

if __name__ == "__main__":
    run_stage("explain", explain, imports=("torch", "timm", "mlflow", "pytorch_grad_cam", "finch.explain"))
