"""The tuner's sign-agreement objective (semknobs.train.sign_objective): known answers with an
editor whose knob gradient is known exactly, and the validation lots' reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from semknobs.attributes import ATTRIBUTES
from semknobs.explain.gradient import KnobGradientParams
from semknobs.explain.natural import MeterRegressionParams
from semknobs.train.sign_objective import AGREEMENT, SignReference, sign_agreement, sign_reference

W = np.array([2.0, -1.0, 0.5, -3.0])  # the editor's brightness per knob unit
PLAIN = KnobGradientParams(smoothing=0.0)


class Brighten(nn.Module):
    """G(I; A) = I + (A - source) . W: d mean(G) / d A = W on every tile."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(W, dtype=torch.float32))

    def forward(self, x, attrs, source):
        return x + ((attrs - source) @ self.w).view(-1, 1, 1, 1)


class MeanStress(nn.Module):
    """R(I) = 10 * mean pixel, in MPa."""

    def predict_mpa(self, x):
        return 10 * x.mean(dim=(1, 2, 3))


def _reference(slopes, tiles=3, lots=2):
    rows = tuple(np.arange(i * tiles, (i + 1) * tiles) for i in range(lots))
    names = tuple(f"L{i}" for i in range(lots))
    return SignReference(names, np.asarray(slopes, float), rows, PLAIN)


def _agreement(slopes, **kw):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 8, 8), dtype=np.uint8)
    attrs = rng.uniform(0.2, 0.8, (6, 4)).astype(np.float32)
    return sign_agreement(Brighten(), MeanStress(), images, attrs, _reference(slopes), **kw)


def test_a_regression_with_the_editors_signs_agrees_everywhere_and_its_negation_nowhere():
    same = _agreement([W * 7, W * 0.1])  # magnitudes do not matter, signs do
    assert same[AGREEMENT] == 1.0
    assert all(same[f"{AGREEMENT}_{a}"] == 1.0 for a in ATTRIBUTES)
    assert _agreement([-W, -W])[AGREEMENT] == 0.0


def test_agreement_is_counted_per_lot_and_attribute():
    flipped = W.copy()
    flipped[1] *= -1  # porosity disagrees in the first lot
    out = _agreement([flipped, [np.nan] * 4])  # the second lot has no regression
    assert out[AGREEMENT] == pytest.approx(3 / 8)
    assert out[f"{AGREEMENT}_porosity"] == 0.0
    assert out[f"{AGREEMENT}_size"] == 0.5


def test_the_reference_picks_each_lots_tiles_and_none_of_a_lot_it_cannot_fit():
    rng = np.random.default_rng(1)
    lots = np.repeat(["A", "B", "C"], [30, 30, 4])  # C: fewer tiles than min_tiles
    readings = rng.normal(size=(64, 4))
    predictions = readings @ W + rng.normal(scale=0.1, size=64)
    ref = sign_reference(
        predictions,
        readings,
        lots,
        tiles_per_lot=8,
        knob_gradient=PLAIN,
        meter_regression=MeterRegressionParams(min_tiles=10),
    )
    assert ref.lots == ("A", "B", "C")
    np.testing.assert_array_equal(np.sign(ref.slopes[:2]), np.sign([W, W]))
    assert np.isnan(ref.slopes[2]).all()
    assert [len(r) for r in ref.rows] == [8, 8, 0]  # C stays, undetermined, as in explain
    for name, rows in zip(ref.lots, ref.rows):
        assert (lots[rows] == name).all() and len(set(rows)) == len(rows)


def test_no_reference_when_no_lot_can_be_fitted():
    lots = np.repeat(["A", "B"], 5)
    readings = np.random.default_rng(2).normal(size=(10, 4))
    ref = sign_reference(
        readings @ W,
        readings,
        lots,
        tiles_per_lot=8,
        knob_gradient=PLAIN,
        meter_regression=MeterRegressionParams(min_tiles=10),
    )
    assert ref is None


def test_a_lot_whose_gradient_is_not_finite_has_no_sign():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 8, 8), dtype=np.uint8)
    attrs = rng.uniform(0.2, 0.8, (6, 4)).astype(np.float32)
    gen = Brighten()
    with torch.no_grad():
        gen.w[0] = float("nan")  # the size knob diverged
    out = sign_agreement(gen, MeanStress(), images, attrs, _reference([W, W]))
    assert out[f"{AGREEMENT}_size"] == 0.0 and out[f"{AGREEMENT}_porosity"] == 1.0
