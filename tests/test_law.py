import numpy as np
import pytest

from semknobs.data.law import StressLaw

LAWS = {
    "default": StressLaw(),
    "size_flipped": StressLaw(k_hp=-90.0, sigma0_mpa=60.0),
    "porosity_strengthens": StressLaw(porosity_decay=-0.4),
    "negative_interaction": StressLaw(c_dispersity_facetness=-8.0, c_facetness=-2.0),
}


@pytest.mark.parametrize("name", LAWS)
def test_gradient_matches_finite_differences(name):
    law = LAWS[name]
    rng = np.random.default_rng(0)
    a = rng.uniform(0.05, 0.95, (50, 4))
    eps = 1e-6
    numeric = np.stack(
        [(law(a + eps * np.eye(4)[j]) - law(a - eps * np.eye(4)[j])) / (2 * eps) for j in range(4)],
        axis=-1,
    )
    np.testing.assert_allclose(law.gradient(a), numeric, rtol=1e-5, atol=1e-6)


def test_default_law_shape():
    law = StressLaw()
    g = law.gradient(np.full(4, 0.5))
    assert g[0] < 0, "Hall-Petch: finer particles are stronger"
    assert g[1] < 0, "porosity weakens"
    assert g[2] > 0 and g[3] > 0
    # nonlinear in size: the Hall-Petch slope is steeper for fine particles
    fine, coarse = (
        law.gradient(np.array([0.0, 0.5, 0.5, 0.5])),
        law.gradient(np.ones(4) * [1, 0.5, 0.5, 0.5]),
    )
    assert abs(fine[0]) > 2 * abs(coarse[0])
    # interaction: the facetness slope depends on dispersity
    assert (
        law.gradient(np.array([0.5, 0.5, 1.0, 0.5]))[3]
        > law.gradient(np.array([0.5, 0.5, 0.0, 0.5]))[3]
    )


def test_invalid_law():
    with pytest.raises(ValueError):
        StressLaw(d_min_um=5.0, d_max_um=2.0)
