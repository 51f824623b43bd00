"""Stage ``split``: lot-wise held-out test lots and cross-validation folds, stratified by
stress, checked so that no lot is on two sides (:mod:`semknobs.data.split`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from semknobs.data.figures import split_figure
from semknobs.data.quality import require_validated
from semknobs.data.schemas import read_lots
from semknobs.data.split import SplitParams, make_splits, write_splits
from semknobs.stage import StageContext, StageResult, save_figure

NAME = "split"
Params = SplitParams
DEPS = ("lots", "validation")


@dataclass(frozen=True)
class Paths:
    lots: Path
    validation: Path = field(metadata={"help": "validate's summary.json"})
    out: Path = field(metadata={"help": "splits JSON to write"})
    reports: Path


def run(params: SplitParams, paths: Paths, ctx: StageContext | None = None) -> StageResult:
    require_validated(paths.validation)
    lots = read_lots(paths.lots)
    splits = make_splits(lots, params)
    write_splits(paths.out, splits)
    save_figure(split_figure(lots, splits), paths.reports / "splits.png")
    metrics = {"split/n_test_lots": len(splits.test), "split/n_train_lots": len(splits.train)}
    return StageResult(metrics, {"figures": paths.reports})
