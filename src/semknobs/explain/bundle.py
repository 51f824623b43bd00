"""The explainer bundle: AttGAN + regressor + the Eq. 2 knob search as one model folder.

This is what ``semknobs-explainer`` serves and ``semknobs explain`` runs; the folder it loads
from is :mod:`semknobs.explain.folder`'s format.

Starting attributes: when the caller gives a tile's attributes (expert scores on the label scale,
e.g. its lot's labels) they are normalised with the AttGAN's scaler and clipped to [0, 1], as the
``explain`` stage does. Without them, the bundle's calibrated meter reads them off the tile (knob
units; an attribute it cannot read starts mid-range); bundles without a meter fall back to the
AttGAN discriminator's attribute head. Either estimate is a departure from the paper, which always
starts from known lot attributes; the output says which was used (``attributes_from``). What one
request may ask is bounded by :mod:`semknobs.explain.limits`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from semknobs.attributes import ATTRIBUTES, AttributeScaler
from semknobs.evaluation.fidelity import cosine
from semknobs.explain.counterfactual import (
    CounterfactualParams,
    CounterfactualResult,
    KnobCounterfactual,
    check_deadline,
)
from semknobs.explain.folder import KIND, ExplainerFolder
from semknobs.explain.limits import SearchLimits, search_params
from semknobs.explain.lot_gradient import GradientSettings, LotGradient, lot_gradient
from semknobs.explain.measured import MeterCalibration
from semknobs.explain.natural import LotSlopes, MeterRegression, MeterRegressionParams
from semknobs.model_folder import read_folder
from semknobs.pixels import model_to_uint8, to_model, to_uint8


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
        limits: SearchLimits | None = None,
        meter: MeterCalibration | None = None,
        gradient: GradientSettings | None = None,
        natural: MeterRegressionParams | None = None,
        metrics: Mapping[str, Any] | None = None,
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
        self.limits = limits or SearchLimits()
        self.meter = meter
        self.gradient = gradient or GradientSettings()
        self.natural = natural or MeterRegressionParams()
        self.metrics = dict(metrics or {})  # the explain run's and the AttGAN's region misses
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
            limits=config.limits,
            meter=config.meter,
            gradient=config.gradient,
            natural=config.natural,
            metrics=config.metrics,
            **kwargs,
        )

    @classmethod
    def load(cls, model_uri_or_dir: str | Path, **kwargs: Any) -> KnobExplainer:
        """From a bundle folder or a registered/logged ``semknobs-explainer`` model."""
        from semknobs.registry import local_model_dir

        with local_model_dir(model_uri_or_dir) as folder:
            return cls.from_folder(folder, **kwargs)

    def settings(self, **changes: Any) -> CounterfactualParams:
        """The bundle's search defaults with ``changes`` (see :func:`search_params`), checked
        against the bundle's limits."""
        return search_params(
            self.defaults, limits=self.limits, stress_range=self.stress_range, **changes
        )

    def to_tensor(self, tiles: np.ndarray) -> torch.Tensor:
        """uint8 (n, S, S) -> float (n, 1, S, S) in [-1, 1]; checks the shape."""
        tiles = np.asarray(tiles)
        size = self.img_size
        if tiles.dtype != np.uint8 or tiles.ndim != 3 or tiles.shape[1:] != (size, size):
            raise ValueError(
                f"tiles must be uint8 (n, {size}, {size}), got {tiles.dtype} {tiles.shape}"
            )
        return to_model(tiles)

    def read_meter(self, tiles: np.ndarray) -> np.ndarray | None:
        """The calibrated meter's readings of uint8 tiles (n, 4), knob units; None without a
        meter. Callers that need them more than once pass them on as ``readings``."""
        return None if self.meter is None else self.meter.read(np.asarray(tiles))

    def start_attributes(
        self,
        images: torch.Tensor,
        attributes: np.ndarray | None,
        readings: np.ndarray | None = None,
    ) -> tuple[torch.Tensor, str]:
        """Normalised starting attributes (n, 4) and where they came from (``readings``: the
        meter's, when already read)."""
        if attributes is not None:
            given = np.asarray(attributes, dtype=float)
            if given.shape != (len(images), len(ATTRIBUTES)) or not np.isfinite(given).all():
                raise ValueError(
                    f"attributes must be finite, shape ({len(images)}, {len(ATTRIBUTES)}) in the "
                    f"order {', '.join(ATTRIBUTES)}, got {given.shape}"
                )
            return torch.from_numpy(np.clip(self.scaler.transform(given), 0, 1)).float(), "given"
        if self.meter is not None:  # the calibrated meter: knob units; no reading -> middle
            measured = self.meter.read(to_uint8(images)) if readings is None else readings
            measured = np.where(np.isfinite(measured), measured, 0.5)
            return torch.from_numpy(np.clip(measured, 0, 1)).float(), "measured"
        if self.dis is None:
            raise ValueError("attributes not given and no meter or discriminator to estimate them")
        logits = in_batches(lambda x: self.dis(x)[1], images, self.batch_size)
        return torch.sigmoid(logits).float(), "estimated"

    def check_tiles(self, tiles: np.ndarray) -> torch.Tensor:
        """1 to ``limits.max_tiles`` uint8 tiles -> the model's input."""
        if len(tiles) == 0:
            raise ValueError("no tiles to explain")
        if len(tiles) > self.limits.max_tiles:
            raise ValueError(
                f"{len(tiles)} tiles in one request; at most {self.limits.max_tiles} "
                "(explain.limits.max_tiles)"
            )
        return self.to_tensor(tiles)

    def knob_gradient(
        self,
        tiles: np.ndarray,
        attributes: np.ndarray | None = None,
        lots: Sequence[str] | None = None,
        deadline: float | None = None,
        readings: np.ndarray | None = None,
    ) -> LotGradient:
        """Each lot's knob gradient, gain-corrected, with what its edits did
        (:mod:`semknobs.explain.lot_gradient`); ``lots`` names each tile's lot (default: all
        tiles are one lot, e.g. one scan). Starting attributes as in :meth:`attribute`.

        The SmoothGrad draws are drawn for the whole call (as the ``explain`` stage draws them),
        so a tile's gradient depends a little on which tiles it is explained with."""
        images = self.check_tiles(tiles)
        attrs, _ = self.start_attributes(images, attributes, readings)
        names = ["all"] * len(images) if lots is None else lots
        return lot_gradient(
            self.gen, self.reg, images, attrs, names, self.gradient, meter=self.meter,
            scaler=self.scaler, batch_size=self.batch_size, deadline=deadline,
        )  # fmt: skip

    def meter_regression(
        self,
        tiles: np.ndarray,
        lots: Sequence[str] | None = None,
        *,
        readings: np.ndarray | None = None,
        predictions: np.ndarray | None = None,
        deadline: float | None = None,
    ) -> LotSlopes | None:
        """Each lot's predictions regressed on its tiles' meter readings
        (:mod:`semknobs.explain.natural`; no AttGAN); None without a meter in the bundle.
        ``readings`` / ``predictions`` (R(I), MPa) when already known; the meter reads nothing
        when no lot has ``min_tiles`` tiles."""
        if self.meter is None:
            return None
        self.check_tiles(tiles)
        names = np.asarray(["all"] * len(tiles) if lots is None else list(lots))
        if readings is None:
            check_deadline(deadline, "the meter regression")
            readings = (
                self.meter.read(np.asarray(tiles))
                if np.unique(names, return_counts=True)[1].max() >= self.natural.min_tiles
                else np.full((len(tiles), len(ATTRIBUTES)), np.nan)
            )
        return MeterRegression(self.reg.reg, self.natural).attribute(
            np.asarray(tiles), readings, names, predictions
        )

    def attribute(
        self,
        tiles: np.ndarray,
        attributes: np.ndarray | None = None,
        params: CounterfactualParams | None = None,
        deadline: float | None = None,
    ) -> Explanation:
        """Solve Eq. 2 for every tile (batched as the ``explain`` stage does); ``deadline`` (a
        ``time.monotonic()`` instant) stops it with
        :class:`~semknobs.explain.counterfactual.SearchDeadline`.

        Table columns: ``prediction_mpa`` R(I), ``baseline_mpa`` R(G(I; A)), ``target_mpa``,
        ``achieved_mpa`` R(G(I; A')), ``distance``, ``success``, ``attributes_from`` (given,
        measured by the calibrated meter, or estimated by the discriminator in old bundles), and
        per attribute: ``start_<a>``, ``new_<a>`` and ``change_<a>`` on the label scale (the
        experts' scores), ``knob_delta_<a>`` the requested change in knob units (share of the
        training lots' range) and, with a meter in the bundle, ``measured_delta_<a>`` what the
        meter reads the edit changed, knob units (NaN: no reading), plus ``measured_cosine``
        between requested and measured change (1: the edit did what was asked; low: leakage).
        """
        (out,) = self.attribute_all(tiles, attributes, [params or self.defaults], deadline)
        return out

    def attribute_all(
        self,
        tiles: np.ndarray,
        attributes: np.ndarray | None,
        searches: Sequence[CounterfactualParams],
        deadline: float | None = None,
        readings: np.ndarray | None = None,
    ) -> list[Explanation]:
        """:meth:`attribute` for several searches of the same tiles (``semknobs explain``:
        higher and lower). What does not depend on the search is done once: the checks, the
        starting knobs, R(I) and the meter's reading of the reconstruction G(I; A)."""
        for params in searches:
            self.limits.check(params, self.stress_range)
        images = self.check_tiles(tiles)
        attrs, source = self.start_attributes(images, attributes, readings)
        direct = in_batches(self.reg, images, self.batch_size).numpy()
        recon_reading = None
        out = []
        for params in searches:
            res = self.search.attribute_batched(images, attrs, params, self.batch_size, deadline)
            measured = None
            if self.meter is not None:
                if recon_reading is None:  # G(I; A): the same for every search
                    recon_reading = self.meter.read(model_to_uint8(res.recon[:, 0]))
                measured = self.meter.read(model_to_uint8(res.edited[:, 0])) - recon_reading
            out.append(Explanation(self._table(res, direct, source, measured), res))
        return out

    def _table(
        self,
        res: CounterfactualResult,
        direct: np.ndarray,
        source: str,
        measured: np.ndarray | None,
    ) -> pd.DataFrame:
        start = self.scaler.inverse(res.attrs)
        new = self.scaler.inverse(res.new_attrs)
        table = pd.DataFrame(
            {
                "prediction_mpa": direct,
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
            table[f"new_{a}"] = new[:, j]
            table[f"change_{a}"] = new[:, j] - start[:, j]
            table[f"knob_delta_{a}"] = res.delta_attrs[:, j]
            if measured is not None:
                table[f"measured_delta_{a}"] = measured[:, j]
        if measured is not None:
            table["measured_cosine"] = _cosine_rows(res.delta_attrs, measured)
        return table


def _cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row cosines over the attributes both give (NaN readings left out; NaN for a zero row)."""
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = np.where(ok, a, 0.0), np.where(ok, b, 0.0)
    defined = (np.linalg.norm(a, axis=1) > 0) & (np.linalg.norm(b, axis=1) > 0)
    return np.where(defined, cosine(a, b), np.nan)
