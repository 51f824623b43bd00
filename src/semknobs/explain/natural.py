"""The regressor's response to the natural variation between a lot's tiles, read by the meter: a
truth-free explanation in the concepts' language that needs no AttGAN.

Tiles of one lot differ: one field has more pores, another larger particles. ``MeterRegression``
fits, per lot, ordinary least squares of the regressor's prediction ``R(I)`` of each of the lot's
tiles on the calibrated meter's readings of the same tiles (knob units, with an intercept). The
slope vector says how the prediction moves with each measured concept across real tiles of that
lot, the other three held fixed (linearly): MPa per knob unit, like the knob gradient. Every tile
of a lot gets its lot's vector.

Why: the knobs' edits are read by the regressor at a fraction of a real change (the size edit at
about a quarter), and the knob gradient's between-lot variation does not follow the regressor's
(README, "The explanations"). Real tiles are on the regressor's manifold by construction.

What it follows: within a synthetic lot the tiles' nominal attributes hardly vary (sd 0.005
knob units against the readings' 0.11-0.15, ``benchmarks/explain_levers.md``), so the slopes
follow the regressor across the *realised* variation of a lot's tiles (which particles were
drawn), as the meter reads it. What limits it: the meter's error against that realised material
attenuates the slopes toward 0 (on the default study the mean vector is about 0.6 of the
oracle's); no truth-free split separates that error, and regression calibration by the concept
network (its readings in place of the meter's, or as instruments) moved the magnitudes toward
the oracle's but followed the regressor between lots less well on average, so it was not
adopted (same file). Readings that vary together share their effect; a concept with little
spread between a lot's tiles is estimated poorly; whatever else varies with a reading between
tiles (an unmeasured texture) is credited to it. The standard errors are the usual OLS ones,
which ignore the reading error; a slope whose 95 % interval spans zero does not settle the sign.

Not in the paper. Nothing here reads the renderer or the truth.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats
from torch import nn

from semknobs.attributes import ATTRIBUTES
from semknobs.models.regressor import predict

K = len(ATTRIBUTES)


@dataclass(frozen=True)
class MeterRegressionParams:
    """``explain.meter_regression``."""

    min_tiles: int = 10  # a lot with fewer tiles that the meter reads fully gets no slopes

    def __post_init__(self) -> None:
        if not K + 2 <= self.min_tiles <= 100_000:
            raise ValueError(
                f"meter_regression.min_tiles must be in [{K + 2}, 100000], got {self.min_tiles}"
            )


@dataclass
class LotSlopes:
    """Per lot: ``lot``, ``tiles`` (used), ``slope_<a>`` (MPa per knob unit; NaN: too few
    tiles or collinear readings), ``low_<a>``/``high_<a>`` (95 % OLS interval)."""

    table: pd.DataFrame

    def summary(self, lot: str) -> dict[str, Any]:
        """One lot's slopes per attribute with their interval, JSON-ready (NaN -> None)."""
        row = self.table.set_index("lot").loc[lot]
        out: dict[str, Any] = {"tiles": int(row["tiles"])}
        for a in ATTRIBUTES:
            values = {k: float(row[f"{k}_{a}"]) for k in ("slope", "low", "high")}
            out[a] = {k: (v if np.isfinite(v) else None) for k, v in values.items()}
        return out

    def rows(self, lots: np.ndarray | pd.Series) -> pd.DataFrame:
        """Each tile's lot's row of :attr:`table` (NaN for a lot not fitted), without ``lot``."""
        return self.table.set_index("lot").reindex(np.asarray(lots)).reset_index(drop=True)

    def per_tile(self, lots: np.ndarray | pd.Series) -> np.ndarray:
        """(n, 4): each tile's lot's slopes (NaN for a lot not fitted)."""
        return self.rows(lots)[[f"slope_{a}" for a in ATTRIBUTES]].to_numpy(float)


def lot_slopes(
    predictions: np.ndarray,
    readings: np.ndarray,
    lots: np.ndarray | pd.Series,
    params: MeterRegressionParams | None = None,
) -> LotSlopes:
    """Per-lot OLS of ``predictions`` (n,) on ``readings`` (n, 4), tiles with a NaN dropped."""
    params = params or MeterRegressionParams()
    predictions, readings = np.asarray(predictions, float), np.asarray(readings, float)
    lots = np.asarray(lots)
    if predictions.shape != lots.shape or readings.shape != (len(lots), K):
        raise ValueError(
            f"lot_slopes: {predictions.shape} predictions, {readings.shape} readings, "
            f"{lots.shape} lot ids"
        )
    usable = np.isfinite(readings).all(axis=1) & np.isfinite(predictions)
    rows = []
    for lot in dict.fromkeys(lots):
        i = np.flatnonzero((lots == lot) & usable)
        slope, half = np.full(K, np.nan), np.full(K, np.nan)
        x = np.c_[np.ones(len(i)), readings[i]]
        if len(i) >= params.min_tiles and np.linalg.matrix_rank(x) == K + 1:
            coef, *_ = np.linalg.lstsq(x, predictions[i], rcond=None)
            dof = len(i) - K - 1
            sigma2 = float(np.sum((predictions[i] - x @ coef) ** 2)) / dof
            se = np.sqrt(sigma2 * np.diag(np.linalg.inv(x.T @ x))[1:])
            slope, half = coef[1:], stats.t.ppf(0.975, dof) * se
        row = {"lot": lot, "tiles": len(i)}
        for j, a in enumerate(ATTRIBUTES):
            row |= {f"slope_{a}": slope[j], f"low_{a}": slope[j] - half[j]}
            row |= {f"high_{a}": slope[j] + half[j]}
        rows.append(row)
    return LotSlopes(pd.DataFrame(rows))


class MeterRegression:
    """Captum-shaped: ``MeterRegression(reg).attribute(tiles, readings, lots)`` for uint8 tiles
    (n, S, S); ``reg`` is a regressor with ``predict_mpa``; ``readings`` are the calibrated
    meter's (knob units). ``predictions`` (MPa) skips the regressor when already known."""

    def __init__(self, reg: nn.Module, params: MeterRegressionParams | None = None):
        self.reg = reg
        self.params = params or MeterRegressionParams()

    def attribute(
        self,
        tiles: np.ndarray,
        readings: np.ndarray,
        lots: np.ndarray | pd.Series,
        predictions: np.ndarray | None = None,
    ) -> LotSlopes:
        if predictions is None:
            predictions = predict(self.reg, tiles)
        return lot_slopes(predictions, readings, lots, self.params)
