"""Stage ``tile``: crop the information bars, cut and resize tiles, write one shard per lot and
the manifest; a contact sheet of lots ordered by each label.

The labels only order the contact sheet. They are read leniently and never validated here:
``validate`` checks them, together with the tiles, and lists every problem at once. Whatever
state ``lots.csv`` is in, a successful run writes both declared outputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from semknobs.attributes import ATTRIBUTES
from semknobs.data.figures import contact_sheet
from semknobs.data.tiles import TileParams, load_tiles, skipped_files, tile_dataset
from semknobs.stage import StageContext, StageResult, save_figure

NAME = "tile"
Params = TileParams
DEPS = ("raw_dir",)
OUTS = ("tiles_dir", "reports")


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
    result = StageResult(metrics, {"figures": paths.reports}, skipped_files(paths.raw_dir))
    lots = sheet_labels(paths.lots, manifest["lot"])
    if lots is None:
        result.summary.append(
            f"contact sheet in lot-name order: no labels of the tiled lots could be read from "
            f"{paths.lots} (the validate stage checks it)"
        )
    tiles, manifest = load_tiles(paths.tiles_dir)
    save_figure(contact_sheet(tiles, manifest, lots), Path(paths.reports) / "contact_sheet.png")
    return result


def sheet_labels(lots_csv: Path, tiled: pd.Series) -> pd.DataFrame | None:
    """``lot`` and the attribute scores of ``lots_csv`` for ordering the sheet, or None.

    Lenient on purpose: unreadable scores become NaN (sorted last), repeated lots keep their
    first row, and only a file without a lot or attribute column, or without any tiled lot,
    gives None (lots in name order).
    """
    try:
        frame = pd.read_csv(lots_csv, dtype={"lot": str}, keep_default_na=False)
    except (OSError, ValueError):  # pandas' parser errors and UnicodeDecodeError included
        return None
    if any(c not in frame.columns for c in ("lot", *ATTRIBUTES)):
        return None
    frame = frame[["lot", *ATTRIBUTES]].drop_duplicates("lot")
    frame = frame[frame["lot"].isin(set(map(str, tiled)))]
    if frame.empty:
        return None
    scores = {a: pd.to_numeric(frame[a], errors="coerce") for a in ATTRIBUTES}
    return pd.DataFrame({"lot": frame["lot"], **scores}).reset_index(drop=True)
