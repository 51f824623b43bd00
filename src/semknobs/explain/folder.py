"""The explainer bundle's folder format: ``config.json`` of a ``semknobs-explainer`` model
folder (kind ``explainer``) and the function that writes one from the AttGAN and regressor
folders. :class:`semknobs.explain.bundle.KnobExplainer` reads it back.

A bundle folder holds ``generator``, ``discriminator`` and ``regressor`` safetensors and a
``config.json`` with both models' configs, the attribute scaler, the training stress range, the
default search settings (the ``explain`` stage's, so a bundle reproduces the stage's numbers), the
tiling settings (so whole scans are tiled as the pipeline tiled them), the meter calibration and
the knob-gradient and meter-regression settings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from semknobs.config import to_mapping
from semknobs.errors import ModelError
from semknobs.explain.counterfactual import CounterfactualParams
from semknobs.explain.limits import SearchLimits
from semknobs.explain.lot_gradient import GradientSettings
from semknobs.explain.measured import MeterCalibration
from semknobs.explain.natural import MeterRegressionParams
from semknobs.model_folder import read_folder
from semknobs.models.attgan import AttGANConfig
from semknobs.models.regressor import RegressorConfig, TargetStats

KIND = "explainer"


@dataclass(frozen=True)
class AttGANPart:
    model: AttGANConfig
    scaler: dict[str, dict[str, float]]


@dataclass(frozen=True)
class RegressorPart:
    model: RegressorConfig
    target: TargetStats


@dataclass(frozen=True)
class ExplainerFolder:
    """``config.json`` of an explainer bundle folder (besides the bookkeeping entries)."""

    img_size: int
    attgan: AttGANPart
    regressor: RegressorPart
    stress_range: float  # MPa, of the training lots: the unit of ``counterfactual.delta``
    counterfactual: CounterfactualParams  # the ``explain`` stage's search settings
    tile: dict[str, Any] = field(default_factory=dict)  # the ``tile`` stage's settings
    metrics: dict[str, Any] = field(default_factory=dict)  # explain's, the AttGAN's region misses
    limits: SearchLimits = field(default_factory=SearchLimits)  # what a request may ask
    meter: MeterCalibration | None = None  # reads the edits (None in bundles before it)
    gradient: GradientSettings = field(default_factory=GradientSettings)  # lots' knob gradients
    natural: MeterRegressionParams = field(default_factory=MeterRegressionParams)  # no AttGAN


def save_explainer_dir(
    path: str | Path,
    *,
    attgan_dir: str | Path,
    regressor_dir: str | Path,
    stress_range: float,
    counterfactual: CounterfactualParams,
    tile: dict[str, Any],
    metrics: dict[str, float] | None = None,
    limits: SearchLimits | None = None,
    meter: MeterCalibration | None = None,
    gradient: GradientSettings | None = None,
    natural: MeterRegressionParams | None = None,
) -> Path:
    """Write a bundle folder from the AttGAN and regressor model folders."""
    from semknobs.model_folder import save_model_dir
    from semknobs.serving import attgan_model, regressor_model

    gan_dir, reg_dir = Path(attgan_dir), Path(regressor_dir)
    gan = read_folder(gan_dir, attgan_model.AttGANFolder, kind=attgan_model.KIND)
    reg = read_folder(reg_dir, regressor_model.RegressorFolder, kind=regressor_model.KIND)
    if gan.img_size != reg.img_size:
        raise ModelError(
            f"{gan_dir} edits {gan.img_size}-px tiles but {reg_dir} scores {reg.img_size}-px tiles"
        )
    weights = {
        "generator": attgan_model.build(gan_dir, gan, "generator"),
        "discriminator": attgan_model.build(gan_dir, gan, "discriminator"),
        "regressor": regressor_model.build(reg_dir, reg.model, reg.target),
    }
    config = ExplainerFolder(
        img_size=gan.img_size,
        attgan=AttGANPart(gan.model, gan.scaler),
        regressor=RegressorPart(reg.model, reg.target),
        stress_range=float(stress_range),
        counterfactual=counterfactual,
        tile=tile,
        metrics=metrics or {},
        limits=limits or SearchLimits(),
        meter=meter,
        gradient=gradient or GradientSettings(),
        natural=natural or MeterRegressionParams(),
    )
    return save_model_dir(path, kind=KIND, weights=weights, config=to_mapping(config))
