"""The signs both truth-free explainers agree on, per lot and attribute (issue 14).

A lot's gain-corrected knob gradient (:mod:`semknobs.explain.lot_gradient`: the regressor read
through the AttGAN's edits) and its meter regression (:mod:`semknobs.explain.natural`: the
regressor across the lot's own tiles as the meter reads them, no AttGAN) reach a concept's sign
by different routes and go wrong in different places: the knob gradient where an edit is
weak or off the material (size on the default study, porosity on ``other_law``), the meter
regression where the meter reads a concept poorly (facetness, dispersity). Where the two give
a concept the same sign, that sign is reported (+1 / -1); where they differ, or either has no
value (a lot under ``meter_regression.min_tiles`` read tiles, no meter), it is undetermined (0).

The gain correction never changes a sign (its factor is positive), so the knob gradient's side
is the sign of the lot's mean knob gradient.

What it is: a reliability marker for the two per-lot explainers, not a better sign. Measured
against the oracle (evaluation only) on lots none of it had seen (``benchmarks/sign_agreement.md``:
24 fresh lots per study rendered from each study's own design; its first rule, written before
the results, and the addenda after, in ``sign_agreement_rules.md``): where the two agree (0.92 /
0.82 / 0.86 of the lot-attributes whose oracle sign is known, default / other_law / confounded)
the sign is right on 1.000 / 0.980 / 1.000, and the undetermined rest holds 1.00 / 0.92 / 1.00
of the entries where either explainer's sign is wrong. But on these studies each concept's sign
is the same in nearly every lot, so a study-level sign does as well: the explain stage's
``linear_model`` (truth-free) is right on 1.000 / 0.984 / 0.986 of the same entries. Those
entries are the larger effects (59-73 of 96 per study; with 16 oracle renders per point 80-81,
and the same picture). No study, the ``interaction`` one included, has a concept whose
regressor sign changes between lots often enough to test per-lot signs against a constant. The
``explain`` stage scores it on its held-out lots, one entry per lot and attribute
(``agreed_signs/er/*``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from semknobs.attributes import ATTRIBUTES

if TYPE_CHECKING:
    from semknobs.explain.lot_gradient import LotGradient
    from semknobs.explain.natural import LotSlopes

WORDS = {1.0: "+", -1.0: "-", 0.0: "undetermined"}


def agreed_signs(gradient: np.ndarray, slopes: np.ndarray) -> np.ndarray:
    """+1 / -1 where ``gradient`` and ``slopes`` (same shape, any units with the same sign
    convention) share a nonzero sign, 0 elsewhere (different signs, a zero or a NaN)."""
    g, s = np.sign(np.asarray(gradient, float)), np.sign(np.asarray(slopes, float))
    if g.shape != s.shape:
        raise ValueError(f"agreed_signs: shapes {g.shape} and {s.shape} differ")
    return np.where((g == s) & (g != 0), g, 0.0)


def coverage(signs: np.ndarray) -> dict[str, float]:
    """Agreed signs (lots, 4) -> ``coverage``, the share of lot-attributes with a sign, and
    ``coverage_<a>`` per attribute. Truth-free: how often two routes to the regressor's
    response agree, not whether they are right."""
    signs = np.asarray(signs, float)
    if signs.ndim != 2 or signs.shape[1] != len(ATTRIBUTES) or not len(signs):
        raise ValueError(f"coverage: expected (lots, {len(ATTRIBUTES)}) signs, got {signs.shape}")
    out = {"coverage": float(np.mean(signs != 0))}
    out |= {f"coverage_{a}": float(np.mean(signs[:, k] != 0)) for k, a in enumerate(ATTRIBUTES)}
    return out


def lot_agreement(lot: LotGradient, natural: LotSlopes | None) -> pd.DataFrame:
    """Per lot of ``lot``: ``lot`` and ``agreed_sign_<a>`` (all 0 without a meter regression)."""
    kgg = lot.lots.pivot(index="lot", columns="attribute", values="gain_corrected")
    kgg = kgg.loc[list(dict.fromkeys(lot.lots["lot"])), list(ATTRIBUTES)]
    if natural is None:
        slopes = np.full(kgg.shape, np.nan)
    else:
        table = natural.table.assign(lot=natural.table["lot"].astype(str))  # as lot_gradient's
        slopes = table.set_index("lot").reindex(kgg.index)
        slopes = slopes[[f"slope_{a}" for a in ATTRIBUTES]].to_numpy(float)
    signs = agreed_signs(kgg.to_numpy(float), slopes)
    out = pd.DataFrame(signs, columns=[f"agreed_sign_{a}" for a in ATTRIBUTES])
    return out.assign(lot=kgg.index.to_numpy())[["lot", *out.columns]]


def sign_words(signs: np.ndarray) -> dict[str, str]:
    """One lot's agreed signs (4,) as ``{attribute: "+" | "-" | "undetermined"}``."""
    signs = np.asarray(signs, float)
    if signs.shape != (len(ATTRIBUTES),):
        raise ValueError(f"sign_words: one lot's {len(ATTRIBUTES)} signs, got {signs.shape}")
    return {a: WORDS[float(v)] for a, v in zip(ATTRIBUTES, signs)}


def agreement_line(words: dict[str, str]) -> str:
    """``size -, porosity -, dispersity undetermined, facetness +``."""
    return ", ".join(f"{a} {w}" for a, w in words.items())
