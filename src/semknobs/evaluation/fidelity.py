"""Fidelity of an explanation to a reference gradient, per tile and across tiles, with bootstrap
intervals. Pure arithmetic on arrays: it reads no truth (the referee hands it the references).

An *explanation* gives each tile a vector over the four attributes (a gradient or a direction);
the *reference* is what it should match: the regressor's oracle gradient ``g_R`` (fidelity
``er``), the stress law's gradient (``el``), or the law for the regressor itself (``rl``).
Both must be in the same units (true-attribute units; :mod:`semknobs.evaluation.referee` maps).

Metrics (keys as in ``<explainer>/<fidelity>/<metric>``):

* ``cosine_median`` -- median over tiles of cos(explanation, reference). Weak on its own: the
  reference direction barely changes across tiles, so a constant vector can score ~1;
* ``centred_cosine`` -- the cosine, pooled over all tiles and attributes, after removing each
  side's study-mean vector: does the explanation follow how the reference *varies* from tile
  to tile? A constant explanation scores exactly 0, a perfect one 1, its negation -1;
* ``lot_centred_cosine`` -- the same on the lot means (each side averaged over a lot's tiles):
  does the explanation follow how the reference varies from *lot* to lot? Per tile, the
  oracle's own noise caps the centred cosine low (its split-half figure, ~0.3 on the default
  study); its lot means differ beyond their noise, so this is where an explanation can show what
  no constant can. 0 for a constant, NaN without lots (``groups``) or with fewer than 3;
* ``sign_<a>`` -- share of tiles whose sign of attribute ``a`` matches the reference's, over the
  tiles where the reference's sign is known (``known``: e.g. a nonzero law gradient, or an
  oracle component beyond twice its standard error); NaN where none is known. A negated
  explainer scores 0, a constant one the share of tiles on its side;
* ``rho_<a>`` -- Spearman rho across tiles of component ``a``: does the explanation see that an
  effect is stronger in some lots than in others? 0 for a constant explanation (no across-tile
  information), NaN when the reference itself is constant (e.g. an attribute the law ignores).

:func:`sign_agreement` scores a partial sign explanation (two explainers' common sign, none
where they differ): ``coverage``, ``sign_accuracy`` where it commits, and ``errors_flagged``, the
share of either explainer's wrong signs it leaves undetermined; a constant cannot score that.

Intervals: a cluster bootstrap over lots (tiles of one lot are not independent), percentile
95 % intervals.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from semknobs.attributes import ATTRIBUTES
from semknobs.explain.agreement import agreed_signs

METRICS = (
    "cosine_median",
    "centred_cosine",
    "lot_centred_cosine",
    *(f"sign_{a}" for a in ATTRIBUTES),
    *(f"rho_{a}" for a in ATTRIBUTES),
)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine; 0 where either row is zero."""
    na, nb = np.linalg.norm(a, axis=-1), np.linalg.norm(b, axis=-1)
    ok = (na > 0) & (nb > 0)
    return np.where(ok, np.sum(a * b, axis=-1) / np.where(ok, na * nb, 1.0), 0.0)


def centred_cosine(explanation: np.ndarray, reference: np.ndarray, tol: float = 1e-9) -> float:
    """Pooled cosine of the two after subtracting each one's mean over tiles; 0 when either is
    constant (to rounding: a residual below ``tol`` of the vector's own size)."""
    e = explanation - explanation.mean(axis=0)
    r = reference - reference.mean(axis=0)
    if np.linalg.norm(e) <= tol * np.linalg.norm(explanation) or np.linalg.norm(
        r
    ) <= tol * np.linalg.norm(reference):
        return 0.0
    return float(cosine(e.ravel(), r.ravel()))


def lot_centred_cosine(explanation: np.ndarray, reference: np.ndarray, groups: np.ndarray) -> float:
    """:func:`centred_cosine` of the per-group means (``groups``: one label per row, the lot);
    NaN with fewer than 3 groups (two lot means are always +-1 apart from their mean)."""
    labels, codes = np.unique(np.asarray(groups), return_inverse=True)
    codes, n = codes.ravel(), len(labels)
    if n < 3:
        return float("nan")
    counts = np.bincount(codes, minlength=n)[:, None]
    means = [
        np.stack([np.bincount(codes, v[:, k], n) for k in range(v.shape[1])], 1) / counts
        for v in (explanation, reference)
    ]
    return centred_cosine(*means)


def split_half(first: np.ndarray, second: np.ndarray, groups: np.ndarray) -> dict[str, float]:
    """A reference's two independent halves (e.g. the oracle's seeds) scored against each
    other: its own reliability per tile and on lot means, and ``lot_centred_cosine_ceiling``,
    what a perfect explainer would score against the full reference's noisy lot means (the
    square root of its reliability 2r / (1 + r), Spearman-Brown). ``split_half_rho_<a>``, the
    halves' Spearman rho per attribute, is what ``rho_<a>`` can be read against: near 0, the
    reference has no across-tile structure in that attribute for any explainer to find."""
    r = lot_centred_cosine(first, second, groups)
    return {
        "split_half_cosine_median": float(np.median(cosine(first, second))),
        "split_half_centred_cosine": centred_cosine(first, second),
        "split_half_lot_centred_cosine": r,
        "lot_centred_cosine_ceiling": float(np.sqrt(2 * max(r, 0) / (1 + r))),
        **{
            f"split_half_rho_{a}": rank_correlation(first[:, k], second[:, k])
            for k, a in enumerate(ATTRIBUTES)
        },
    }


def rank_correlation(x: np.ndarray, y: np.ndarray, *, tol: float = 1e-12) -> float:
    """Spearman rho; 0 when ``x`` is constant, NaN when ``y`` is (or fewer than 3 rows)."""
    if len(x) < 3 or np.ptp(y) <= tol * max(1.0, np.abs(y).max()):
        return float("nan")
    if np.ptp(x) <= tol * max(1.0, np.abs(x).max()):
        return 0.0
    rx, ry = rankdata(x), rankdata(y)
    return float(np.corrcoef(rx, ry)[0, 1])


def scores(
    explanation: np.ndarray,
    reference: np.ndarray,
    known: np.ndarray | None = None,
    groups: np.ndarray | None = None,
) -> dict[str, float]:
    """Every metric of :data:`METRICS` for (n, 4) arrays (``explanation`` may broadcast);
    ``groups`` (one lot label per row) for the lot-level metric, NaN without it."""
    reference = np.asarray(reference, dtype=float)
    explanation = np.broadcast_to(np.asarray(explanation, dtype=float), reference.shape)
    known = reference != 0 if known is None else np.asarray(known, dtype=bool)
    out = {
        "cosine_median": float(np.median(cosine(explanation, reference))),
        "centred_cosine": centred_cosine(explanation, reference),
        "lot_centred_cosine": (
            float("nan") if groups is None else lot_centred_cosine(explanation, reference, groups)
        ),
    }
    match = np.sign(explanation) == np.sign(reference)
    for k, a in enumerate(ATTRIBUTES):
        m = known[:, k]
        out[f"sign_{a}"] = float(match[m, k].mean()) if m.any() else float("nan")
    for k, a in enumerate(ATTRIBUTES):
        out[f"rho_{a}"] = rank_correlation(explanation[:, k], reference[:, k])
    return out


def scores_with_ci(
    explanation: np.ndarray,
    reference: np.ndarray,
    groups: np.ndarray,
    *,
    known: np.ndarray | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> pd.DataFrame:
    """:func:`scores` with a cluster-bootstrap interval over ``groups`` (one label per tile, the
    lot): columns ``metric``, ``value``, ``low``, ``high``."""
    reference = np.asarray(reference, dtype=float)
    explanation = np.broadcast_to(np.asarray(explanation, dtype=float), reference.shape)
    known = reference != 0 if known is None else np.asarray(known, dtype=bool)
    point = scores(explanation, reference, known, groups)
    groups = np.asarray(groups)
    members = [np.flatnonzero(groups == g) for g in np.unique(groups)]
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n_boot):
        picked = rng.integers(0, len(members), len(members))
        rows = np.concatenate([members[i] for i in picked])
        # a lot drawn twice counts as two lots
        drawn = np.concatenate([np.full(len(members[i]), j) for j, i in enumerate(picked)])
        draws.append(scores(explanation[rows], reference[rows], known[rows], drawn))
    table = pd.DataFrame(draws)
    alpha = (1 - level) / 2
    with np.errstate(invalid="ignore"):
        low = table.quantile(alpha)
        high = table.quantile(1 - alpha)
    return pd.DataFrame(
        {
            "metric": list(point),
            "value": list(point.values()),
            "low": [float(low.get(m, np.nan)) for m in point],
            "high": [float(high.get(m, np.nan)) for m in point],
        }
    )


def sign_agreement(
    first: np.ndarray, second: np.ndarray, reference: np.ndarray, known: np.ndarray
) -> dict[str, float]:
    """Two explanations (n, 4) as a partial sign explanation: their common sign where they agree
    (:func:`semknobs.explain.agreement.agreed_signs`), undetermined elsewhere. Over the entries
    whose reference sign is ``known``: ``coverage`` (share with a common sign), ``sign_accuracy``
    (share right among those; NaN if none) and ``errors_flagged`` (of the entries where either
    explanation's sign is wrong -- NaN is not counted, an exact 0 is -- the share left
    undetermined; NaN if neither is ever wrong), pooled, and per attribute ``coverage_<a>``,
    ``sign_<a>``.

    Two copies of a perfect explainer score 1 / 1 / NaN, of its negation 1 / 0 / 0, a perfect and
    a negated one 0 / NaN / 1. Sign accuracy alone is weak where the reference's sign is the same
    on every row (a constant with the right signs scores 1); ``errors_flagged`` asks whether the
    undetermined entries are where the explainers go wrong, which no constant can answer."""
    signs = agreed_signs(first, second)
    reference, known = np.asarray(reference, float), np.asarray(known, bool)
    if (
        signs.ndim != 2
        or signs.shape[1] != len(ATTRIBUTES)
        or {reference.shape, known.shape} != {signs.shape}
    ):
        raise ValueError(
            f"sign_agreement: explanations {signs.shape}, reference {reference.shape} and known "
            f"{known.shape} must all be (n, {len(ATTRIBUTES)})"
        )
    truth = np.sign(reference)
    committed = (signs != 0) & known
    right = committed & (signs == truth)
    first, second = np.asarray(first, float), np.asarray(second, float)
    wrong = known & (  # a missing value (NaN) is not a wrong sign
        ((np.sign(first) != truth) & np.isfinite(first))
        | ((np.sign(second) != truth) & np.isfinite(second))
    )

    def share(num: np.ndarray, den: np.ndarray) -> float:
        return float(num.sum() / den.sum()) if den.any() else float("nan")

    out = {
        "coverage": share(committed, known),
        "sign_accuracy": share(right, committed),
        "errors_flagged": share(wrong & (signs == 0), wrong),
    }
    for k, a in enumerate(ATTRIBUTES):
        out[f"coverage_{a}"] = share(committed[:, k], known[:, k])
        out[f"sign_{a}"] = share(right[:, k], committed[:, k])
    return out
