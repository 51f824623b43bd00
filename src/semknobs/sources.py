"""The source files each pipeline stage runs: the import closure of ``pipelines/<stage>.py``
within the ``semknobs`` package, read from the code itself (every ``import`` statement, those
inside functions too). ``dvc.yaml`` lists exactly these as each stage's code dependencies, so
editing a module reruns every stage that imports it and no other; ``tests/test_sources.py``
fails when the two drift apart.

``python -m semknobs.sources`` prints the lists; ``--write`` puts them into ``dvc.yaml`` in
place (only the ``pipelines/`` and ``src/`` entries of each stage's ``deps``; comments, data deps
and everything else stay as they are).
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "src" / "semknobs"


def _module_file(name: str) -> Path | None:
    parts = name.split(".")[1:]
    if not parts:
        return PACKAGE / "__init__.py"
    rel = Path(*parts)
    for candidate in (PACKAGE / rel.with_suffix(".py"), PACKAGE / rel / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _runtime_nodes(tree: ast.AST):
    """Every node except those under ``if TYPE_CHECKING:`` (imports for type hints only)."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            todo += node.orelse
            continue
        todo += ast.iter_child_nodes(node)


def _imports(path: Path) -> set[str]:
    """``semknobs`` modules imported by ``path`` (``from a import b`` counts ``a`` and ``a.b``)."""
    out: set[str] = set()
    for node in _runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return {m for m in out if m == "semknobs" or m.startswith("semknobs.")}


def closure(script: Path) -> set[Path]:
    """Every ``semknobs`` source file ``script`` reaches through imports (package
    ``__init__`` files included, as Python runs them)."""
    seen: set[Path] = set()
    todo = [script]
    while todo:
        path = todo.pop()
        for name in _imports(path):
            parts = name.split(".")
            for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__
                found = _module_file(".".join(parts[:i]))
                if found is not None and found not in seen:
                    seen.add(found)
                    todo.append(found)
    return seen


def stage_sources(stage: str) -> list[str]:
    """``dvc.yaml``-style paths (repo-relative) of the script and the sources it runs."""
    script = ROOT / "pipelines" / f"{stage}.py"
    if not script.is_file():
        known = sorted(p.stem for p in (ROOT / "pipelines").glob("*.py"))
        raise ValueError(f"no stage {stage!r}: {script} does not exist (stages: {known})")
    files = {script, *closure(script)}
    return sorted(p.relative_to(ROOT).as_posix() for p in files)


def write_dvc_yaml(path: Path = ROOT / "dvc.yaml") -> None:
    """Replace each stage's code deps in ``path`` with :func:`stage_sources`, text in place."""
    header = re.compile(r"^  ([A-Za-z0-9_-]+):\s*(#.*)?$")  # a stage under `stages:`
    out: list[str] = []
    stage, in_deps = None, False
    for line in path.read_text().splitlines():
        match = header.match(line)
        if match:
            stage, in_deps = match.group(1), False
        elif stage and line.strip() == "deps:":
            out.append(line)
            out += [f"      - {src}" for src in stage_sources(stage)]
            in_deps = True
            continue
        elif in_deps:
            if not line.startswith("      - "):
                in_deps = False
            elif line.strip()[2:].startswith(("pipelines/", "src/")):
                continue
        out.append(line)
    path.write_text("\n".join(out) + "\n")


def main(argv: list[str] | None = None) -> int:
    import yaml

    argv = list(argv or [])
    if argv == ["--write"]:
        write_dvc_yaml()
        print(f"semknobs.sources: wrote the code deps of every stage into {ROOT / 'dvc.yaml'}")
        return 0
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for stage in argv or list(stages):
        try:
            paths = stage_sources(stage)
        except ValueError as exc:  # an unknown stage, or an option (usage: [STAGE ...] | --write)
            print(f"semknobs.sources: {exc}; usage: [STAGE ...] | --write", file=sys.stderr)
            return 2
        print(f"{stage}:")
        for path in paths:
            print(f"      - {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
