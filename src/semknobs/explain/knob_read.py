"""How strongly the regressor reads each knob's edits, against real tiles, without any truth.

Per knob ``k``, ``read_k = mean over lots of the knob gradient's lot mean / mean over lots of the
meter regression's slope`` (both MPa per knob unit: the knob gradient says how the prediction
moves with the edit, the meter regression how it moves with the same concept across a lot's real
tiles, :mod:`semknobs.explain.natural`). A read near or above 1 says the edits are read at least
as strongly as real material varying by that much; a low or negative read says the regressor
barely follows (or reverses) the knob's edits, and the knob gradient's sign for that attribute
deserves little trust.

Why this and not the oracle's read: the renderer's read (the regressor's slope on a knob's edits
over its slope on true interventions, ``benchmarks/concept_leak.py``) needs the truth. Over 21
editors of the study suite this estimate ranks with it at Spearman 0.81 (within a knob 0.74-0.92)
and with the held-out sign at 0.57; of the 11 editor-knob pairs it puts below 0.3, 9 had a
held-out sign accuracy below 0.7 (``benchmarks/truth_free_read_rules.md``, Rule J). Its level is
not calibrated: the meter's reading error attenuates the real-tile slope (about 0.6 of the
oracle's on the default study), so the estimate runs 1.5-3.6 times the renderer's read. Read it
as a ranking and a low-read alarm (``explain.knob_read.min_read``), not as a ratio to quote.

Not in the paper. Nothing here reads the renderer or the truth.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from semknobs.attributes import ATTRIBUTES


@dataclass(frozen=True)
class KnobReadParams:
    """``explain.knob_read``."""

    min_read: float = 0.3  # a knob whose read is below this is reported as low

    def __post_init__(self) -> None:
        if not (math.isfinite(self.min_read) and -10 <= self.min_read <= 10):
            raise ValueError(f"knob_read.min_read must be in [-10, 10], got {self.min_read}")


def knob_read(
    gradients: pd.DataFrame, slopes: pd.DataFrame, params: KnobReadParams | None = None
) -> pd.DataFrame:
    """One row per attribute: ``knob_gradient`` and ``meter_regression`` (their means over the
    lots with a slope for it, MPa per knob unit), ``lots`` (how many), ``read`` (their ratio; NaN
    without such a lot or with a zero mean slope) and ``low`` (``read < min_read``; a NaN read is
    low: nothing backs the knob).

    ``gradients``: the knob gradient per tile (``lot`` and ``gradient_<attribute>`` columns,
    the explain stage's ``knob_gradient.csv``), averaged per lot first so that every lot counts
    once; ``slopes``: the meter regression's table (one row per lot: ``lot``,
    ``slope_<attribute>``, NaN for a lot without slopes; ``meter_regression.csv``). Both means
    run over the same lots, so a lot the meter could not regress does not tip the ratio.
    """
    params = params or KnobReadParams()
    columns = [f"gradient_{a}" for a in ATTRIBUTES]
    missing = [c for c in ["lot", *columns] if c not in gradients]
    missing += [c for c in ["lot", *(f"slope_{a}" for a in ATTRIBUTES)] if c not in slopes]
    if missing:
        raise ValueError(f"knob_read: missing columns {missing}")
    per_lot = gradients.groupby("lot")[columns].mean()
    by_lot = slopes.set_index("lot")
    rows = []
    for a in ATTRIBUTES:
        slope = by_lot[f"slope_{a}"].dropna()
        lots = per_lot.index.intersection(slope.index)
        gradient = float(per_lot.loc[lots, f"gradient_{a}"].mean()) if len(lots) else np.nan
        mean_slope = float(slope.loc[lots].mean()) if len(lots) else np.nan
        read = gradient / mean_slope if np.isfinite(mean_slope) and mean_slope != 0 else np.nan
        rows.append(
            {
                "attribute": a,
                "knob_gradient": gradient,
                "meter_regression": mean_slope,
                "lots": len(lots),
                "read": read,
                "low": bool(not np.isfinite(read) or read < params.min_read),
            }
        )
    return pd.DataFrame(rows)


def from_reports(reports: Path, params: KnobReadParams | None = None) -> pd.DataFrame:
    """:func:`knob_read` of a finished explain run, from its ``knob_gradient.csv`` and
    ``meter_regression.csv`` in ``reports`` (e.g. ``reports/explain``)."""
    files = [Path(reports) / f"{name}.csv" for name in ("knob_gradient", "meter_regression")]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"knob_read: no {missing} (run the explain stage with a meter)")
    gradients, slopes = (pd.read_csv(f, dtype={"lot": str}) for f in files)
    return knob_read(gradients, slopes, params)


def read_metrics(table: pd.DataFrame) -> dict[str, float]:
    """``knob_gradient/read/<attribute>`` and ``knob_gradient/read/low_<attribute>`` (1 = low)."""
    out = {}
    for r in table.itertuples():
        out[f"knob_gradient/read/{r.attribute}"] = float(r.read)
        out[f"knob_gradient/read/low_{r.attribute}"] = float(r.low)
    return out


def from_metrics(metrics: Mapping[str, float]) -> dict[str, dict[str, float | bool]] | None:
    """The read an explain run logged (:func:`read_metrics`; an explainer bundle keeps its
    explain run's metrics) as ``{attribute: {"read": float, "low": bool}}``; None when it logged
    none (a bundle from before the read, or an explain run without a meter).

    This is the read over every lot the explain stage explained, which is what a one-scan
    explanation should quote: one lot's own read is too noisy to flag a knob (on the default
    study the committed editor's facetness read is low on 13 of 30 lots while the read over
    them is 3.1 and its held-out sign accuracy 0.95; README, "The explanations").
    """
    keys = {a: (f"knob_gradient/read/{a}", f"knob_gradient/read/low_{a}") for a in ATTRIBUTES}
    if not all(k in metrics for pair in keys.values() for k in pair):
        return None
    return {
        a: {"read": metric_number(metrics[read]), "low": bool(metric_number(metrics[low]) != 0)}
        for a, (read, low) in keys.items()
    }


def metric_number(value: float | None) -> float:
    """A stored metric as a float: a NaN is stored as JSON null."""
    return math.nan if value is None else float(value)
