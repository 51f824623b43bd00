"""How well the attribute meter reads the true per-tile attributes of a synthetic study.

Takes the truth as a plain table (see :mod:`semknobs.data.truth` for where it comes from), so
this module itself never touches the truth files.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
from scipy.stats import spearmanr

from semknobs.attributes import ATTRIBUTES


def spearman_matrix(readings: pd.DataFrame, truth: pd.DataFrame) -> pd.DataFrame:
    """rho(meter a, true b) for every pair; rows meter, columns truth; NaN readings skipped."""
    out = pd.DataFrame(index=list(ATTRIBUTES), columns=list(ATTRIBUTES), dtype=float)
    for a in ATTRIBUTES:
        for b in ATTRIBUTES:
            ok = readings[a].notna() & truth[b].notna()
            out.loc[a, b] = (
                spearmanr(readings.loc[ok, a], truth.loc[ok, b])[0]
                if ok.sum() > 2
                else float("nan")
            )
    return out


def meter_metrics(matrix: pd.DataFrame, readings: pd.DataFrame) -> dict[str, float]:
    metrics = {f"meter/spearman_{a}": float(matrix.loc[a, a]) for a in ATTRIBUTES}
    metrics |= {f"meter/missing_{a}": float(readings[a].isna().mean()) for a in ATTRIBUTES}
    return metrics


@dataclass(frozen=True)
class MeterCheckParams:
    """Target Spearman rho per attribute; readings below it are flagged in the stage's log."""

    target_rho: float = 0.9
