"""The AttGAN tuner's truth-free fidelity objective: how often a trial's knob gradient agrees in
sign with the meter regression on the validation lots (``val/sign_agreement``, issue 14).

Per validation lot, two routes to "which way does each concept move the regressor":

* the **meter regression** (:mod:`semknobs.explain.natural`): the regressor across the lot's
  own real tiles, as the calibrated meter reads them. No AttGAN, so it is computed once per study
  and is the same yardstick for every trial;
* the **lot knob gradient** (:mod:`semknobs.explain.gradient`, the ``explain`` stage's settings):
  the mean over ``tiles_per_lot`` of the lot's tiles of ``d R(G(I; A)) / d A``, through the
  trial's editor.

The objective is the share of lot-attributes where the two share a sign
(:func:`semknobs.explain.agreement.coverage`), as the ``explain`` stage's
``agreed_signs/lots/coverage`` (whose gain correction never changes a sign). It reads tiles,
meter readings and lot labels (the calibration), never the renderer or the truth, so it exists on
user data. What it is: agreement, not accuracy. Where the meter regression is wrong (facetness
and dispersity are read poorly), an editor that is right there loses agreement. Why it is worth
optimising anyway: the first tuning study's trial 2, trained at full length, lost the size
knob's sign on the confounded study (oracle, held out: 0.81 -> 0.19 of the tiles), and the
``explain`` stage's agreement (every lot of the study) fell with it (0.78 -> 0.58; size
0.73 -> 0.23), while on the default and ``other_law`` studies it held (0.75 -> 0.79,
0.73 -> 0.74). What 1000-step trials on a validation fold show: ``benchmarks/
tune_attgan_sign_objective.md``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from semknobs.attributes import ATTRIBUTES
from semknobs.explain.agreement import agreed_signs, coverage
from semknobs.explain.bundle import StressInMPa
from semknobs.explain.gradient import KnobGradient, KnobGradientParams
from semknobs.explain.natural import MeterRegressionParams, lot_slopes
from semknobs.models.attgan import Generator
from semknobs.models.regressor import PeakStressRegressor
from semknobs.pixels import to_model

AGREEMENT = "val/sign_agreement"


@dataclass(frozen=True)
class SignReference:
    """The validation lots' meter regression and the tiles whose knob gradients meet it."""

    lots: tuple[str, ...]
    slopes: np.ndarray  # (lots, 4) MPa per knob unit; NaN: the lot has too few read tiles
    rows: tuple[np.ndarray, ...]  # per lot: indices of its compared tiles among the val tiles
    knob_gradient: KnobGradientParams

    def key(self) -> str:
        """What trials are scored against (the lots, their slopes, the compared tiles and the
        knob gradient's settings), for the study's name: any change starts a new study."""
        rows = [r.tolist() for r in self.rows]
        return repr((self.lots, np.round(self.slopes, 6).tolist(), rows, self.knob_gradient))


def sign_reference(
    predictions: np.ndarray,
    readings: np.ndarray,
    lots: np.ndarray,
    *,
    tiles_per_lot: int,
    knob_gradient: KnobGradientParams,
    meter_regression: MeterRegressionParams,
    seed: int = 0,
) -> SignReference | None:
    """From the regressor's MPa on every validation tile (n,), the tiles' calibrated readings
    (n, 4) and lot ids (n,); None when no lot has slopes (nothing to agree with). A lot without
    slopes keeps its place (it counts as undetermined, as in ``explain``) but no tiles."""
    lots = np.asarray(lots).astype(str)
    table = lot_slopes(predictions, readings, lots, meter_regression).table
    slopes = table[[f"slope_{a}" for a in ATTRIBUTES]].to_numpy(float)
    if not np.isfinite(slopes).any():
        return None
    rng = np.random.default_rng(seed)
    rows = []
    for lot, fitted in zip(table["lot"], np.isfinite(slopes).any(axis=1)):
        idx = np.flatnonzero(lots == lot)
        n = min(tiles_per_lot, len(idx)) if fitted else 0
        rows.append(np.sort(rng.choice(idx, n, replace=False)))
    return SignReference(tuple(table["lot"]), slopes, tuple(rows), knob_gradient)


def sign_agreement(
    gen: Generator,
    regressor: PeakStressRegressor,
    images: np.ndarray,
    attrs: np.ndarray,
    reference: SignReference,
    batch_size: int = 64,
) -> dict[str, float]:
    """``val/sign_agreement`` and ``val/sign_agreement_<a>`` of ``gen`` on the validation
    tiles ``images`` (uint8) with their attributes ``attrs`` (knob units)."""
    device = next(gen.parameters()).device
    reg = StressInMPa(regressor.to(device))  # a feature-loss trial may have moved it already
    rows = np.concatenate(reference.rows)
    x = to_model(images[rows], device)
    a = torch.as_tensor(attrs[rows], dtype=torch.float32, device=device)
    explainer = KnobGradient(gen, reg, reference.knob_gradient)
    grad = explainer.attribute(x, a, batch_size).gradient
    # each lot's mean gradient; a lot without tiles, or with a non-finite gradient, has no sign
    ends = np.cumsum([len(r) for r in reference.rows])
    per_lot = np.array(
        [grad[e - len(r) : e].mean(axis=0) if len(r) else np.full(len(ATTRIBUTES), np.nan)
         for r, e in zip(reference.rows, ends)]
    )  # fmt: skip
    signs = agreed_signs(per_lot, reference.slopes)
    return {k.replace("coverage", AGREEMENT): v for k, v in coverage(signs).items()}
