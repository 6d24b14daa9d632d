"""`dvc status` on an unchanged 10,000-image folder that `prepare` depends on (dvc.yaml's
`${data.root}`): DVC keeps each file's hash with its inode, size and modification time (its
state database), so a second look lists the tree without reading it again.

Measured in a throw-away DVC repository with only a stage like `prepare` (a dependency on the
folder, one small output), so the time is DVC's, not Finch's:
- `dvc status` on the unchanged tree after `dvc repro` hashed it (median of 3: the number reported),
- the same with DVC's state database removed (every file read and hashed again),
- and after one image was rewritten (DVC re-hashes that file alone and names the dep).
On 28 px PNGs (~0.8 KB each) hashing is cheap next to DVC's start-up; larger images widen the gap.

    python benchmarks/dvc_status.py          # prints the row; benchmarks/run.py adds it to reports/benchmarks.md
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from dvc.repo import Repo
from PIL import Image

IMAGES = 10_000
TARGET_S = 2.0  # a status that answers before one would reach for --force
CLASSES = 10
DVC_YAML = """\
stages:
  prepare:
    cmd: python -c "open('out.txt', 'w').write('ok')"
    deps:
      - ${root}
    outs:
      - out.txt
"""


def _dvc(args: list[str], repo: Path) -> float:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    start = time.perf_counter()
    subprocess.run(["dvc", *args], cwd=repo, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def measure() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        repo, images = Path(tmp) / "repo", Path(tmp) / "images"
        rng = np.random.default_rng(0)
        for i in range(IMAGES):  # 28 px greyscale PNGs, as Fashion-MNIST's
            path = images / f"class{i % CLASSES}" / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8), "L").save(path)
        repo.mkdir()
        subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
        _dvc(["init", "-q"], repo)
        (repo / "params.yaml").write_text(f"root: {images}\n")
        (repo / "dvc.yaml").write_text(DVC_YAML)
        _dvc(["repro", "-q"], repo)  # hashes the tree once, records it in dvc.lock
        warm = statistics.median(_dvc(["status", "-q"], repo) for _ in range(3))
        with Repo(str(repo)) as dvc:  # DVC's state database (file hashes by inode, size, mtime)
            state = Path(dvc.site_cache_dir) / "hashes"
        shutil.rmtree(state)  # without it, status reads every file again
        cold = _dvc(["status", "-q"], repo)
        one = images / "class3" / "3.png"
        Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8), "L").save(one)
        changed_start = time.perf_counter()
        env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
        status = subprocess.run(["dvc", "status"], cwd=repo, env=env, capture_output=True, text=True)
        changed = time.perf_counter() - changed_start
        noticed = "changed deps" in status.stdout
    ratio = warm / TARGET_S
    return {
        "name": f"`dvc status` on an unchanged {IMAGES:,}-image folder (prepare's dep), seconds / {TARGET_S:.0f} s",
        "ratio": ratio,
        "target": f"≤ 1 ({TARGET_S:.0f} s), a changed image named",
        "ok": ratio <= 1 and noticed,
        "detail": f"unchanged, DVC's state kept: {warm:.2f} s (median of 3); state dropped (every file re-read): "
        f"{cold:.2f} s; one image rewritten: {changed:.2f} s, {'named' if noticed else 'NOT named'} as a changed dep",
    }


if __name__ == "__main__":
    print(measure())
