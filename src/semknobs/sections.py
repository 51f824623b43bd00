"""Every ``params.yaml`` section and the dataclass its stage parses it with, so that a params
overlay (a study of ``semknobs.science``, an editor run) is checked before the minutes of work
it configures rather than by the stage that meets it.

Its own module, not ``semknobs.config``: the stages import ``config``, so DVC lists it among
their dependencies, and this table would otherwise rerun every stage each time it grows.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from semknobs.config import from_mapping
from semknobs.errors import ParamsError

# "module:Class": the stage module's own ``Params`` where that is the section's dataclass (so
# the two cannot drift apart), else the dataclass the stage parses the section with; None: DVC's
# own variables (data paths), read by the stages as paths
SECTION_TYPES: dict[str, str | None] = {
    "data": None,
    "synthesize": "semknobs.stages.synthesize:Params",
    "tile": "semknobs.stages.tile:Params",
    "validate": "semknobs.stages.validate:Params",
    "split": "semknobs.stages.split:Params",
    "measure": "semknobs.stages.measure:Params",
    "check_meter": "semknobs.stages.check_meter:Params",
    "train_attgan": "semknobs.stages.train_attgan:Params",
    "evaluate_attgan": "semknobs.stages.evaluate_attgan:Params",
    "tune_attgan": "semknobs.train.tune_attgan:TuneAttGANParams",
    "explain": "semknobs.stages.explain:Params",
    "tune_regressor": "semknobs.train.tune_regressor:TuneRegressorParams",
    "train_regressor": "semknobs.stages.train_regressor:Params",
    "register": "semknobs.stages.register:RegisterParams",
    "promote": "semknobs.lifecycle.promote:PromoteParams",
}


def check_sections(params: Mapping[str, Any], names: list[str], where: str) -> None:
    """Parse each named section of ``params`` with its stage's dataclass (strictly), refusing a
    section params.yaml does not have; ``where`` names the file at fault in the error."""
    for name in names:
        if name not in SECTION_TYPES:
            known = ", ".join(SECTION_TYPES)
            raise ParamsError(f"{where}: unknown section {name!r} (params.yaml has: {known})")
        target = SECTION_TYPES[name]
        if target is None:
            continue
        module, cls = target.split(":")
        from_mapping(
            getattr(importlib.import_module(module), cls), params.get(name), f"{where}: {name}"
        )
