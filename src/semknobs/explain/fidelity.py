"""Fidelity of explanations against the synthetic ground truth. EVALUATION ONLY.

The one explanation module allowed to read the truth (see ``tests/test_truth_isolation.py``).
An explanation gives, per tile, a direction in attribute space (the counterfactual delta-A for
"higher", the forward-sensitivity slopes, or the correlation baseline's coefficients); the truth
gives the closed-form gradient of the stress law at the tile's true attributes.

Explanations live in the *normalised label* space (expert scores scaled to [0, 1]), the law in
the *true attribute* space. Per attribute the two are related by the experts' (noisy, roughly
affine) scoring, estimated here by least squares over the lots: ``label ~ s_k * true + c_k``,
so ``d sigma / d label_k = (d sigma / d true_k) / s_k``. Only then are directions compared.

* ``cosine_median``: median over tiles of cos(explanation, gradient); 1 for a perfect explainer,
  -1 for its negation;
* ``sign_agreement``: over tiles, the share of attributes whose signs match, counting only the
  attributes whose |gradient| is at least ``min_share`` (10 %) of the tile's largest.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from semknobs.attributes import ATTRIBUTES
from semknobs.data.law import StressLaw
from semknobs.data.truth import Truth, read_truth, tile_truth  # noqa: F401  (evaluation only)


def label_slopes(truth_lots: pd.DataFrame, labels: pd.DataFrame) -> np.ndarray:
    """Slope s_k of normalised label vs true attribute over the lots, shape (4,)."""
    merged = truth_lots.merge(labels, on="lot", suffixes=("_true", "_label"))
    slopes = []
    for a in ATTRIBUTES:
        x, y = merged[f"{a}_true"].to_numpy(), merged[f"{a}_label"].to_numpy()
        slopes.append(np.polyfit(x, y, 1)[0])
    return np.asarray(slopes)


def label_space_gradient(law: StressLaw, true_attrs: np.ndarray, slopes: np.ndarray) -> np.ndarray:
    return law.gradient(true_attrs) / slopes


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    na, nb = np.linalg.norm(a, axis=-1), np.linalg.norm(b, axis=-1)
    return np.sum(a * b, axis=-1) / np.maximum(na * nb, 1e-12)


def sign_agreement(
    direction: np.ndarray, gradient: np.ndarray, min_share: float = 0.1
) -> np.ndarray:
    """Per tile: share of relevant attributes whose signs match (NaN if none is relevant)."""
    relevant = np.abs(gradient) >= min_share * np.abs(gradient).max(axis=-1, keepdims=True)
    match = (np.sign(direction) == np.sign(gradient)) & relevant
    return match.sum(axis=-1) / np.maximum(relevant.sum(axis=-1), 1)


def fidelity_metrics(prefix: str, direction: np.ndarray, gradient: np.ndarray) -> dict[str, float]:
    direction = np.broadcast_to(direction, gradient.shape)
    return {
        f"{prefix}/cosine_median": float(np.median(cosine(direction, gradient))),
        f"{prefix}/sign_agreement": float(np.mean(sign_agreement(direction, gradient))),
    }
