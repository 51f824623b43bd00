"""The four material concepts (the knobs) and their normalisation.

Expert scores in ``lots.csv`` may use any scale; everything downstream works on [0, 1] values
obtained with the min/max of the training labels. The min/max travel with the models.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ATTRIBUTES: tuple[str, ...] = ("size", "porosity", "dispersity", "facetness")


@dataclass(frozen=True)
class AttributeScaler:
    """Maps expert scores to [0, 1] per attribute with a stored min/max."""

    low: tuple[float, ...]
    high: tuple[float, ...]

    @classmethod
    def fit(cls, scores: np.ndarray) -> AttributeScaler:
        scores = np.asarray(scores, dtype=float)
        low, high = scores.min(axis=0), scores.max(axis=0)
        high = np.where(high > low, high, low + 1.0)  # a constant attribute maps to 0
        return cls(tuple(map(float, low)), tuple(map(float, high)))

    def transform(self, scores: np.ndarray) -> np.ndarray:
        low, high = np.asarray(self.low), np.asarray(self.high)
        return (np.asarray(scores, dtype=float) - low) / (high - low)

    def inverse(self, values: np.ndarray) -> np.ndarray:
        low, high = np.asarray(self.low), np.asarray(self.high)
        return np.asarray(values, dtype=float) * (high - low) + low

    def to_dict(self) -> dict[str, dict[str, float]]:
        return {a: {"low": lo, "high": hi} for a, lo, hi in zip(ATTRIBUTES, self.low, self.high)}

    @classmethod
    def from_dict(cls, d: dict[str, dict[str, float]]) -> AttributeScaler:
        return cls(tuple(d[a]["low"] for a in ATTRIBUTES), tuple(d[a]["high"] for a in ATTRIBUTES))
