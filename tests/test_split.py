import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from semknobs.data.split import SplitParams, check_disjoint, make_splits
from semknobs.errors import ParamsError


def _lots(stresses):
    return pd.DataFrame(
        {"lot": [f"L{i:03d}" for i in range(len(stresses))], "peak_stress": stresses}
    )


@settings(max_examples=200, deadline=None)
@given(
    stresses=st.lists(st.floats(1, 500, allow_nan=False), min_size=6, max_size=80),
    n_folds=st.integers(2, 6),
    test_share=st.floats(0.05, 0.4),
    seed=st.integers(0, 2**32 - 1),
    stratify=st.sampled_from(["stress", "none"]),
)
def test_splits_never_leak_a_lot(stresses, n_folds, test_share, seed, stratify):
    lots = _lots(stresses)
    test_lots = max(1, int(len(lots) * test_share))
    if len(lots) - test_lots < n_folds:
        return
    s = make_splits(
        lots, SplitParams(n_folds=n_folds, test_lots=test_lots, stratify=stratify, seed=seed)
    )
    check_disjoint(s)
    everything = s["test"] + [lot for fold in s["folds"] for lot in fold]
    assert sorted(everything) == sorted(lots["lot"])  # every lot exactly once
    assert len(s["test"]) == test_lots
    assert sorted(s["train"]) == sorted(lot for fold in s["folds"] for lot in fold)
    assert all(s["folds"])
    sizes = [len(f) for f in s["folds"]]
    assert max(sizes) - min(sizes) <= 1


def test_stratified_test_set_spans_the_stress_range():
    lots = _lots(list(range(10, 310, 10)))  # 30 lots
    s = make_splits(lots, SplitParams(test_lots=6))
    ranks = sorted(int(lot[1:]) // 5 for lot in s["test"])
    assert ranks == list(range(6))  # one test lot from each sixth of the stress ranking


def test_deterministic_for_a_seed():
    lots = _lots(list(range(30)))
    assert make_splits(lots, SplitParams(seed=3)) == make_splits(lots, SplitParams(seed=3))
    assert make_splits(lots, SplitParams(seed=3)) != make_splits(lots, SplitParams(seed=4))


def test_check_disjoint_catches_a_leak():
    with pytest.raises(AssertionError, match="L1 is in both"):
        check_disjoint({"test": ["L1"], "folds": [["L1", "L2"], ["L3"]]})


def test_too_few_lots_is_a_params_error():
    with pytest.raises(ParamsError, match="split.test_lots"):
        make_splits(_lots([1, 2, 3, 4]), SplitParams(n_folds=4, test_lots=2))
