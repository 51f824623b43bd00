"""Stage ``check_meter`` (synthetic studies, evaluation): the attribute meter's readings of every
tile against the true per-tile attributes. Reads the ground truth; on other data it stops with
a clear message."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from semknobs.attributes import ATTRIBUTES
from semknobs.data.figures import meter_figure
from semknobs.data.truth import read_truth, tile_truth
from semknobs.errors import DataError
from semknobs.evaluation.meter import MeterCheckParams, meter_metrics, spearman_matrix
from semknobs.stage import StageContext, StageResult, save_figure, write_metrics

NAME = "check_meter"
Params = MeterCheckParams
DEPS = ("readings", "truth_dir")


@dataclass(frozen=True)
class Paths:
    tiles_dir: Path
    readings: Path = field(metadata={"help": "the measure stage's CSV"})
    truth_dir: Path
    metrics: Path
    reports: Path


def run(params: MeterCheckParams, paths: Paths, ctx: StageContext | None = None) -> StageResult:
    manifest = pd.read_csv(Path(paths.tiles_dir) / "manifest.csv", dtype={"lot": str})
    readings = pd.read_csv(paths.readings, dtype={"lot": str})
    truth = tile_truth(read_truth(paths.truth_dir).fields, manifest)
    missing = truth[list(ATTRIBUTES)].isna().any(axis=1)
    if missing.any():
        lots = sorted(manifest.loc[missing, "lot"].unique())
        raise DataError(
            f"{paths.truth_dir}: no ground truth for {int(missing.sum())} tiles of lots "
            f"{lots[:10]}: the meter check runs on the synthetic study only "
            "(for your own data, run the stages you need, e.g. `dvc repro split measure`)"
        )
    matrix = spearman_matrix(readings, truth)
    metrics = {
        "data/n_lots": int(manifest["lot"].nunique()),
        "data/n_tiles": len(manifest),
        **meter_metrics(matrix, readings),
    }
    write_metrics(paths.metrics, metrics)
    save_figure(meter_figure(readings, truth, matrix), paths.reports / "meter.png")
    summary = [
        f"meter/spearman_{a} = {matrix.loc[a, a]:+.3f} "
        f"({'ok' if matrix.loc[a, a] >= params.target_rho else 'BELOW TARGET'}, "
        f"target {params.target_rho})"
        for a in ATTRIBUTES
    ]
    return StageResult(metrics, {"figures": paths.reports}, summary)
