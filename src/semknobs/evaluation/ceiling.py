"""The meter's ceiling for concept control (synthetic studies). EVALUATION ONLY.

The AttGAN's control is judged by the attribute meter (:mod:`semknobs.evaluation.attgan`): sweep
one knob, measure the edits, rank-correlate. The meter is imperfect, so even a perfect editor
would not score 1. The ceiling runs the same sweep on *true* interventions: the renderer draws
each evaluated tile's material with one attribute set to the requested level (mapped from knob
units to true units with the label fit) and the others at the tile's true values, the pipeline
tiles it, the meter measures it. Its Spearman matrix is the best the meter can show; the
AttGAN's effect size is reported as a share of the ceiling's (``control/gain_<a>``: slope of the
measured against the requested value, AttGAN / renderer).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from semknobs.attributes import ATTRIBUTES
from semknobs.evaluation.attgan import (
    control_from_table,
    control_slopes,
    max_leakage,
    sweep_table,
)
from semknobs.evaluation.oracle import Oracle
from semknobs.meter import MeterParams, measure_tiles


@dataclass
class Ceiling:
    metrics: dict[str, float]
    matrix: pd.DataFrame
    table: pd.DataFrame


def render_sweep(
    oracle: Oracle,
    true: np.ndarray,
    k: int,
    levels: np.ndarray,
    fit: tuple[np.ndarray, np.ndarray],
    ids: np.ndarray,
) -> np.ndarray:
    """Attribute ``k`` swept over ``levels`` (knob units, mapped to true units with the label
    fit) on rendered tiles at the true attributes ``true``: tiles in (sweep, level) order, one
    sweep per (tile, position in the render)."""
    slope, intercept = fit
    t_levels = np.clip((np.asarray(levels) - intercept[k]) / slope[k], 0, 1)
    tiles = oracle.sweep(true, k, np.broadcast_to(t_levels, (len(true), len(levels))), ids)
    n, p, per = tiles.shape[:3]
    return tiles.transpose(0, 2, 1, 3, 4).reshape(n * per * p, *tiles.shape[3:])


def ceiling(
    oracle: Oracle,
    true: np.ndarray,
    fit: tuple[np.ndarray, np.ndarray],
    levels: np.ndarray,
    ids: np.ndarray,
    *,
    attgan_slopes: dict[str, float] | None = None,
    meter: MeterParams | None = None,
) -> Ceiling:
    """Sweep each attribute over ``levels`` (knob units) on rendered tiles at the true
    attributes ``true`` (n, 4); ``fit`` is the label fit ``(s, c)`` mapping knob to true units."""
    parts = []
    for k, name in enumerate(ATTRIBUTES):
        flat = render_sweep(oracle, true, k, levels, fit, ids)
        readings = measure_tiles(flat, meter or MeterParams(), n_jobs=2, progress=False)
        parts.append(sweep_table(readings, name, levels))
    table = pd.concat(parts, ignore_index=True)
    matrix = control_from_table(table)
    slopes = control_slopes(table)
    metrics = {f"control/ceiling_{a}": float(matrix.loc[a, a]) for a in ATTRIBUTES}
    metrics["control/ceiling_max_leakage"] = max_leakage(matrix)
    metrics |= {f"control/ceiling_slope_{a}": slopes[a] for a in ATTRIBUTES}
    if attgan_slopes is not None:
        for a in ATTRIBUTES:
            metrics[f"control/gain_{a}"] = (
                attgan_slopes[a] / slopes[a] if abs(slopes[a]) > 0 else float("nan")
            )
    return Ceiling(metrics, matrix, table)
