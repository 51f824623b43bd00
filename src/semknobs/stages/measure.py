"""Stage ``measure``: the attribute meter's readings of every tile (one row per tile)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from semknobs.atomic import atomic_path
from semknobs.data.quality import require_validated
from semknobs.data.tiles import load_tiles
from semknobs.meter import MeasureParams, measure_tiles
from semknobs.stage import StageContext, StageResult

NAME = "measure"
Params = MeasureParams
DEPS = ("tiles_dir",)


@dataclass(frozen=True)
class Paths:
    tiles_dir: Path
    validation: Path = field(metadata={"help": "validate's summary.json"})
    out: Path = field(metadata={"help": "per-tile readings CSV"})


def run(params: MeasureParams, paths: Paths, ctx: StageContext | None = None) -> StageResult:
    require_validated(paths.validation)
    tiles, manifest = load_tiles(paths.tiles_dir)
    readings = measure_tiles(tiles, params.meter, n_jobs=params.n_jobs)
    table = manifest[["tile", "lot", "scan", "row", "col"]].join(readings)
    with atomic_path(paths.out) as tmp:
        table.to_csv(tmp, index=False, float_format="%.6g")
    return StageResult({f"meter/missing_{c}": float(readings[c].isna().mean()) for c in readings})
