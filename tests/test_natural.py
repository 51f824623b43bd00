"""The meter regression (each lot's predictions regressed on its tiles' meter readings) on known
answers: a regressor linear in the readings is recovered lot by lot (cosine ~1, and the lots'
differences: lot centred cosine ~1), its negation gives ~-1, a constant regressor gives zero
slopes whose intervals hold zero; too few tiles or collinear readings give no slopes."""

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from semknobs.attributes import ATTRIBUTES
from semknobs.errors import DataError
from semknobs.evaluation.fidelity import cosine, lot_centred_cosine
from semknobs.explain.measured import MeterCalibration, calibrated_readings
from semknobs.explain.natural import MeterRegression, MeterRegressionParams, lot_slopes

K = len(ATTRIBUTES)
RNG = np.random.default_rng(0)
LOTS = np.repeat([f"L{i}" for i in range(8)], 40)
W = RNG.normal(0, 5, (8, K)) + np.array([-8.0, -15.0, 4.0, 6.0])  # each lot's own response


def _study(noise: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    readings = RNG.uniform(0, 1, (len(LOTS), K))
    w = W[np.searchsorted(np.unique(LOTS), LOTS)]
    pred = 50 + (readings * w).sum(axis=1) + RNG.normal(0, noise, len(LOTS))
    return pred, readings


def test_a_regressor_linear_in_the_readings_is_recovered_lot_by_lot():
    pred, readings = _study()
    res = lot_slopes(pred, readings, LOTS)
    truth = W[np.searchsorted(np.unique(LOTS), LOTS)]
    got = res.per_tile(LOTS)
    np.testing.assert_allclose(got, truth, atol=0.2)
    assert np.median(cosine(got, truth)) == pytest.approx(1.0, abs=1e-3)
    assert lot_centred_cosine(got, truth, LOTS) > 0.99
    neg = lot_slopes(-pred, readings, LOTS).per_tile(LOTS)
    assert np.median(cosine(neg, truth)) == pytest.approx(-1.0, abs=1e-3)
    table = res.table.set_index("lot")
    for a in ATTRIBUTES:  # the intervals hold the truth and are narrow at this noise
        assert ((table[f"low_{a}"] <= W[:, ATTRIBUTES.index(a)]) & (
            W[:, ATTRIBUTES.index(a)] <= table[f"high_{a}"])).mean() >= 0.75  # fmt: skip
    assert (table["tiles"] == 40).all()


def test_a_constant_regressor_gets_zero_slopes_and_a_lot_too_small_none():
    _, readings = _study()
    flat = lot_slopes(np.full(len(LOTS), 42.0) + RNG.normal(0, 1e-3, len(LOTS)), readings, LOTS)
    slopes = flat.per_tile(LOTS)
    np.testing.assert_allclose(slopes, 0.0, atol=0.01)
    t = flat.table
    assert all(((t[f"low_{a}"] <= 0) & (t[f"high_{a}"] >= 0)).all() for a in ATTRIBUTES)
    pred, readings = _study()
    readings[np.flatnonzero(LOTS == "L0")[:35], 2] = np.nan  # only 5 fully read tiles
    readings[LOTS == "L1", 3] = readings[LOTS == "L1", 1]  # collinear readings
    res = lot_slopes(pred, readings, LOTS, MeterRegressionParams(min_tiles=10))
    table = res.table.set_index("lot")
    assert table.loc["L0", "tiles"] == 5 and table.loc[["L0", "L1"], "slope_size"].isna().all()
    assert table.drop(index=["L0", "L1"])["slope_size"].notna().all()
    assert np.isnan(res.per_tile(np.array(["L9"]))).all()  # a lot never fitted
    with pytest.raises(ValueError, match="lot_slopes"):
        lot_slopes(pred[:-1], readings, LOTS)
    with pytest.raises(ValueError, match="min_tiles"):
        MeterRegressionParams(min_tiles=3)


class MeanPixel(nn.Module):
    """A regressor with ``predict_mpa``: 10 x the tile's mean pixel in [-1, 1]."""

    def __init__(self):
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(1))  # predict() looks up the device

    def predict_mpa(self, x: torch.Tensor) -> torch.Tensor:
        return 10.0 * x.mean(dim=(1, 2, 3))


def test_meter_regression_reads_the_regressor_on_real_tiles(tmp_path):
    """A reading that is the tile's mean pixel (in knob units) gets the regressor's slope."""
    tiles = RNG.integers(0, 256, (60, 8, 8)).astype(np.uint8)
    brightness = tiles.mean(axis=(1, 2)) / 127.5 - 1
    readings = np.c_[brightness, RNG.uniform(0, 1, (60, K - 1))]
    lots = np.repeat(["A", "B"], 30)
    res = MeterRegression(MeanPixel()).attribute(tiles, readings, lots)
    np.testing.assert_allclose(res.table["slope_size"], 10.0, rtol=1e-3)
    np.testing.assert_allclose(res.table[[f"slope_{a}" for a in ATTRIBUTES[1:]]], 0, atol=1e-3)
    given = MeterRegression(MeanPixel()).attribute(tiles, readings, lots, 10.0 * brightness)
    pd.testing.assert_frame_equal(given.table, res.table, atol=1e-4)
    # the measure stage's readings, calibrated; a tile it never read, or of another lot, named
    frame = pd.DataFrame({"tile": [3, 1], "lot": ["A", "B"], **{a: [1.0, 2.0] for a in ATTRIBUTES}})
    frame.to_csv(tmp_path / "m.csv", index=False)
    calib = MeterCalibration((2.0,) * K, (0.5,) * K)
    manifest = pd.DataFrame({"tile": [1, 3], "lot": ["B", "A"]})
    got = calibrated_readings(tmp_path / "m.csv", manifest, calib)
    np.testing.assert_allclose(got, [[4.5] * K, [2.5] * K])
    with pytest.raises(DataError, match=r"m\.csv: no readings for 1 tile"):
        calibrated_readings(tmp_path / "m.csv", manifest.assign(tile=[1, 7]), calib)
    with pytest.raises(DataError, match="do not match the tile manifest"):
        calibrated_readings(tmp_path / "m.csv", manifest.assign(lot=["A", "A"]), calib)
