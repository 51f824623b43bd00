"""The explainer bundle: AttGAN + regressor + the Eq. 2 knob search as one model folder.

This is what ``semknobs-explainer`` serves and ``semknobs explain`` runs. A bundle folder (kind
``explainer``) holds ``generator``, ``discriminator`` and ``regressor`` safetensors and a
``config.json`` with both models' configs, the attribute scaler, the training stress range, the
default search settings (the ``explain`` stage's, so a bundle reproduces the stage's numbers) and
the tiling settings (so whole scans are tiled as the pipeline tiled them).

Starting attributes: when the caller gives a tile's attributes (expert scores on the label scale,
e.g. its lot's labels) they are normalised with the AttGAN's scaler and clipped to [0, 1], as the
``explain`` stage does. Without them, the AttGAN discriminator's attribute head estimates them
(``sigmoid`` of its logits; it was trained on the real tiles' normalised labels). That estimate is
a departure from the paper, which always starts from known lot attributes; the output says which
was used (``attributes_from``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from semknobs.attributes import ATTRIBUTES, AttributeScaler
from semknobs.config import to_mapping
from semknobs.errors import ModelError
from semknobs.explain.counterfactual import (
    CounterfactualParams,
    CounterfactualResult,
    KnobCounterfactual,
)
from semknobs.model_folder import read_folder
from semknobs.models.attgan import AttGANConfig
from semknobs.models.regressor import RegressorConfig, TargetStats
from semknobs.pixels import to_model

KIND = "explainer"
TARGETS = ("higher", "lower")


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
    metrics: dict[str, Any] = field(default_factory=dict)


class StressInMPa(nn.Module):
    """A regressor whose ``forward`` is standardised, seen through ``predict_mpa``."""

    def __init__(self, reg: nn.Module):
        super().__init__()
        self.reg = reg

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.reg.predict_mpa(x)


def in_batches(
    fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, batch_size: int
) -> torch.Tensor:
    """``fn`` over ``x`` in batches, without gradients, concatenated."""
    with torch.no_grad():
        return torch.cat([fn(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])


@dataclass
class Explanation:
    table: pd.DataFrame  # one row per tile, columns as in KnobExplainer.attribute
    result: CounterfactualResult  # the raw search result (edited images included)


def search_params(
    defaults: CounterfactualParams,
    *,
    target: str | float | None = None,
    **overrides: Any,
) -> CounterfactualParams:
    """``defaults`` with ``target`` ("higher", "lower" or a stress in MPa) and other fields set.

    ``None`` values are ignored, so callers can pass optional arguments straight through.
    """
    changes = {k: v for k, v in overrides.items() if v is not None}
    unknown = set(changes) - {f.name for f in dataclasses.fields(CounterfactualParams)}
    if unknown:
        raise ValueError(f"unknown search settings: {sorted(unknown)}")
    if target is not None:
        text = str(target).strip().lower()
        if text in TARGETS:
            changes["target"] = text
        else:
            try:
                changes |= {"target": "value", "value": float(text)}
            except ValueError:
                raise ValueError(
                    f"target must be 'higher', 'lower' or a stress in MPa, got {target!r}"
                ) from None
    for name in ("steps", "restarts", "p"):
        if name in changes:
            changes[name] = int(changes[name])
    params = dataclasses.replace(defaults, **changes)
    if params.steps < 1 or params.restarts < 1 or params.lam < 0 or params.p not in (1, 2):
        raise ValueError("need steps >= 1, restarts >= 1, lam >= 0 and p in (1, 2)")
    return params


class KnobExplainer:
    """Captum-shaped: ``KnobExplainer(gen, reg, ...).attribute(tiles, attributes, params)``.

    ``gen``: AttGAN generator; ``reg``: regressor with ``predict_mpa``; ``dis``: AttGAN
    discriminator, used only to estimate starting attributes that are not given.
    """

    def __init__(
        self,
        gen: nn.Module,
        reg: nn.Module,
        *,
        scaler: AttributeScaler,
        stress_range: float,
        defaults: CounterfactualParams,
        dis: nn.Module | None = None,
        img_size: int = 64,
        tile: dict[str, Any] | None = None,
        batch_size: int = 64,
    ):
        self.gen = gen.eval()
        self.reg = StressInMPa(reg).eval()
        self.dis = dis.eval() if dis is not None else None
        self.scaler = scaler
        self.stress_range = float(stress_range)
        self.defaults = defaults
        self.img_size = int(img_size)
        self.tile = dict(tile or {})
        self.batch_size = int(batch_size)
        self.search = KnobCounterfactual(self.gen, self.reg, stress_range=self.stress_range)

    @classmethod
    def from_folder(cls, folder: str | Path, **kwargs: Any) -> KnobExplainer:
        from semknobs.serving import attgan_model, regressor_model

        folder = Path(folder)
        config = read_folder(folder, ExplainerFolder, kind=KIND)
        gan = attgan_model.AttGANFolder(config.attgan.model, config.attgan.scaler, config.img_size)
        return cls(
            attgan_model.build(folder, gan, "generator"),
            regressor_model.build(folder, config.regressor.model, config.regressor.target),
            dis=attgan_model.build(folder, gan, "discriminator"),
            scaler=AttributeScaler.from_dict(config.attgan.scaler),
            stress_range=config.stress_range,
            defaults=config.counterfactual,
            img_size=config.img_size,
            tile=config.tile,
            **kwargs,
        )

    @classmethod
    def load(cls, model_uri_or_dir: str | Path, **kwargs: Any) -> KnobExplainer:
        """From a bundle folder or a registered/logged ``semknobs-explainer`` model."""
        from semknobs.registry import local_model_dir

        with local_model_dir(model_uri_or_dir) as folder:
            return cls.from_folder(folder, **kwargs)

    def to_tensor(self, tiles: np.ndarray) -> torch.Tensor:
        """uint8 (n, S, S) -> float (n, 1, S, S) in [-1, 1]; checks the shape."""
        tiles = np.asarray(tiles)
        size = self.img_size
        if tiles.dtype != np.uint8 or tiles.ndim != 3 or tiles.shape[1:] != (size, size):
            raise ValueError(
                f"tiles must be uint8 (n, {size}, {size}), got {tiles.dtype} {tiles.shape}"
            )
        return to_model(tiles)

    def start_attributes(
        self, images: torch.Tensor, attributes: np.ndarray | None
    ) -> tuple[torch.Tensor, str]:
        """Normalised starting attributes (n, 4) and where they came from."""
        if attributes is not None:
            given = np.asarray(attributes, dtype=float)
            if given.shape != (len(images), len(ATTRIBUTES)) or not np.isfinite(given).all():
                raise ValueError(
                    f"attributes must be finite, shape ({len(images)}, {len(ATTRIBUTES)}) in the "
                    f"order {', '.join(ATTRIBUTES)}, got {given.shape}"
                )
            return torch.from_numpy(np.clip(self.scaler.transform(given), 0, 1)).float(), "given"
        if self.dis is None:
            raise ValueError("attributes not given and no discriminator to estimate them")
        logits = in_batches(lambda x: self.dis(x)[1], images, self.batch_size)
        return torch.sigmoid(logits).float(), "estimated"

    def attribute(
        self,
        tiles: np.ndarray,
        attributes: np.ndarray | None = None,
        params: CounterfactualParams | None = None,
    ) -> Explanation:
        """Solve Eq. 2 for every tile (batched as the ``explain`` stage does).

        Table columns: ``prediction_mpa`` R(I), ``baseline_mpa`` R(G(I; A)), ``target_mpa``,
        ``achieved_mpa`` R(G(I; A')), ``distance``, ``success``, ``attributes_from``, per
        attribute ``start_<a>`` (label scale), ``delta_<a>`` (knob units: share of the observed
        range, as in the ``explain`` stage) and ``new_<a>`` (label scale).
        """
        params = params or self.defaults
        images = self.to_tensor(tiles)
        attrs, source = self.start_attributes(images, attributes)
        direct = in_batches(self.reg, images, self.batch_size)
        res = self.search.attribute_batched(images, attrs, params, self.batch_size)
        start = self.scaler.inverse(res.attrs)
        new = self.scaler.inverse(res.new_attrs)
        table = pd.DataFrame(
            {
                "prediction_mpa": direct.numpy(),
                "baseline_mpa": res.baseline,
                "target_mpa": res.target,
                "achieved_mpa": res.achieved,
                "distance": res.distance,
                "success": res.success.astype(bool),
                "attributes_from": source,
            }
        )
        for j, a in enumerate(ATTRIBUTES):
            table[f"start_{a}"] = start[:, j]
            table[f"delta_{a}"] = res.delta_attrs[:, j]
            table[f"new_{a}"] = new[:, j]
        return Explanation(table, res)


def save_explainer_dir(
    path: str | Path,
    *,
    attgan_dir: str | Path,
    regressor_dir: str | Path,
    stress_range: float,
    counterfactual: CounterfactualParams,
    tile: dict[str, Any],
    metrics: dict[str, float] | None = None,
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
    )
    return save_model_dir(path, kind=KIND, weights=weights, config=to_mapping(config))
