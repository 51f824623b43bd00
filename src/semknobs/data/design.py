"""Lot designs: where the lots of a synthetic study sit in attribute space."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy.stats import norm, qmc

from semknobs.attributes import ATTRIBUTES
from semknobs.errors import ParamsError


@dataclass(frozen=True)
class DesignParams:
    """``independent``: a Latin hypercube (space-filling, uncorrelated attributes).
    ``correlated``: a Gaussian copula over a Latin hypercube with the given 4x4 correlation matrix
    (order: size, porosity, dispersity, facetness); marginals stay uniform on [low, high]."""

    kind: Literal["independent", "correlated"] = "independent"
    correlation: list[list[float]] | None = None
    low: float = 0.05
    high: float = 0.95


def lot_design(n_lots: int, design: DesignParams, rng: np.random.Generator) -> np.ndarray:
    """True lot attributes, shape (n_lots, 4), each in [design.low, design.high]."""
    if n_lots < 2:
        raise ParamsError(f"synthesize.n_lots: need at least 2 lots, got {n_lots}")
    if not 0 <= design.low < design.high <= 1:
        raise ParamsError("synthesize.design: need 0 <= low < high <= 1")
    u = qmc.LatinHypercube(d=len(ATTRIBUTES), rng=rng).random(n_lots)
    if design.kind == "correlated":
        chol = _cholesky(design.correlation)
        z = norm.ppf(u) @ chol.T
        u = norm.cdf(z)
    elif design.correlation is not None:
        raise ParamsError(
            "synthesize.design.correlation is set but design.kind is 'independent'; "
            "set kind: correlated or drop the matrix"
        )
    return design.low + u * (design.high - design.low)


def _cholesky(matrix: list[list[float]] | None) -> np.ndarray:
    where = "synthesize.design.correlation"
    if matrix is None:
        raise ParamsError(f"{where}: kind 'correlated' needs a 4x4 correlation matrix")
    c = np.asarray(matrix, dtype=float)
    k = len(ATTRIBUTES)
    if c.shape != (k, k):
        raise ParamsError(f"{where}: expected a {k}x{k} matrix, got shape {c.shape}")
    if not np.allclose(c, c.T):
        raise ParamsError(f"{where}: not symmetric")
    if not np.allclose(np.diag(c), 1.0):
        raise ParamsError(f"{where}: the diagonal must be 1")
    try:
        return np.linalg.cholesky(c)
    except np.linalg.LinAlgError:
        raise ParamsError(f"{where}: not positive definite") from None
