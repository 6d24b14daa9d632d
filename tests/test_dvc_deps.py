"""dvc.yaml declares, for every stage, exactly the code it imports (scripts/dvc_deps.py computes it).

A module a stage imports but does not list lets `dvc repro` call stale results up to date; a
module it lists but does not import re-runs it for nothing. Fix either with
`python scripts/dvc_deps.py --write`.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def _load_checker():
    spec = importlib.util.spec_from_file_location("dvc_deps", REPO / "scripts" / "dvc_deps.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


dvc_deps = _load_checker()
STAGES = dvc_deps.load_stages(REPO / "dvc.yaml")
FIX = "run `python scripts/dvc_deps.py --write` to update dvc.yaml"


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_deps_match_its_imports(name: str):
    result = dvc_deps.check_stage(REPO, STAGES[name])
    assert result.needed, f"{name}: found no script in its cmd {dvc_deps.stage_cmd(STAGES[name])!r}"
    if not result.ok:
        pytest.fail("\n".join(result.describe(name) + [FIX]), pytrace=False)


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_deps_exist(name: str):
    stale = dvc_deps.stale_deps(REPO).get(name, [])
    if stale:
        pytest.fail(f"{name}: deps that neither exist nor are a stage's output: {', '.join(stale)}", pytrace=False)


def test_closure_follows_function_local_and_string_imports():
    needed, _ = dvc_deps.stage_closure(REPO, "${runtime.launcher} stages/train_teacher.py")
    assert "stages/train_teacher.py" in needed
    assert "src/finch/data/splits.py" in needed  # imported inside train_teacher()
    assert "src/finch/__init__.py" in needed and "src/finch/pipeline/__init__.py" in needed
    assert "src/finch/study.py" in needed  # via finch.pipeline.training → finch.runner


def test_closure_counts_from_package_import_submodule(tmp_path: Path):
    pkg = tmp_path / "src" / "finch"
    (pkg / "sub").mkdir(parents=True)
    for f in ("__init__.py", "sub/__init__.py", "sub/a.py", "sub/b.py", "c.py"):
        (pkg / f).write_text("")
    (pkg / "c.py").write_text("def f():\n    from finch.sub import a, CONSTANT\n")
    (tmp_path / "run.py").write_text("import finch.c\n")
    needed, unresolved = dvc_deps.stage_closure(tmp_path, "python run.py")
    assert needed == {
        "run.py",
        "src/finch/__init__.py",
        "src/finch/c.py",
        "src/finch/sub/__init__.py",
        "src/finch/sub/a.py",
    }
    assert not unresolved


def _dvc_yaml_without(tmp_path: Path, stage: str, dep: str) -> Path:
    lines = (REPO / "dvc.yaml").read_text().splitlines(keepends=True)
    spans = dvc_deps._stage_spans(lines)
    start, end, _ = spans[stage]
    hits = [i for i in range(start, end) if lines[i].strip() == f"- {dep}"]
    assert len(hits) == 1, f"{stage}: expected one `- {dep}` line in dvc.yaml"
    del lines[hits[0]]
    path = tmp_path / "dvc.yaml"
    path.write_text("".join(lines))
    return path


def _pick_removable_dep() -> tuple[str, str]:
    """A training stage and a src file it lists on its own line (the issue's example first)."""
    if "src/finch/data/splits.py" in dvc_deps.stage_deps(STAGES.get("train_teacher", {})):
        return "train_teacher", "src/finch/data/splits.py"
    for stage in ("train_teacher", "train_student", "prepare"):
        for dep in dvc_deps.stage_deps(STAGES.get(stage, {})):
            if dep.endswith(".py") and dep.startswith("src/"):
                return stage, dep
    pytest.skip("no stage lists a single src file to remove")


def _problems(dvc_yaml: Path) -> set[tuple[str, str]]:
    return {(name, line) for name, r in dvc_deps.check(REPO, dvc_yaml).items() for line in r.describe(name)}


def test_check_names_the_stage_and_file_of_a_removed_dep(tmp_path: Path):
    stage, dep = _pick_removable_dep()
    damaged = _dvc_yaml_without(tmp_path, stage, dep)
    new = _problems(damaged) - _problems(REPO / "dvc.yaml")
    assert new == {(stage, f"{stage}: missing dep {dep}")}


def test_write_restores_a_removed_dep_and_keeps_the_rest(tmp_path: Path):
    stage, dep = _pick_removable_dep()
    damaged = _dvc_yaml_without(tmp_path, stage, dep)
    text, changes = dvc_deps.rewrite_deps(REPO, damaged.read_text())
    assert stage in changes and dep in changes[stage][0]
    fixed = tmp_path / "fixed.yaml"
    fixed.write_text(text)
    assert all(r.ok for r in dvc_deps.check(REPO, fixed).values())
    old, new = yaml.safe_load(damaged.read_text()), yaml.safe_load(text)
    assert new.keys() == old.keys() and new["stages"].keys() == old["stages"].keys()
    for name, before in old["stages"].items():
        after = new["stages"][name]
        assert {k: v for k, v in after.items() if k != "deps"} == {k: v for k, v in before.items() if k != "deps"}
        artefacts = [d for d in dvc_deps.stage_deps(before) if not dvc_deps.is_code(d)]
        assert [d for d in dvc_deps.stage_deps(after) if not dvc_deps.is_code(d)] == artefacts
    # a second run has nothing left to do
    assert dvc_deps.rewrite_deps(REPO, text)[1] == {}


def test_unneeded_src_dep_is_reported(tmp_path: Path):
    dvc_yaml = tmp_path / "dvc.yaml"
    dvc_yaml.write_text(
        "stages:\n"
        "  prepare:\n"
        "    cmd: python stages/prepare.py\n"
        "    deps:\n"
        "      - stages/prepare.py\n"
        "      - src/finch/gan.py\n"
        "      - data/raw\n"
    )
    result = dvc_deps.check(REPO, dvc_yaml)["prepare"]
    assert list(result.unneeded) == ["src/finch/gan.py"]  # data/raw is an artefact: allowed
    assert "src/finch/pipeline/prepare.py" in result.missing


def test_bytecode_caches_do_not_change_a_directory_dep(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Python writes __pycache__/ beside the code it imports (unless PYTHONDONTWRITEBYTECODE is set);
    src/finch/train and src/finch/data are directory deps, so without the repository's .dvcignore
    the first stage that imports them would make every stage look changed to `dvc status`."""
    from dvc.repo import Repo

    monkeypatch.chdir(tmp_path)
    (tmp_path / ".dvcignore").write_text((REPO / ".dvcignore").read_text())
    code = tmp_path / "code"
    code.mkdir()
    (code / "module.py").write_text("X = 1\n")
    repo = Repo.init(str(tmp_path), no_scm=True)
    repo.stage.add(name="use", cmd="echo done > out.txt", deps=["code"], outs_no_cache=["out.txt"])
    repo.reproduce("use")
    assert repo.status() == {}

    (code / "__pycache__").mkdir()
    (code / "__pycache__" / "module.cpython-311.pyc").write_bytes(b"bytecode")
    assert Repo(str(tmp_path)).status() == {}

    (code / "other.py").write_text("Y = 2\n")  # a real change still counts
    assert "use" in Repo(str(tmp_path)).status()
