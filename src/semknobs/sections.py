"""Every ``params.yaml`` section and the dataclass its stage parses it with, so that a params
overlay (a study of ``semknobs.science``, an editor run) is checked before the minutes of work
it configures rather than by the stage that meets it.

Its own module, not ``semknobs.config``: the stages import ``config``, so DVC lists it among
their dependencies, and this table would otherwise rerun every stage each time it grows.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from collections.abc import Mapping
from typing import Any

from semknobs.config import from_mapping
from semknobs.errors import ParamsError

# The sections whose dataclass is not their stage module's ``Params`` (``semknobs.stages.<name>``,
# the stage contract): that ``Params`` holds the section and more, or there is no stage.
# "module:Class"; None: DVC's own variables (data paths), read by the stages as paths.
OTHER_SECTIONS: dict[str, str | None] = {
    "data": None,
    "tune_attgan": "semknobs.train.tune_attgan:TuneAttGANParams",
    "tune_regressor": "semknobs.train.tune_regressor:TuneRegressorParams",
    "register": "semknobs.stages.register:RegisterParams",
    "promote": "semknobs.lifecycle.promote:PromoteParams",
}


@functools.cache
def stage_names() -> tuple[str, ...]:
    """The stage modules' names (``semknobs.stages.<name>``), without importing them; listed
    once per process (every section of every study asks)."""
    import semknobs.stages

    return tuple(sorted(m.name for m in pkgutil.iter_modules(semknobs.stages.__path__)))


def section_type(name: str, where: str = "params.yaml") -> type | None:
    """The dataclass section ``name`` is parsed with (None: not a dataclass section); an unknown
    section is a ParamsError naming ``where``."""
    if name in OTHER_SECTIONS:
        target = OTHER_SECTIONS[name]
        if target is None:
            return None
        module, cls = target.split(":")
        return getattr(importlib.import_module(module), cls)
    stages = stage_names()
    if name not in stages:
        known = ", ".join(sorted({*stages, *OTHER_SECTIONS}))
        raise ParamsError(f"{where}: unknown section {name!r} (params.yaml has: {known})")
    return importlib.import_module(f"semknobs.stages.{name}").Params


def check_sections(params: Mapping[str, Any], names: list[str], where: str) -> None:
    """Parse each named section of ``params`` with its stage's dataclass (strictly), refusing a
    section params.yaml does not have; ``where`` names the file at fault in the error."""
    for name in names:
        cls = section_type(name, where)
        if cls is not None:
            from_mapping(cls, params.get(name), f"{where}: {name}")
