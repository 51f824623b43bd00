import numpy as np
import pytest

from semknobs.data.design import DesignParams, lot_design
from semknobs.errors import ParamsError


def test_independent_design_is_space_filling():
    a = lot_design(30, DesignParams(), np.random.default_rng(1))
    assert a.shape == (30, 4)
    assert a.min() >= 0.05 and a.max() <= 0.95
    # Latin hypercube: each attribute has exactly one lot per 1/30 stratum
    strata = np.floor((a - 0.05) / 0.9 * 30).astype(int)
    for j in range(4):
        assert sorted(strata[:, j]) == list(range(30))


def test_correlated_design_follows_matrix():
    c = np.eye(4)
    c[0, 1] = c[1, 0] = 0.8
    c[2, 3] = c[3, 2] = -0.6
    a = lot_design(
        2000, DesignParams(kind="correlated", correlation=c.tolist()), np.random.default_rng(2)
    )
    r = np.corrcoef(a.T)
    assert r[0, 1] == pytest.approx(0.8, abs=0.05)
    assert r[2, 3] == pytest.approx(-0.6, abs=0.05)
    assert abs(r[0, 2]) < 0.08


def _not_positive_definite() -> list:
    c = np.eye(4)
    c[0, 1] = c[1, 0] = c[1, 2] = c[2, 1] = 0.9
    c[0, 2] = c[2, 0] = -0.9
    return c.tolist()


@pytest.mark.parametrize(
    "matrix, message",
    [
        (None, "needs a 4x4"),
        ([[1, 0], [0, 1]], "expected a 4x4"),
        ((np.eye(4) + np.triu(np.full((4, 4), 0.3), 1)).tolist(), "not symmetric"),
        ((np.eye(4) * 2).tolist(), "diagonal"),
        (_not_positive_definite(), "positive definite"),
    ],
)
def test_bad_correlation_matrix_names_the_parameter(matrix, message):
    with pytest.raises(ParamsError, match=message) as err:
        lot_design(
            10, DesignParams(kind="correlated", correlation=matrix), np.random.default_rng(0)
        )
    assert "synthesize.design.correlation" in str(err.value)
