"""Nothing in the pipeline's code can unpickle: ruff's S301 (pickle and its wrappers) and S506
(unsafe yaml.load), plus an AST check for the loads ruff has no rule for."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

from .conftest import REPO

CODE = ("src", "stages")
RUFF_RULES = "S301,S506"
# loaders that unpickle whatever they are given, and ruff does not flag
UNPICKLING = {"joblib.load", "cloudpickle.load", "cloudpickle.loads"}


def ruff_unsafe_loads(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "ruff",
            "check",
            "--no-cache",
            "--output-format",
            "concise",
            "--select",
            RUFF_RULES,
            *CODE,
        ],
        cwd=root,
        capture_output=True,
        text=True,
    )


def unsafe_loads(path: Path) -> list[str]:
    """``file:line: call`` for each unpickling call ruff misses: ``torch.load`` without
    ``weights_only=True``, ``numpy.load`` with ``allow_pickle=True``, joblib and cloudpickle."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names = {}  # local name → dotted module path (import aliases followed)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update({a.asname or a.name: a.name for a in node.names})
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.update({a.asname or a.name: f"{node.module}.{a.name}" for a in node.names})

    def dotted(func: ast.expr) -> str:
        parts = []
        while isinstance(func, ast.Attribute):
            parts.append(func.attr)
            func = func.value
        return ".".join([names.get(func.id, func.id), *reversed(parts)]) if isinstance(func, ast.Name) else ""

    def keyword_true(call: ast.Call, name: str) -> bool:
        return any(k.arg == name and isinstance(k.value, ast.Constant) and k.value.value is True for k in call.keywords)

    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = dotted(node.func)
        if (
            name in UNPICKLING
            or (name == "torch.load" and not keyword_true(node, "weights_only"))
            or (name == "numpy.load" and keyword_true(node, "allow_pickle"))
        ):
            found.append(f"{path}:{node.lineno}: {name}")
    return found


def test_ruff_finds_no_unpickling_in_the_pipeline():
    out = ruff_unsafe_loads(REPO)
    assert out.returncode == 0, f"ruff check --select {RUFF_RULES} {' '.join(CODE)}:\n{out.stdout}{out.stderr}"


def test_ruff_check_catches_pickle_loads_and_yaml_load(tmp_path):
    for folder in CODE:
        shutil.copytree(REPO / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    (tmp_path / "src" / "finch" / "unsafe.py").write_text(
        "import pickle\n\nimport yaml\n\nstate = pickle.loads(b'')\nparams = yaml.load('a: 1', Loader=yaml.Loader)\n"
    )
    out = ruff_unsafe_loads(tmp_path)
    assert out.returncode == 1
    flagged = [line for line in out.stdout.splitlines() if line.startswith("src/finch/unsafe.py:")]
    assert [line.split()[1] for line in flagged] == ["S301", "S506"], out.stdout


def test_torch_load_is_weights_only_and_nothing_else_unpickles():
    files = sorted(p for folder in CODE for p in (REPO / folder).rglob("*.py"))
    assert len(files) > 20
    assert [hit for p in files for hit in unsafe_loads(p)] == []


def test_the_ast_check_sees_through_aliases(tmp_path):
    control = tmp_path / "control.py"
    control.write_text(
        "import joblib\nimport numpy as np\nimport torch as T\nfrom cloudpickle import loads as read_back\n"
        "joblib.load(p)\nread_back(b)\nT.load(p)\nT.load(p, weights_only=False)\nnp.load(p, allow_pickle=True)\n"
        "T.load(p, weights_only=True)\nnp.load(p)\n"
    )
    assert sorted(int(hit.split(":")[1]) for hit in unsafe_loads(control)) == [5, 6, 7, 8, 9]
