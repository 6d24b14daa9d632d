"""Process start-up (interpreter + imports, and DVC's own) as a share of the study's wall time.

Each stage records in reports/timing/<stage>.json the seconds from process creation until
its heavy imports were done (startup_s) and its total wall time (wall_s), on the last run of
the study. DVC's own cost is measured here as the wall time of a no-op `dvc repro`.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path


def measure() -> dict:
    timings = [json.loads(p.read_text()) for p in sorted(Path("reports/timing").glob("*.json"))]
    if not timings:
        raise FileNotFoundError("reports/timing/*.json missing: run `dvc repro` first")
    t = time.perf_counter()
    subprocess.run(["dvc", "repro"], check=True, capture_output=True)
    dvc_s = time.perf_counter() - t
    startup = sum(x["startup_s"] for x in timings)
    wall = sum(x["wall_s"] for x in timings) + dvc_s
    share = (startup + dvc_s) / wall
    stages = ", ".join(f"{x['stage']} {x['startup_s']:.1f}/{x['wall_s']:.1f} s" for x in timings)
    return {
        "name": "start-up share of the default study",
        "startup_s": startup,
        "dvc_s": dvc_s,
        "wall_s": wall,
        "ratio": share,
        "target": "< 0.10",
        "ok": share < 0.10,
        "detail": f"stage start-up/wall: {stages}; no-op dvc repro {dvc_s:.1f} s",
    }
