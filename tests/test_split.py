import json

import pandas as pd
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from semknobs.data.split import SplitParams, Splits, make_splits, read_splits, write_splits
from semknobs.errors import DataError, ParamsError


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
    s.check()
    everything = s.test + [lot for fold in s.folds for lot in fold]
    assert sorted(everything) == sorted(lots["lot"])  # every lot exactly once
    assert len(s.test) == test_lots
    assert sorted(s.train) == sorted(lot for fold in s.folds for lot in fold)
    assert all(s.folds)
    sizes = [len(f) for f in s.folds]
    assert max(sizes) - min(sizes) <= 1


def test_stratified_test_set_spans_the_stress_range():
    lots = _lots(list(range(10, 310, 10)))  # 30 lots
    s = make_splits(lots, SplitParams(test_lots=6))
    ranks = sorted(int(lot[1:]) // 5 for lot in s.test)
    assert ranks == list(range(6))  # one test lot from each sixth of the stress ranking


def test_deterministic_for_a_seed():
    lots = _lots(list(range(30)))
    assert make_splits(lots, SplitParams(seed=3)) == make_splits(lots, SplitParams(seed=3))
    assert make_splits(lots, SplitParams(seed=3)) != make_splits(lots, SplitParams(seed=4))


def test_a_leak_is_refused_naming_the_lot():
    leak = Splits(test=["L1"], folds=[["L1", "L2"], ["L3"]], train=["L1", "L2", "L3"])
    with pytest.raises(DataError, match="lot L1 is in fold 0 and in the test lots"):
        leak.check()


@settings(max_examples=100, deadline=None)
@given(
    stresses=st.lists(st.floats(1, 500, allow_nan=False), min_size=6, max_size=60),
    n_folds=st.integers(2, 5),
    test_share=st.floats(0.05, 0.4),
    seed=st.integers(0, 2**32 - 1),
    stratify=st.sampled_from(["stress", "none"]),
)
def test_tuning_folds_and_training_lots_never_leak(stresses, n_folds, test_share, seed, stratify):
    lots = _lots(stresses)
    test_lots = max(1, int(len(lots) * test_share))
    assume(len(lots) - test_lots >= n_folds)
    splits = make_splits(
        lots, SplitParams(n_folds=n_folds, test_lots=test_lots, stratify=stratify, seed=seed)
    )
    test = set(splits.test)
    folds = splits.cv_folds()
    assert len(folds) == n_folds
    seen_val: list[str] = []
    for fit, val in folds:
        assert val and fit
        assert not set(fit) & set(val)  # a validation lot never trains its own fold's model
        assert not (set(fit) | set(val)) & test  # tuning never sees a test lot
        assert sorted(fit + val) == sorted(splits.train)
        assert len(set(fit)) == len(fit)
        seen_val += val
    assert sorted(seen_val) == sorted(splits.train)  # every training lot validated once
    final = splits.training_lots()
    assert not set(final) & test and sorted(final) == sorted(splits.train)


@pytest.mark.parametrize(
    ("splits", "message"),
    [
        ({"test": ["A"], "folds": [["A", "B"], ["C"]], "train": ["A", "B", "C"]}, "lot A is in"),
        ({"test": ["X"], "folds": [["A", "B"], ["B"]], "train": ["A", "B"]}, "lot B is in folds"),
        ({"test": ["X"], "folds": [["A"], ["B"]], "train": ["A", "B", "C"]}, "not the union"),
        ({"test": ["X"], "folds": [["A", "B"]], "train": ["A", "B"]}, "at least 2 CV folds"),
    ],
)
def test_bad_splits_are_refused_naming_the_lot(tmp_path, splits, message):
    path = tmp_path / "splits.json"
    path.write_text(json.dumps(splits))
    read = read_splits(path)  # well-formed files load; the leak checks refuse them
    with pytest.raises(DataError, match=message):
        read.cv_folds(str(path))
    with pytest.raises(DataError, match=message):
        read.training_lots(str(path))


def test_splits_round_trip_and_malformed_files_are_data_errors(tmp_path):
    s = make_splits(_lots(list(range(12))), SplitParams(n_folds=2, test_lots=2))
    write_splits(tmp_path / "splits.json", s)
    assert read_splits(tmp_path / "splits.json") == s
    (tmp_path / "bad.json").write_text(json.dumps({"test": ["A"], "folds": "nope"}))
    with pytest.raises(DataError, match="bad.json"):
        read_splits(tmp_path / "bad.json")
    with pytest.raises(DataError, match="unreadable"):
        read_splits(tmp_path / "missing.json")


def test_too_few_lots_is_a_params_error():
    with pytest.raises(ParamsError, match="split.test_lots"):
        make_splits(_lots([1, 2, 3, 4]), SplitParams(n_folds=4, test_lots=2))
