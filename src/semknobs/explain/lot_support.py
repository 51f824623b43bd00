"""What the lot data support, beside what the regressor is said to use: proxy flags.

A regressor trained on a few lots can learn an attribute that merely co-varies with the true
driver across those lots (a proxy). A faithful explanation *shows* that use; this module says
whether the lots themselves support it, so nobody reads a proxy as physics. The lot data's answer
is a multivariate least-squares fit of lot stress on the four lot labels (normalised knob units),
which separates correlated attributes where a marginal correlation cannot, with a bootstrap over
lots for its 95 % interval. An attribute is flagged for an explainer when the explainer's median
attribution (MPa per knob unit) lies outside that interval with a sign the lots do not support
(the interval includes 0 or lies on the other side) or beyond its far end (a larger effect than
any the lots allow): the regressor, as explained, leans on more than the lots show. A use
weaker than the fit (a regressor that under-uses a real driver) is not a proxy and is not
flagged; the table keeps both numbers. On a synthetic study the referee applies the same rule
to the regressor's measured (oracle) use, which says whether a flag is right.

Uses the labels and stresses only: it runs unchanged on real SEM lots.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from semknobs.attributes import ATTRIBUTES
from semknobs.explain.correlation import linear_coefficients

MIN_SUPPORT_LOTS = len(ATTRIBUTES) + 2  # a 5-parameter fit with at least one residual dof


def lot_fit_interval(
    lots: pd.DataFrame, target: str = "peak_stress", n_boot: int = 1000, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(coefficients, lower, upper): the multivariate lot fit and its 95 % bootstrap interval
    over lots (resamples that leave an attribute constant are skipped)."""
    if len(lots) < MIN_SUPPORT_LOTS:
        raise ValueError(f"lot support needs at least {MIN_SUPPORT_LOTS} lots, got {len(lots)}")
    coef = linear_coefficients(lots, target)
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n_boot):
        sample = lots.iloc[rng.integers(0, len(lots), len(lots))]
        if (sample[list(ATTRIBUTES)].nunique() < 2).any():
            continue
        draws.append(linear_coefficients(sample, target))
    lo, hi = np.percentile(np.asarray(draws), [2.5, 97.5], axis=0)
    return coef, lo, hi


def proxy_flags(use: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Per attribute: ``use`` outside [lo, hi], and either the lots support no effect of its
    sign or it is larger than the interval's far end (over-use); under-use is not flagged."""
    use, lo, hi = (np.asarray(v, dtype=float) for v in (use, lo, hi))
    supported = np.where(use > 0, lo > 0, hi < 0)
    over = np.where(use > 0, use > hi, use < lo)
    return ((use < lo) | (use > hi)) & (~supported | over)


def lot_support(
    lots: pd.DataFrame,
    uses: dict[str, np.ndarray],
    target: str = "peak_stress",
    n_boot: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """One row per (source, attribute): the source's median use (``uses``: name -> (n, 4) MPa
    per knob unit, e.g. per-tile attributions), the lot fit, its interval and the flag."""
    coef, lo, hi = lot_fit_interval(lots, target, n_boot, seed)
    rows = []
    for name, use in uses.items():
        median = np.median(np.asarray(use, dtype=float).reshape(-1, len(ATTRIBUTES)), axis=0)
        flags = proxy_flags(median, lo, hi)
        for k, a in enumerate(ATTRIBUTES):
            rows.append(
                {
                    "source": name,
                    "attribute": a,
                    "use": float(median[k]),
                    "lot_fit": float(coef[k]),
                    "lot_fit_lo": float(lo[k]),
                    "lot_fit_hi": float(hi[k]),
                    "flag": bool(flags[k]),
                }
            )
    return pd.DataFrame(rows)


def flag_lines(table: pd.DataFrame) -> list[str]:
    """Readable lines for the flagged rows of :func:`lot_support`."""
    return [
        f"{r.source}: the regressor is said to use {r.attribute} at {r.use:+.1f} MPa per knob "
        f"unit; the lots support {r.lot_fit:+.1f} [{r.lot_fit_lo:+.1f}, {r.lot_fit_hi:+.1f}]"
        for r in table.itertuples()
        if r.flag
    ]
