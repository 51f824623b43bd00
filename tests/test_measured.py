"""The meter-corrected knob gradient on known answers: an exact Jacobian recovers the concept
sensitivity exactly, its negation gives the negation, and ill-conditioned or noisy Jacobians
are flagged."""

import numpy as np
import pandas as pd
import pytest

from semknobs.attributes import ATTRIBUTES
from semknobs.config import from_mapping
from semknobs.errors import ParamsError
from semknobs.evaluation.fidelity import cosine
from semknobs.explain.measured import (
    CorrectedParams,
    MeterCalibration,
    corrected_attribution,
    gain_corrected,
    tile_gain_corrected,
)

RNG = np.random.default_rng(0)
N, K = 60, len(ATTRIBUTES)
LOTS = np.repeat([f"L{i}" for i in range(10)], N // 10)
S = RNG.normal(0, 1, (N, K)) + np.array([-10.0, -20.0, 4.0, 5.0])  # dR / d measured concept
J = np.array(  # measured change per knob: gains 0.3-0.5, some leakage
    [[0.4, 0.0, 0.1, 0.0], [-0.2, 0.5, 0.0, -0.3], [0.0, 0.0, 0.35, 0.0], [0.1, 0.0, 0.0, 0.3]]
)


def _tiles_jacobian(j: np.ndarray, noise: float = 0.0) -> np.ndarray:
    return np.broadcast_to(j, (N, K, K)) + RNG.normal(0, noise, (N, K, K))


def test_an_exact_jacobian_recovers_the_concept_sensitivity():
    g = S @ J  # g_j = sum_i J_ij s_i: what the knob gradient sees
    res = corrected_attribution(g, _tiles_jacobian(J), LOTS, bootstrap=100)
    np.testing.assert_allclose(res.attribution, S, atol=1e-8)
    assert np.median(cosine(res.attribution, S)) == pytest.approx(1.0)
    assert np.median(cosine(-res.attribution, S)) == pytest.approx(-1.0)
    assert res.condition < 10 and not res.flags.any()
    lo, hi = res.interval
    assert np.all(lo <= S.mean(0)) and np.all(S.mean(0) <= hi)
    # the uncorrected gradient is off: the correction is what buys the agreement
    assert np.median(cosine(g, S)) < 0.99


def test_tile_gain_correction_divides_out_each_tiles_own_gain():
    """Known answer: the porosity edit's gain follows each tile's own level, within lots too;
    the response per unit of measured change is the same everywhere. Weight 1 divides each
    tile's own gain out (every tile then reads the same), weight 0 only its lot's (the lots'
    means agree, the tiles within a lot do not), 0.5 lies between; a tile the meter did not
    read takes its lot's gain, and an unread lot keeps its gradient."""
    lots = np.repeat(np.arange(6), 5)
    own = np.linspace(0.2, 1.0, 30)  # the tiles' gains, rising within every lot too
    jac = np.zeros((30, K, K))
    jac[:, [0, 2, 3], [0, 2, 3]] = 0.4
    jac[:, 1, 1] = own
    response = np.array([-10.0, -20.0, 4.0, 5.0])
    g = response * np.diagonal(jac, axis1=1, axis2=2)
    study = own.mean()
    full = tile_gain_corrected(g, jac, lots, 1.0)
    np.testing.assert_allclose(full[:, 1], -20.0 * study, rtol=1e-9)
    np.testing.assert_allclose(full[:, [0, 2, 3]], g[:, [0, 2, 3]], rtol=1e-9)
    lot_only = tile_gain_corrected(g, jac, lots, 0.0)
    means = pd.Series(lot_only[:, 1]).groupby(lots).mean()
    np.testing.assert_allclose(means, -20.0 * study, rtol=1e-9)
    assert np.ptp(lot_only[:, 1]) > 1  # within a lot the tiles still differ
    half = tile_gain_corrected(g, jac, lots, 0.5)
    assert np.ptp(full[:, 1]) < np.ptp(half[:, 1]) < np.ptp(lot_only[:, 1])
    assert (np.sign(half) == np.sign(g)).all()  # a positive factor never changes a sign
    jac[3, 1, 1] = np.nan  # tile 3 (lot 0) unread: its lot's gain
    jac[lots == 5, 1, 1] = np.nan  # lot 5 unread: as it is
    out = tile_gain_corrected(g, jac, lots, 1.0)
    lot0 = np.nanmean(jac[lots == 0, 1, 1])
    assert out[3, 1] == pytest.approx(g[3, 1] * np.nanmean(jac[:, 1, 1]) / lot0)
    np.testing.assert_allclose(out[lots == 5, 1], g[lots == 5, 1])
    with pytest.raises(ValueError, match="tile_gain_corrected"):
        tile_gain_corrected(g, jac, lots[:-1], 0.5)


def test_gain_correction_divides_out_how_far_each_lot_was_moved():
    """Known answer: the regressor responds to what the edit really did, and the edit moves
    porosity in proportion to the lot's own porosity; the response per unit of measured
    change is the same everywhere, and the correction recovers that lot by lot."""
    lots = np.repeat(np.arange(6), 5)
    lot_gain = np.linspace(0.2, 1.0, 6)  # porosity knob's gain, lot by lot (mean 0.6)
    jac = np.zeros((30, K, K))
    jac[:, [0, 2, 3], [0, 2, 3]] = 0.4  # the other knobs move alike in every lot
    jac[:, 1, 1] = lot_gain[lots] + RNG.normal(0, 0.01, 30)
    response = np.array([-10.0, -20.0, 4.0, 5.0])  # per unit of measured change
    g = response * np.diagonal(jac, axis1=1, axis2=2)  # what the knob gradient sees
    out = gain_corrected(g, jac, lots)
    # the study-mean scale stays the knob gradient's, the between-lot variation is gone
    np.testing.assert_allclose(out[:, 1], -20.0 * jac[:, 1, 1].mean(), rtol=0.03)
    np.testing.assert_allclose(out[:, [0, 2, 3]], g[:, [0, 2, 3]], rtol=1e-9)
    assert np.ptp(g[:, 1]) > 10 and np.ptp(out[:, 1]) < 0.5
    # a lot barely moved is divided by at most 4; a knob that does not move its own reading
    # on average, and a lot the meter could not read, are left as they are
    jac[lots == 0, 1, 1] = 1e-6
    jac[:, 2, 2] = -0.1
    jac[lots == 5, 3, 3] = np.nan
    out = gain_corrected(g, jac, lots)
    study = np.nanmean(jac[:, 1, 1])
    assert out[0, 1] == pytest.approx(g[lots == 0, 1].mean() * 4.0)
    np.testing.assert_allclose(out[:, 2], g[:, 2])
    np.testing.assert_allclose(out[lots == 5, 3], g[lots == 5, 3].mean())
    assert np.isfinite(out).all() and study > 0
    with pytest.raises(ValueError, match="gain_corrected"):
        gain_corrected(g, jac, lots[:-1])
    # min_gain: only knobs that deliver at least that much are divided (porosity's mean is 0.6)
    jac[:, 1, 1] = lot_gain[lots]
    kept = gain_corrected(g, jac, lots, min_gain=0.65)
    np.testing.assert_allclose(kept[:, 1], pd.Series(g[:, 1]).groupby(lots).transform("mean"))
    assert np.ptp(gain_corrected(g, jac, lots, min_gain=0.55)[:, 1]) < 0.5
    # study gains measured elsewhere (one scan has no study): only this lot against them
    one = lots == 2
    alone = gain_corrected(g[one], jac[one], lots[one], study=np.array([0.4, 1.2, 0.4, 0.4]))
    np.testing.assert_allclose(alone[:, 1], g[one, 1].mean() * 1.2 / lot_gain[2])
    np.testing.assert_allclose(alone[:, 0], g[one, 0].mean())
    with pytest.raises(ValueError, match="study gains"):
        gain_corrected(g, jac, lots, study=np.ones(3))


@pytest.mark.parametrize(
    "bad", [{"gain_min": -0.1}, {"gain_min": float("nan")}, {"gain_clip": [2.0, 4.0]}]
)
def test_bad_gain_params_are_refused_by_name(bad):
    with pytest.raises(ParamsError, match="corrected.*gain_"):
        from_mapping(CorrectedParams, bad, "corrected")


def test_collinear_knobs_and_unsupported_signs_are_flagged():
    collinear = J.copy()
    collinear[:, 3] = collinear[:, 0] + 1e-3  # knob 4 moves what knob 1 moves
    res = corrected_attribution(S @ collinear, _tiles_jacobian(collinear), LOTS, bootstrap=50)
    assert res.condition > 10 and res.flags.all()
    weak = np.zeros((N, K)) + RNG.normal(0, 1, (N, K))  # no consistent sign anywhere
    res = corrected_attribution(weak @ J, _tiles_jacobian(J, noise=0.05), LOTS, bootstrap=200)
    assert res.flags.any()
    assert set(res.table()["attribute"]) == set(ATTRIBUTES)
    # edits the meter cannot see at all (an untrained generator): nothing to invert, no error
    res = corrected_attribution(S @ J, np.zeros((N, K, K)), LOTS, bootstrap=20)
    assert np.isnan(res.attribution).all() and res.flags.all() and not res.condition < 1e6


def test_meter_calibration_is_the_lot_mean_line():
    lots = np.repeat([f"L{i}" for i in range(6)], 5)
    labels = pd.DataFrame({"lot": [f"L{i}" for i in range(6)]})
    for k, a in enumerate(ATTRIBUTES):
        labels[a] = np.linspace(0, 1, 6) + 0.1 * k
    truth = labels.set_index("lot").loc[lots, list(ATTRIBUTES)].to_numpy()
    readings = pd.DataFrame(
        (truth - 0.2) / 3.0 + RNG.normal(0, 0.01, truth.shape), columns=ATTRIBUTES
    )
    readings["lot"] = lots
    calib = MeterCalibration.fit(readings, labels)
    np.testing.assert_allclose(calib.alpha, 3.0, rtol=0.05)
    np.testing.assert_allclose(calib.beta, 0.2, atol=0.03)
    with pytest.raises(ValueError, match="no readings"):
        MeterCalibration.fit(readings.assign(lot="other"), labels)
