"""Nothing that trains, tunes or explains may read the synthetic ground truth."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Evaluation code that is allowed to read the truth, and the truth module itself.
ALLOWED = {
    "src/semknobs/data/truth.py",
    "src/semknobs/explain/fidelity.py",
    "pipelines/meter.py",
    "pipelines/explain.py",
}


def _imports_truth(path: Path) -> bool:
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.endswith("data.truth"):
            return True
        if (
            isinstance(node, ast.ImportFrom)
            and node.module == "semknobs.data"
            and any(a.name == "truth" for a in node.names)
        ):
            return True
        if isinstance(node, ast.Import) and any(a.name.endswith("data.truth") for a in node.names):
            return True
    return False


def test_only_evaluation_code_imports_the_truth():
    offenders = [
        str(p.relative_to(ROOT))
        for folder in ("src", "pipelines")
        for p in (ROOT / folder).rglob("*.py")
        if str(p.relative_to(ROOT)) not in ALLOWED and _imports_truth(p)
    ]
    assert offenders == []


def test_no_stage_but_the_evaluation_ones_depends_on_truth_files():
    import yaml

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    readers = {
        name for name, s in stages.items() if any("truth" in str(d) for d in s.get("deps", []))
    }
    assert readers <= {"meter", "explain"}


def test_the_check_can_fail(tmp_path):
    bad = tmp_path / "train.py"
    bad.write_text("from semknobs.data.truth import read_truth\n")
    assert _imports_truth(bad)
