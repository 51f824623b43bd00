"""One source of every default: wherever a params dataclass has a default for a field that
``params.yaml`` also sets, the two agree (``params.yaml`` is what runs; the dataclass default is
what a test or a library caller gets). Search spaces have no dataclass defaults at all."""

from __future__ import annotations

import dataclasses
import importlib
import typing
from pathlib import Path

import pytest
import yaml

from semknobs.config import to_mapping

ROOT = Path(__file__).resolve().parents[1]
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())
STAGES = sorted(
    p.stem for p in (ROOT / "src" / "semknobs" / "stages").glob("*.py") if p.stem != "__init__"
)


def _defaults(cls: type) -> dict:
    """What a caller gets without params: each field's default (a default instance as a
    mapping), or the defaults of its own dataclass when it has none."""
    out = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = to_mapping(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = to_mapping(f.default_factory())
        else:
            tp = hints[f.name]
            inner = next((a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)), tp)
            if dataclasses.is_dataclass(inner):
                out[f.name] = _defaults(inner)
    return out


def _compare(default, value, where: str) -> list[str]:
    if isinstance(value, dict) and isinstance(default, dict):
        return [
            p
            for key, v in value.items()
            if key in default
            for p in _compare(default[key], v, f"{where}.{key}")
        ]
    if default is None and isinstance(value, dict):
        return []
    return (
        []
        if _norm(default) == _norm(value)
        else [f"{where}: default {default!r} vs params.yaml {value!r}"]
    )


def _disagreements(cls: type, section: dict, where: str) -> list[str]:
    return _compare(_defaults(cls), section, where)


def _norm(value):
    if isinstance(value, (list, tuple)):
        return [_norm(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, dict):
        return {k: _norm(v) for k, v in value.items()}
    return value


@pytest.mark.parametrize("stage", STAGES)
def test_dataclass_defaults_agree_with_params_yaml(stage):
    module = importlib.import_module(f"semknobs.stages.{stage}")
    assert stage in PARAMS or stage in ("register",), f"params.yaml has no section {stage}"
    params_cls = module.Params
    fields = {f.name for f in dataclasses.fields(params_cls)}
    if set(PARAMS.get(stage, {})) <= fields:  # the section is the Params dataclass itself
        problems = _disagreements(params_cls, PARAMS[stage], stage)
    else:  # a wrapper of several sections (tuners, register): check each part
        problems = []
        hints = typing.get_type_hints(params_cls)
        for f in dataclasses.fields(params_cls):
            cls = hints[f.name]
            section = {
                "tune": PARAMS.get(stage, {}),
                "register": PARAMS.get("register", {}),
                "tile": PARAMS["tile"],
            }.get(f.name)
            if section is not None and dataclasses.is_dataclass(cls):
                problems += _disagreements(cls, section, f"{stage}:{f.name}")
    assert problems == []


def test_search_spaces_are_declared_in_params_yaml_only():
    from semknobs.train.tune_attgan import TuneAttGANParams
    from semknobs.train.tune_regressor import SearchSpace

    space = {f.name: f for f in dataclasses.fields(TuneAttGANParams)}["space"]
    for f in [*dataclasses.fields(SearchSpace), space]:
        assert f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING, f


def test_the_check_can_fail():
    @dataclasses.dataclass
    class P:
        steps: int = 2000

    assert _disagreements(P, {"steps": 3000}, "x") == ["x.steps: default 2000 vs params.yaml 3000"]
