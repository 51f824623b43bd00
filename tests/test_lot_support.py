"""Proxy flags: the lot data's multivariate fit against what the regressor is said to use."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from semknobs.attributes import ATTRIBUTES
from semknobs.evaluation.referee import _check_flags
from semknobs.explain.lot_support import flag_lines, lot_fit_interval, lot_support

LAW = np.array([-10.0, -20.0, 5.0, 0.0])  # facetness: no effect


def _confounded_lots(n: int = 30, seed: int = 0) -> pd.DataFrame:
    """Porosity and facetness correlated ~0.9 across lots; stress follows LAW."""
    rng = np.random.default_rng(seed)
    x = rng.random((n, 4))
    x[:, 3] = np.clip(x[:, 1] + rng.normal(0, 0.12, n), 0, 1)
    lots = pd.DataFrame(x, columns=list(ATTRIBUTES))
    lots["peak_stress"] = 100 + x @ LAW + rng.normal(0, 0.5, n)
    return lots


def test_the_fit_separates_correlated_attributes():
    lots = _confounded_lots()
    assert np.corrcoef(lots["porosity"], lots["facetness"])[0, 1] > 0.85
    coef, lo, hi = lot_fit_interval(lots)
    np.testing.assert_allclose(coef, LAW, atol=1.5)
    assert np.all(lo <= LAW) and np.all(hi >= LAW)
    assert lo[3] < 0 < hi[3]  # no support for facetness either way


def test_a_proxy_is_flagged_and_the_law_is_not():
    lots = _confounded_lots()
    proxy = LAW + np.array([0.0, 10.0, 0.0, -12.0])  # porosity's effect moved to facetness
    rng = np.random.default_rng(1)
    uses = {
        "faithful": LAW + rng.normal(0, 0.1, (20, 4)),
        "proxy": proxy + rng.normal(0, 0.1, (20, 4)),
    }
    table = lot_support(lots, uses)
    flags = table.pivot(index="source", columns="attribute", values="flag")[list(ATTRIBUTES)]
    assert not flags.loc["faithful"].any()
    # porosity is under-used (its effect moved to facetness), not a proxy: only facetness
    assert flags.loc["proxy"].tolist() == [False, False, False, True]
    lines = flag_lines(table)
    assert len(lines) == 1 and "facetness" in lines[0] and "proxy" in lines[0]


def test_a_weaker_use_of_a_real_driver_is_not_a_proxy():
    lots = _confounded_lots()
    weaker = LAW * np.array([0.5, 0.5, 1.0, 1.0])  # outside the interval, right sign
    table = lot_support(lots, {"weaker": weaker[None], "flipped": -LAW[None]})
    flags = table.pivot(index="source", columns="attribute", values="flag")[list(ATTRIBUTES)]
    assert not flags.loc["weaker"].any()
    assert flags.loc["flipped"].tolist() == [True, True, True, False]  # facetness: -0 is 0


def test_over_use_of_a_real_driver_is_flagged():
    lots = _confounded_lots()
    stronger = LAW * np.array([2.0, 1.0, 1.0, 1.0])  # twice the size effect the lots allow
    table = lot_support(lots, {"stronger": stronger[None]})
    assert table["flag"].tolist() == [True, False, False, False]


def test_flags_are_checked_against_the_measured_use():
    lots = _confounded_lots()
    proxy = LAW + np.array([0.0, 10.0, 0.0, -12.0])
    table = lot_support(lots, {"right": proxy[None], "wrong": LAW[None]})
    checked, metrics = _check_flags(table, np.tile(proxy, (5, 1)))  # the regressor uses a proxy
    assert metrics["right/lots/flag_agreement"] == 1.0
    assert metrics["wrong/lots/flag_agreement"] == 0.75  # misses the facetness flag
    assert metrics["regressor/lots/flag_facetness"] == 1.0
    assert "regressor (oracle)" in set(checked["source"])


def test_too_few_lots_is_a_clear_error():
    with pytest.raises(ValueError, match="at least 6 lots"):
        lot_fit_interval(_confounded_lots(n=5))
