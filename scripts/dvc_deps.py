#!/usr/bin/env python
"""Check (and rewrite) the code deps of each DVC stage against what the stage imports.

A stage's code is the scripts named in its ``cmd`` plus every ``finch`` module they import,
transitively: function-local imports, ``from finch.pkg import name`` where ``name`` is a
submodule, the package ``__init__.py`` files that importing a submodule runs, and module names
passed as strings to ``importlib.import_module`` or ``run_stage(..., imports=(...))``.

    python scripts/dvc_deps.py           # per stage: missing and unneeded code deps (exit 1 if any)
    python scripts/dvc_deps.py --write   # rewrite the code part of each `deps:` list in dvc.yaml

``--write`` lists the stage's scripts, then its src files, a package directory standing for its
files only when the stage imports every ``.py`` file under it (so that a change to a module a
stage does not import never re-runs it). Artefact deps (data/, models/, reports/, ...) keep their
order and comments. tests/test_dvc_deps.py imports this file and runs the same check.
"""

from __future__ import annotations

import argparse
import ast
import functools
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "finch"
SRC = "src"
CODE_PREFIXES = ("src/", "stages/")  # deps that are code, derived from imports; the rest are artefacts


# ---------------------------------------------------------------------------- import closure


def module_file(root: Path, module: str) -> Path | None:
    """The file that defines ``module`` (``finch.a.b`` → src/finch/a/b.py or .../b/__init__.py)."""
    base = root / SRC / module.replace(".", "/")
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _module_name(root: Path, path: Path) -> str | None:
    """``src/finch/a/b.py`` → ``finch.a.b``; None for files outside src/ (stage scripts)."""
    try:
        rel = path.relative_to(root / SRC).with_suffix("")
    except ValueError:
        return None
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _is_ours(module: str) -> bool:
    return module == PACKAGE or module.startswith(PACKAGE + ".")


@functools.cache
def imported_modules(root: Path, path: Path) -> frozenset[str]:
    """Every ``finch`` module that running ``path`` may import, anywhere in the file."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except SyntaxError as err:
        raise SyntaxError(
            f"{path}: cannot parse ({err.msg}, line {err.lineno}); fix it to check dvc.yaml deps"
        ) from err
    this = _module_name(root, path)
    this_package = this if path.name == "__init__.py" else (this.rpartition(".")[0] if this else None)
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if _is_ours(alias.name))
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this file's package
                if not this_package:
                    continue
                parts = this_package.split(".")
                if node.level - 1 > len(parts) - 1:
                    continue
                base = ".".join(parts[: len(parts) - (node.level - 1)])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            if not _is_ours(module):
                continue
            found.add(module)
            # `from finch.pkg import name` imports finch.pkg.name when that is a submodule
            found.update(
                f"{module}.{alias.name}" for alias in node.names if module_file(root, f"{module}.{alias.name}")
            )
        elif isinstance(node, ast.Call):
            found.update(name for name in _module_strings(node) if _is_ours(name))
    return frozenset(found)


def _module_strings(call: ast.Call) -> list[str]:
    """Module names a call imports by string: ``import_module("finch.x")``, ``run_stage(imports=("finch.x",))``."""
    func = call.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
    candidates: list[ast.expr] = list(call.args[:1]) if name == "import_module" else []
    for kw in call.keywords:
        if kw.arg == "imports" and isinstance(kw.value, ast.Tuple | ast.List):
            candidates += kw.value.elts
    return [
        c.value
        for c in candidates
        if isinstance(c, ast.Constant) and isinstance(c.value, str) and re.fullmatch(r"\w+(\.\w+)*", c.value)
    ]


def files_run_by_import(root: Path, module: str) -> list[Path]:
    """Importing ``finch.a.b`` runs finch/__init__.py, finch/a/__init__.py and finch/a/b.py."""
    parts = module.split(".")
    files = [module_file(root, ".".join(parts[: i + 1])) for i in range(len(parts))]
    return [f for f in files if f is not None]


def script_paths(cmd: str | list[str]) -> tuple[list[str], list[str]]:
    """The ``.py`` scripts and the ``-m`` modules a stage's ``cmd`` runs."""
    commands = cmd if isinstance(cmd, list) else [cmd]
    scripts: list[str] = []
    modules: list[str] = []
    for command in commands:
        tokens = shlex.split(re.sub(r"\$\{[^}]*\}", " ", command))  # ${runtime.launcher} is the interpreter
        for i, token in enumerate(tokens):
            if token.endswith(".py"):
                scripts.append(token)
            elif token == "-m" and i + 1 < len(tokens):
                modules.append(tokens[i + 1])
    return scripts, modules


def stage_closure(root: Path, cmd: str | list[str]) -> tuple[set[str], set[str]]:
    """Repo-relative files a stage's code runs (its scripts included), and finch modules not found."""
    scripts, start = script_paths(cmd)
    files: set[str] = set()
    unresolved: set[str] = set()
    todo = [m for m in start if _is_ours(m)]
    for script in scripts:
        path = root / script
        if path.is_file():
            files.add(script)
            todo += imported_modules(root, path)
    seen: set[str] = set()
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        if module_file(root, module) is None:
            unresolved.add(module)
        for path in files_run_by_import(root, module):
            rel = path.relative_to(root).as_posix()
            if rel not in files:
                files.add(rel)
                todo += imported_modules(root, path)
    files |= package_data(root, files)
    return files, unresolved


def package_data(root: Path, files: set[str]) -> set[str]:
    """Data files (pyproject's ``[tool.setuptools.package-data]``) of the packages whose modules
    are in ``files``: a module reads them (a report template, say), so a change there re-runs it."""
    import tomllib

    pyproject = root / "pyproject.toml"
    if not pyproject.is_file():
        return set()
    data = tomllib.loads(pyproject.read_text()).get("tool", {}).get("setuptools", {}).get("package-data", {})
    out: set[str] = set()
    for package, patterns in data.items():
        folder = Path(SRC, *package.split("."))
        if any(Path(f).parent == folder for f in files if f.endswith(".py")):
            for pattern in patterns:
                out |= {p.relative_to(root).as_posix() for p in sorted((root / folder).glob(pattern)) if p.is_file()}
    return out


# ---------------------------------------------------------------------------- dvc.yaml


def load_stages(dvc_yaml: Path) -> dict[str, dict]:
    return yaml.safe_load(dvc_yaml.read_text(encoding="utf-8")).get("stages", {}) or {}


def _paths(entries: list | None) -> list[str]:
    """Paths of a deps/outs list, whose entries are ``path`` or ``{path: options}``."""
    return [e if isinstance(e, str) else next(iter(e)) for e in entries or []]


def stage_cmd(stage: dict) -> str | list[str]:
    return stage.get("cmd") or (stage.get("do") or {}).get("cmd") or ""


def stage_deps(stage: dict) -> list[str]:
    return _paths(stage.get("deps") or (stage.get("do") or {}).get("deps"))


def is_code(dep: str) -> bool:
    return dep.startswith(CODE_PREFIXES)


def covers(dep: str, file: str) -> bool:
    dep = dep.rstrip("/")
    return file == dep or file.startswith(dep + "/")


def python_files_under(root: Path, directory: str) -> list[str]:
    return sorted(
        p.relative_to(root).as_posix() for p in (root / directory).rglob("*.py") if "__pycache__" not in p.parts
    )


@dataclass
class StageDeps:
    """One stage's code deps against its imports."""

    needed: set[str]  # files the stage runs
    missing: list[str] = field(default_factory=list)  # needed files no dep covers
    unneeded: dict[str, list[str]] = field(default_factory=dict)  # code dep → files under it not imported
    unresolved: list[str] = field(default_factory=list)  # finch modules imported but not found

    @property
    def ok(self) -> bool:
        return not self.missing and not self.unneeded

    def describe(self, name: str) -> list[str]:
        lines = [f"{name}: missing dep {f}" for f in self.missing]
        for dep, extra in self.unneeded.items():
            if extra and any(covers(dep, f) for f in self.needed):  # a directory wider than the imports
                lines.append(f"{name}: dep {dep} also covers files the stage does not import: {', '.join(extra)}")
            else:
                lines.append(f"{name}: unneeded dep {dep} (the stage does not import it)")
        lines += [f"{name}: imports {m}, which is not in {SRC}/ (stale import?)" for m in self.unresolved]
        return lines


def check_stage(root: Path, stage: dict) -> StageDeps:
    needed, unresolved = stage_closure(root, stage_cmd(stage))
    deps = stage_deps(stage)
    result = StageDeps(needed=needed, unresolved=sorted(unresolved))
    result.missing = sorted(f for f in needed if not any(covers(d, f) for d in deps))
    for dep in deps:
        if not is_code(dep):
            continue
        if (root / dep).is_dir():
            extra = [f for f in python_files_under(root, dep) if f not in needed]
            if extra or not any(covers(dep, f) for f in needed):
                result.unneeded[dep] = extra
        elif dep not in needed:
            result.unneeded[dep] = []
    return result


def check(root: Path = ROOT, dvc_yaml: Path | None = None) -> dict[str, StageDeps]:
    """Every stage of ``dvc_yaml`` (default: root/dvc.yaml) checked against the code under ``root``."""
    stages = load_stages(dvc_yaml or root / "dvc.yaml")
    return {name: check_stage(root, stage) for name, stage in stages.items()}


def resolve_template(root: Path, dep: str) -> str:
    """``${data.root}`` → its value in params.yaml (DVC's templating), for deps that name data."""

    def value(match: re.Match) -> str:
        node = yaml.safe_load((root / "params.yaml").read_text(encoding="utf-8"))
        for key in match.group(1).split("."):
            node = node[key]
        return str(node)

    return re.sub(r"\$\{([\w.]+)\}", value, dep)


def stale_deps(root: Path = ROOT, dvc_yaml: Path | None = None) -> dict[str, list[str]]:
    """Deps that neither exist nor are (under) an output of some stage."""
    stages = load_stages(dvc_yaml or root / "dvc.yaml")
    outputs = [
        path for stage in stages.values() for key in ("outs", "metrics", "plots") for path in _paths(stage.get(key))
    ]
    stale = {}
    for name, stage in stages.items():
        deps = [resolve_template(root, d) for d in stage_deps(stage)]
        gone = [d for d in deps if not (root / d).exists() and not any(covers(o, d) for o in outputs)]
        if gone:
            stale[name] = gone
    return stale


def wanted_code_deps(root: Path, needed: set[str], scripts: list[str]) -> list[str]:
    """The code deps to declare: the scripts, then src files, a package directory when all of it is used.

    ``src/finch`` itself is never collapsed, so that a change to one module leaves the stages
    that do not import it alone.
    """
    top = f"{SRC}/{PACKAGE}"
    out = [s for s in dict.fromkeys(scripts) if s in needed]
    chosen: list[str] = []
    for file in sorted(f for f in needed if f not in out):
        if any(covers(c, file) for c in chosen):
            continue
        pick = file
        parents = [p.as_posix() for p in reversed(Path(file).parents)]
        for directory in parents:  # the widest package directory below src/finch that the stage uses whole
            if directory.startswith(top + "/") and all(f in needed for f in python_files_under(root, directory)):
                pick = directory
                break
        chosen.append(pick)
    return out + chosen


# ---------------------------------------------------------------------------- --write


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _is_blank_or_comment(line: str) -> bool:
    return not line.strip() or line.lstrip().startswith("#")


def _item_path(line: str) -> str:
    text = line.strip()[2:]
    text = re.sub(r"\s+#.*$", "", text).strip()
    if text.endswith(":"):
        text = text[:-1]
    return text.strip("'\"")


def _block_end(lines: list[str], start: int, indent: int) -> int:
    """End (exclusive) of the block of lines indented deeper than ``indent`` from ``start``; trailing
    blank and comment lines stay outside it."""
    end = i = start
    while i < len(lines):
        if _is_blank_or_comment(lines[i]):
            i += 1
            continue
        if _indent(lines[i]) <= indent:
            break
        i += 1
        end = i
    return end


def _stage_spans(lines: list[str]) -> dict[str, tuple[int, int, int]]:
    """Stage name → (first line of its body, end of its body, indent of its keys)."""
    top = next((i for i, line in enumerate(lines) if re.match(r"stages:\s*(#.*)?$", line)), None)
    if top is None:
        return {}
    end = _block_end(lines, top + 1, 0)
    spans = {}
    i = top + 1
    while i < end:
        line = lines[i]
        if _is_blank_or_comment(line):
            i += 1
            continue
        name_indent = _indent(line)
        name = line.strip().split(":", 1)[0].strip("'\"")
        body_end = _block_end(lines, i + 1, name_indent)
        first_key = next((j for j in range(i + 1, body_end) if not _is_blank_or_comment(lines[j])), body_end)
        key_indent = _indent(lines[first_key]) if first_key < body_end else name_indent + 2
        spans[name] = (i + 1, body_end, key_indent)
        i = body_end
    return spans


def _find_key(lines: list[str], start: int, end: int, indent: int, key: str) -> int | None:
    for j in range(start, end):
        if _indent(lines[j]) == indent and re.match(rf"{key}:(\s|$)", lines[j].lstrip()):
            return j
    return None


def _deps_items(lines: list[str], deps_line: int, end: int, key_indent: int) -> tuple[int, list[tuple[str, list[str]]]]:
    """The items of a block-style ``deps:`` list: (end of the list, [(path, its lines, comments above first)])."""
    items: list[tuple[str, list[str]]] = []
    pending: list[str] = []
    i = last = deps_line + 1
    while i < end:
        line = lines[i]
        if _is_blank_or_comment(line):
            pending.append(line)
            i += 1
            continue
        if _indent(line) < key_indent or not line.lstrip().startswith("- "):
            break
        block, pending = [*pending, line], []
        i += 1
        while i < end and not _is_blank_or_comment(lines[i]) and _indent(lines[i]) > _indent(line):
            block.append(lines[i])  # `- path:` followed by its options
            i += 1
        items.append((_item_path(line), block))
        last = i
    return last, items


def rewrite_deps(root: Path, text: str) -> tuple[str, dict[str, tuple[list[str], list[str]]]]:
    """dvc.yaml ``text`` with each stage's code deps set to what it imports.

    Returns the new text and, per changed stage, (added deps, removed deps).
    """
    stages = yaml.safe_load(text).get("stages", {}) or {}
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    changes: dict[str, tuple[list[str], list[str]]] = {}
    # bottom-up, so that the spans of the stages still to edit stay valid
    for name, (start, end, key_indent) in sorted(_stage_spans(lines).items(), key=lambda kv: -kv[1][0]):
        stage = stages.get(name)
        if not isinstance(stage, dict) or "cmd" not in stage:
            continue  # foreach/matrix stages: edit by hand
        needed, _ = stage_closure(root, stage["cmd"])
        wanted = wanted_code_deps(root, needed, script_paths(stage["cmd"])[0])
        deps_line = _find_key(lines, start, end, key_indent, "deps")
        if deps_line is not None and lines[deps_line].split(":", 1)[1].strip().startswith("["):
            print(f"{name}: flow-style deps list; edit by hand", file=sys.stderr)
            continue
        if deps_line is None:
            cmd_line = _find_key(lines, start, end, key_indent, "cmd")
            insert_at = _block_end(lines, cmd_line + 1, key_indent) if cmd_line is not None else start
            lines[insert_at:insert_at] = [" " * key_indent + "deps:\n"]
            deps_line, end = insert_at, end + 1
        list_end, items = _deps_items(lines, deps_line, end, key_indent)
        item_indent = next(
            (_indent(line) for _, b in items for line in b if line.lstrip().startswith("- ")), key_indent + 2
        )
        old = dict(items)
        new_lines: list[str] = []
        for dep in wanted:
            new_lines += old.get(dep) or [" " * item_indent + f"- {dep}\n"]
        for path, block in items:
            if not is_code(path):
                new_lines += block
        old_code = [p for p, _ in items if is_code(p)]
        if old_code != wanted:
            changes[name] = ([d for d in wanted if d not in old_code], [d for d in old_code if d not in wanted])
        lines[deps_line + 1 : list_end] = new_lines
    return "".join(lines), changes


# ---------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help="rewrite the code deps of dvc.yaml in place")
    parser.add_argument("--dvc-yaml", type=Path, default=ROOT / "dvc.yaml", help="default: %(default)s")
    args = parser.parse_args(argv)

    if args.write:
        new, changes = rewrite_deps(ROOT, args.dvc_yaml.read_text(encoding="utf-8"))
        for name, (added, removed) in reversed(changes.items()):  # rewrite_deps goes bottom-up
            print(f"{name}: rewrote deps", *[f"  + {d}" for d in added], *[f"  - {d}" for d in removed], sep="\n")
        if changes:
            args.dvc_yaml.write_text(new, encoding="utf-8")
        print(f"{args.dvc_yaml}: {len(changes)} stage(s) rewritten")

    problems = [line for name, result in check(ROOT, args.dvc_yaml).items() for line in result.describe(name)]
    stale = stale_deps(ROOT, args.dvc_yaml)
    problems += [
        f"{name}: dep {d} does not exist and no stage outputs it" for name, gone in stale.items() for d in gone
    ]
    print("\n".join(problems) if problems else "every stage's code deps match its imports")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
