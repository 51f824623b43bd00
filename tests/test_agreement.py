"""The signs two explainers agree on (semknobs.explain.agreement), with known answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from semknobs.attributes import ATTRIBUTES
from semknobs.explain.agreement import agreed_signs, agreement_line, lot_agreement, sign_words
from semknobs.explain.lot_gradient import LotGradient
from semknobs.explain.natural import LotSlopes

K = len(ATTRIBUTES)


def test_agreed_signs_commit_only_where_both_give_the_same_nonzero_sign():
    gradient = np.array([[2.0, -1.0, 0.5, -3.0], [1.0, 0.0, np.nan, -1.0]])
    slopes = np.array([[0.1, -9.0, -0.5, 3.0], [4.0, 0.0, 1.0, np.nan]])
    np.testing.assert_array_equal(
        agreed_signs(gradient, slopes), [[1.0, -1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]]
    )
    # units do not matter, only signs: scaling either side changes nothing
    np.testing.assert_array_equal(
        agreed_signs(5 * gradient, 0.01 * slopes), agreed_signs(gradient, slopes)
    )
    with pytest.raises(ValueError, match="shapes"):
        agreed_signs(gradient, slopes[:, :3])


def _lot_gradient(values: dict[str, list[float]]) -> LotGradient:
    rows = [
        {"lot": lot, "attribute": a, "gain_corrected": v[k]}
        for lot, v in values.items()
        for k, a in enumerate(ATTRIBUTES)
    ]
    return LotGradient(pd.DataFrame({"lot": list(values)}), pd.DataFrame(rows))


def test_lot_agreement_matches_each_lot_with_its_own_slopes():
    lot = _lot_gradient({"B": [1.0, -1.0, 1.0, -1.0], "A": [-2.0, -2.0, 2.0, 2.0]})
    table = pd.DataFrame(
        {"lot": ["A", "B"], "tiles": [12, 3]}
        | {f"slope_{a}": [[-1.0, 1.0, 1.0, 1.0][k], np.nan] for k, a in enumerate(ATTRIBUTES)}
    )  # lot B has too few tiles for a meter regression: nothing is determined there
    out = lot_agreement(lot, LotSlopes(table)).set_index("lot")
    assert list(out.index) == ["B", "A"]  # the lot gradient's order
    np.testing.assert_array_equal(out.loc["A"], [-1.0, 0.0, 1.0, 1.0])
    np.testing.assert_array_equal(out.loc["B"], [0.0] * K)
    none = lot_agreement(lot, None)  # no meter in the bundle: undetermined everywhere
    assert (none.drop(columns="lot").to_numpy() == 0).all()


def test_lot_agreement_reads_lots_named_by_numbers():
    """Lot ids given as integers to the meter regression still meet the lot gradient's (str)."""
    lot = _lot_gradient({"7": [1.0, 1.0, -1.0, -1.0], "12": [-1.0, -1.0, 1.0, 1.0]})
    slopes = {12: [-2.0, -2.0, 2.0, 2.0], 7: [3.0, -3.0, -3.0, 3.0]}
    table = pd.DataFrame(
        {"lot": list(slopes), "tiles": [20, 20]}
        | {f"slope_{a}": [v[k] for v in slopes.values()] for k, a in enumerate(ATTRIBUTES)}
    )
    out = lot_agreement(lot, LotSlopes(table)).set_index("lot")
    np.testing.assert_array_equal(out.loc["7"], [1.0, 0.0, -1.0, 0.0])
    np.testing.assert_array_equal(out.loc["12"], [-1.0, -1.0, 1.0, 1.0])


def test_sign_words_and_line():
    words = sign_words(np.array([-1.0, 1.0, 0.0, -1.0]))
    assert words == dict(zip(ATTRIBUTES, ["-", "+", "undetermined", "-"]))
    assert agreement_line(words) == "size -, porosity +, dispersity undetermined, facetness -"
    with pytest.raises(ValueError, match="4 signs"):
        sign_words(np.array([1.0, -1.0]))
