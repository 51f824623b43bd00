"""Nothing that trains, tunes or explains may read the synthetic ground truth or the renderer:
on real SEM data neither exists. Checked on the import graph (transitively), not by name."""

from __future__ import annotations

import ast
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"

# What only evaluation may touch: the truth files, the renderer and the referee built on it.
EVALUATION_ONLY = {
    "semknobs.data.truth",
    "semknobs.data.render",
    "semknobs.data.synth",
    "semknobs.evaluation.oracle",
    "semknobs.evaluation.referee",
    "semknobs.evaluation.ceiling",
}
# Code that trains, tunes, explains or serves (packages, modules and stage scripts).
MUST_NOT_SEE = [
    "semknobs.train",
    "semknobs.models",
    "semknobs.explain",
    "semknobs.serving",
    "semknobs.lifecycle",
    "semknobs.registry",
    "semknobs.cli",
    "semknobs.meter",
]
TRAINING_STAGES = [
    f"semknobs.stages.{s}"
    for s in (
        "train_attgan",
        "train_regressor",
        "tune_attgan",
        "tune_regressor",
        "register",
        "measure",
        "tile",
        "validate",
        "split",
    )
]
MUST_NOT_SEE += TRAINING_STAGES
SCRIPTS = [
    "train_attgan",
    "train_regressor",
    "tune_attgan",
    "tune_regressor",
    "register",
    "measure",
    "tile",
    "validate",
    "split",
]
# The evaluation stages, allowed to read it.
TRUTH_STAGES = {"check_meter", "explain", "evaluate_attgan"}


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return {m for m in out if m.startswith("semknobs")}


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in SRC.rglob("*.py")}
    return {name: {m for m in _imports(p) if m in modules} for name, p in modules.items()}


def _closure(start: set[str], graph: dict[str, set[str]]) -> set[str]:
    seen, todo = set(), list(start)
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        todo += graph.get(m, ())
    return seen


def test_nothing_that_trains_or_explains_reaches_the_truth_or_the_renderer():
    graph = _graph()
    offenders = {}
    for name in graph:
        if any(name == p or name.startswith(p + ".") for p in MUST_NOT_SEE):
            bad = _closure({name}, graph) & EVALUATION_ONLY
            if bad:
                offenders[name] = sorted(bad)
    for script in SCRIPTS:
        path = ROOT / "pipelines" / f"{script}.py"
        bad = _closure(_imports(path), graph) & EVALUATION_ONLY
        if bad:
            offenders[f"pipelines/{script}.py"] = sorted(bad)
    assert offenders == {}


def test_no_stage_but_the_evaluation_ones_depends_on_truth_files():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    readers = {
        name for name, s in stages.items() if any("truth" in str(d) for d in s.get("deps", []))
    }
    assert readers <= TRUTH_STAGES


def test_the_check_can_fail(tmp_path):
    graph = _graph()
    # a module that reaches the renderer through two hops is caught
    graph["semknobs.train.fake"] = {"semknobs.evaluation.referee"}
    assert "semknobs.data.render" in _closure({"semknobs.train.fake"}, graph)
    bad = tmp_path / "train.py"
    bad.write_text("from semknobs.data.truth import read_truth\n")
    assert "semknobs.data.truth" in _imports(bad)
