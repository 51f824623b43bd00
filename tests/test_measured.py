"""The meter-corrected knob gradient on known answers: an exact Jacobian recovers the concept
sensitivity exactly, its negation gives the negation, and ill-conditioned or noisy Jacobians
are flagged."""

import numpy as np
import pandas as pd
import pytest

from semknobs.attributes import ATTRIBUTES
from semknobs.evaluation.fidelity import cosine
from semknobs.explain.measured import MeterCalibration, corrected_attribution

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


def test_collinear_knobs_and_unsupported_signs_are_flagged():
    collinear = J.copy()
    collinear[:, 3] = collinear[:, 0] + 1e-3  # knob 4 moves what knob 1 moves
    res = corrected_attribution(S @ collinear, _tiles_jacobian(collinear), LOTS, bootstrap=50)
    assert res.condition > 10 and res.flags.all()
    weak = np.zeros((N, K)) + RNG.normal(0, 1, (N, K))  # no consistent sign anywhere
    res = corrected_attribution(weak @ J, _tiles_jacobian(J, noise=0.05), LOTS, bootstrap=200)
    assert res.flags.any()
    assert set(res.table()["attribute"]) == set(ATTRIBUTES)


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
