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

# "module:Class"; None: DVC's own variables (data paths), read by the stages as paths
SECTION_TYPES: dict[str, str | None] = {
    "data": None,
    "synthesize": "semknobs.data.synth:SynthParams",
    "tile": "semknobs.data.tiles:TileParams",
    "validate": "semknobs.data.quality:ValidateParams",
    "split": "semknobs.data.split:SplitParams",
    "measure": "semknobs.meter:MeasureParams",
    "check_meter": "semknobs.evaluation.meter:MeterCheckParams",
    "train_attgan": "semknobs.train.attgan_params:TrainAttGANStageParams",
    "evaluate_attgan": "semknobs.stages.evaluate_attgan:EvaluateAttGANParams",
    "tune_attgan": "semknobs.train.tune_attgan:TuneAttGANParams",
    "explain": "semknobs.stages.explain:ExplainStageParams",
    "tune_regressor": "semknobs.train.tune_regressor:TuneRegressorParams",
    "train_regressor": "semknobs.train.regressor:TrainRegressorStageParams",
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
