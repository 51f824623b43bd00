"""Lot-wise splits: a held-out test set of lots plus K cross-validation folds over the rest.

All tiles of a lot share its label, so any split below the lot level leaks the answer. Lots are
the unit everywhere: no lot is ever in more than one of {test, fold 1, ..., fold K}.

Stratified by peak stress (default): lots are sorted by stress and cut into consecutive groups;
one lot per group goes to the test set and the rest are dealt round-robin (from a random offset)
to the folds, so the test set and every fold span the whole stress range.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from semknobs.errors import ParamsError


@dataclass(frozen=True)
class SplitParams:
    n_folds: int = 4
    test_lots: int = 6
    stratify: Literal["stress", "none"] = "stress"
    seed: int = 17


def make_splits(lots: pd.DataFrame, params: SplitParams) -> dict:
    """``{"test": [...], "folds": [[...], ...], "train": [...]}`` of lot ids (JSON-ready)."""
    n = len(lots)
    if params.n_folds < 2:
        raise ParamsError(f"split.n_folds: need at least 2 folds, got {params.n_folds}")
    if params.test_lots < 1 or n - params.test_lots < params.n_folds:
        raise ParamsError(
            f"split.test_lots = {params.test_lots}, split.n_folds = {params.n_folds}: {n} lots "
            "cannot make that many test lots plus non-empty folds; lower one of them"
        )
    rng = np.random.default_rng(params.seed)
    if params.stratify == "stress":
        order = lots.sort_values(["peak_stress", "lot"])["lot"].to_list()
    else:
        order = list(rng.permutation(lots["lot"].to_numpy()))
    groups = np.array_split(np.arange(n), params.test_lots)
    test_idx = {int(rng.choice(g)) for g in groups}
    test = sorted(order[i] for i in test_idx)
    rest = [order[i] for i in range(n) if i not in test_idx]
    offset = int(rng.integers(params.n_folds))
    folds: list[list[str]] = [[] for _ in range(params.n_folds)]
    for i, lot in enumerate(rest):
        folds[(i + offset) % params.n_folds].append(lot)
    return {
        "method": f"lot-wise, stratified by {params.stratify}",
        "seed": params.seed,
        "test": test,
        "folds": [sorted(f) for f in folds],
        "train": sorted(rest),
    }


def check_disjoint(splits: dict) -> None:
    """Raise if any lot appears twice across the test set and the folds."""
    seen: dict[str, str] = {}
    for name, members in [("test", splits["test"])] + [
        (f"fold {i}", f) for i, f in enumerate(splits["folds"])
    ]:
        for lot in members:
            if lot in seen:
                raise AssertionError(f"lot {lot} is in both {seen[lot]} and {name}")
            seen[lot] = name
