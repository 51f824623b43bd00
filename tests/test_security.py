"""Security properties that must not regress: no unpickling, loopback-only servers by default,
names from users that cannot escape their folders."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from semknobs import cli
from semknobs.explain.files import _stem

from .conftest import ROOT

SOURCES = sorted((ROOT / "src").rglob("*.py")) + sorted((ROOT / "pipelines").glob("*.py"))


def _calls(path: Path):
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Call):
            yield node, ast.unparse(node.func)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_unpickling(path: Path) -> None:
    for call, name in _calls(path):
        keywords = {k.arg: ast.unparse(k.value) for k in call.keywords}
        where = f"{path.relative_to(ROOT)}:{call.lineno}"
        if name == "torch.load":
            assert keywords.get("weights_only") == "True", f"{where}: torch.load needs weights_only"
        if name in ("np.load", "numpy.load"):
            assert keywords.get("allow_pickle", "False") == "False", f"{where}: allow_pickle"
        assert name not in ("pickle.load", "pickle.loads", "joblib.load", "cloudpickle.load"), where


def test_servers_bind_to_loopback_by_default(monkeypatch, tmp_path) -> None:
    """`semknobs ui`, `semknobs serve` and `make ui` pass --host 127.0.0.1 unless told otherwise
    (the server processes themselves are replaced by a recorder)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    from semknobs.serving import supervise

    seen: list[list[str]] = []
    monkeypatch.setattr(supervise, "supervise", lambda argv, **kw: seen.append(argv) or 0)
    (tmp_path / "some-model-folder").mkdir()
    assert cli.main(["ui"]) == 0
    assert cli.main(["serve", "--model", str(tmp_path / "some-model-folder")]) == 0
    assert len(seen) == 2
    for argv in seen:
        assert argv[argv.index("--host") + 1] == "127.0.0.1", argv
    makefile = (ROOT / "Makefile").read_text()
    assert "--host 127.0.0.1" in makefile.split("\nui:", 1)[1].splitlines()[1]


@pytest.mark.parametrize(
    ("name", "expected"),
    [("../../etc/passwd", "passwd"), ("/abs/dir/scan 1.tif", "scan_1"), ("..", "input")],
)
def test_output_names_stay_in_the_output_folder(name: str, expected: str) -> None:
    stem = _stem(Path(name).stem, set())
    assert stem == expected and "/" not in stem and stem not in ("", ".", "..")
