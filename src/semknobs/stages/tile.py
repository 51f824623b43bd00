"""Stage ``tile``: crop the information bars, cut and resize tiles, write one shard per lot and
the manifest; a contact sheet of lots ordered by each label."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from semknobs.data.figures import contact_sheet
from semknobs.data.schemas import read_lots
from semknobs.data.tiles import TileParams, load_tiles, tile_dataset
from semknobs.errors import SemknobsError
from semknobs.stage import StageContext, StageResult, save_figure

NAME = "tile"
Params = TileParams
DEPS = ("raw_dir",)


@dataclass(frozen=True)
class Paths:
    raw_dir: Path
    lots: Path = field(metadata={"help": "labels, to order the contact sheet"})
    tiles_dir: Path
    reports: Path


def run(params: TileParams, paths: Paths, ctx: StageContext | None = None) -> StageResult:
    manifest = tile_dataset(params=params, raw_dir=paths.raw_dir, tiles_dir=paths.tiles_dir)
    metrics = {
        "data/n_lots": manifest["lot"].nunique(),
        "data/n_scans": manifest.groupby(["lot", "scan"]).ngroups,
        "data/n_tiles": len(manifest),
    }
    result = StageResult(metrics, {"figures": paths.reports})
    # the sheet is only a picture: label problems are the validate stage's to report, but the
    # declared output exists either way (a placeholder page says why there is no sheet)
    try:
        lots = read_lots(paths.lots)
    except SemknobsError as exc:
        result.summary.append(f"contact sheet skipped: {exc}")
        lots = None
    tiles, manifest = load_tiles(paths.tiles_dir)
    save_figure(contact_sheet(tiles, manifest, lots), paths.reports / "contact_sheet.png")
    return result
