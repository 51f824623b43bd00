"""The correlation baseline: how lot attributes co-vary with lot stress (no images involved).

What a materials scientist would do without deep learning: correlate the experts' lot scores
with the measured peak stress (and with the regressor's lot-mean prediction), and fit a linear
model ``stress ~ b0 + sum_k b_k a_k`` on the normalised attributes.

As an explainer (scored by the referee) the correlation analysis is the *marginal* slope of the
regressor's lot-mean prediction on each attribute (:func:`marginal_slopes`): what a scientist
reads off one scatter plot per attribute. It is one vector shared by every tile, and it blames
an attribute for whatever its correlated neighbours do.

The multivariate version (:func:`linear_coefficients` of the lot-mean prediction, scored as
``linear_model``) separates correlated attributes as far as the lots allow. Where a lot's images
depend on nothing but its attributes (the synthetic studies) it estimates the regressor's average
response without bias to first order, so it is the constant an explainer of tiles must beat
*across* tiles and lots (centred cosine, rho), not on the plain cosine or the signs.
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


def marginal_slopes(lots: pd.DataFrame, target: str) -> np.ndarray:
    """Per attribute, the least-squares slope of ``lots[target]`` on that attribute alone
    (MPa per unit of normalised attribute): cov(a_k, y) / var(a_k)."""
    y = lots[target].to_numpy(dtype=float)
    out = []
    for a in ATTRIBUTES:
        x = lots[a].to_numpy(dtype=float)
        var = np.var(x)
        out.append(float(np.mean((x - x.mean()) * (y - y.mean())) / var) if var > 0 else 0.0)
    return np.asarray(out)
