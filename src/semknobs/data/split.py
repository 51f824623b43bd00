"""Lot-wise splits: a held-out test set of lots plus K cross-validation folds over the rest.

All tiles of a lot share its label, so any split below the lot level leaks the answer. Lots are
the unit everywhere: no lot is ever in more than one of {test, fold 1, ..., fold K}.

Stratified by peak stress (default): lots are sorted by stress and cut into consecutive groups;
one lot per group goes to the test set and the rest are dealt round-robin (from a random offset)
to the folds, so the test set and every fold span the whole stress range.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from semknobs.config import from_mapping, to_mapping
from semknobs.errors import DataError, ParamsError


@dataclass(frozen=True)
class SplitParams:
    n_folds: int = 4
    test_lots: int = 6
    stratify: Literal["stress", "none"] = "stress"
    seed: int = 17


@dataclass(frozen=True)
class Splits:
    """The lot-wise splits (``data/splits.json``): test lots, CV folds, and ``train`` (the union
    of the folds: what final models train on)."""

    test: list[str]
    folds: list[list[str]]
    train: list[str]
    method: str = ""
    seed: int | None = None

    def check(self, where: str = "splits") -> None:
        """Refuse (naming the lot) a lot in two folds, a fold lot that is also a test lot,
        fewer than 2 or empty folds, and a ``train`` list that is not the union of the folds."""
        if len(self.folds) < 2:
            raise DataError(f"{where}: need at least 2 CV folds, got {len(self.folds)}")
        test = set(self.test)
        seen: dict[str, int] = {}
        for k, fold in enumerate(self.folds):
            if not fold:
                raise DataError(f"{where}: fold {k} is empty")
            for lot in fold:
                if lot in test:
                    raise DataError(f"{where}: lot {lot} is in fold {k} and in the test lots")
                if lot in seen:
                    raise DataError(f"{where}: lot {lot} is in folds {seen[lot]} and {k}")
                seen[lot] = k
        if sorted(seen) != sorted(self.train):
            raise DataError(f"{where}: 'train' is not the union of the folds")

    def cv_folds(self, where: str = "splits") -> list[tuple[list[str], list[str]]]:
        """``[(fit lots, validation lots), ...]``, one per fold, after :meth:`check`."""
        self.check(where)
        return [
            ([lot for j, f in enumerate(self.folds) if j != k for lot in f], list(fold))
            for k, fold in enumerate(self.folds)
        ]

    def training_lots(self, where: str = "splits") -> list[str]:
        """The lots a final model trains on (all folds), after :meth:`check`."""
        self.check(where)
        return sorted(self.train)


def read_splits(path: str | Path) -> Splits:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable splits file ({exc}); run the split stage") from None
    try:
        return from_mapping(Splits, data, where=str(path))
    except ParamsError as exc:
        raise DataError(f"{exc}; run the split stage") from None


def write_splits(path: str | Path, splits: Splits) -> None:
    """``splits.json``: method and seed first, then the lots (the layout DVC has hashed)."""
    from semknobs.stage import write_json

    data = to_mapping(splits)
    write_json(path, {key: data[key] for key in ("method", "seed", "test", "folds", "train")})


def make_splits(lots: pd.DataFrame, params: SplitParams) -> Splits:
    """Test lots and folds of lot ids, checked for leaks."""
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
    splits = Splits(
        test=test,
        folds=[sorted(f) for f in folds],
        train=sorted(rest),
        method=f"lot-wise, stratified by {params.stratify}",
        seed=params.seed,
    )
    splits.check()
    return splits
