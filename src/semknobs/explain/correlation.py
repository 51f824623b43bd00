"""The correlation baseline: how lot attributes co-vary with lot stress (no images involved).

What a materials scientist would do without deep learning: correlate the experts' lot scores
with the measured peak stress (and with the regressor's lot-mean prediction), and fit a linear
model ``stress ~ b0 + sum_k b_k a_k`` on the normalised attributes. Its coefficients are one
explanation direction shared by every tile.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import pearsonr, spearmanr

from semknobs.attributes import ATTRIBUTES


def correlation_table(lots: pd.DataFrame, target: str) -> pd.DataFrame:
    """Pearson and Spearman r of each attribute column of ``lots`` with ``lots[target]``."""
    rows = []
    for a in ATTRIBUTES:
        rows.append(
            {
                "attribute": a,
                "target": target,
                "pearson": float(pearsonr(lots[a], lots[target])[0]),
                "spearman": float(spearmanr(lots[a], lots[target])[0]),
            }
        )
    return pd.DataFrame(rows)


def linear_coefficients(lots: pd.DataFrame, target: str) -> np.ndarray:
    """Least-squares b_1..b_4 (MPa per unit of normalised attribute), intercept dropped."""
    x = np.column_stack([np.ones(len(lots)), lots[list(ATTRIBUTES)].to_numpy()])
    coef, *_ = np.linalg.lstsq(x, lots[target].to_numpy(), rcond=None)
    return coef[1:]
