"""DVC deps that cannot go stale: every stage of dvc.yaml lists exactly the source files it
runs (the import closure of its script), so editing a module reruns the stages that import it.
The end-to-end half (edit a module in a scratch clone, `dvc status`) is in test_pipeline_e2e."""

from __future__ import annotations

import pytest
import yaml

from semknobs.sources import closure, stage_sources

from .conftest import ROOT

STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def _code_deps(stage: dict) -> set[str]:
    return {d for d in stage.get("deps", []) if d.startswith(("src/", "pipelines/"))}


def test_every_stage_lists_exactly_the_sources_it_runs():
    drift = {}
    for name, stage in STAGES.items():
        listed, actual = _code_deps(stage), set(stage_sources(name))
        if listed != actual:
            drift[name] = {"missing": sorted(actual - listed), "stale": sorted(listed - actual)}
    assert drift == {}, "update dvc.yaml: `python -m semknobs.sources --write`"


def test_every_stage_script_is_a_stage_and_vice_versa():
    scripts = {p.stem for p in (ROOT / "pipelines").glob("*.py")}
    modules = {p.stem for p in (ROOT / "src/semknobs/stages").glob("*.py")} - {"__init__"}
    assert scripts == set(STAGES) == modules


def test_the_closure_follows_imports_inside_functions_but_not_type_hints(tmp_path):
    script = tmp_path / "s.py"
    script.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from semknobs.data.split import Splits\n"
        "def f():\n    from semknobs.pixels import to_model\n"
    )
    found = {p.name for p in closure(script)}
    assert "pixels.py" in found and "split.py" not in found and "__init__.py" in found


def test_an_unknown_stage_is_named_in_the_error() -> None:
    with pytest.raises(ValueError, match=r"no stage 'meter'.*check_meter"):
        stage_sources("meter")


def test_an_unknown_stage_is_a_clear_error_not_a_traceback(capsys):
    from semknobs.sources import main

    assert main(["--help"]) == 2
    err = capsys.readouterr().err
    assert "no stage '--help'" in err and "usage: [STAGE ...] | --write" in err
