"""DVC stage `tile`: crop information bars, cut and resize tiles, write shards + manifest."""

import argparse
from pathlib import Path

from semknobs import tracking
from semknobs.config import load_section
from semknobs.data.figures import contact_sheet
from semknobs.data.schemas import read_lots
from semknobs.data.tiles import TileParams, load_tiles, tile_dataset
from semknobs.errors import SemknobsError
from semknobs.stage import save_figure, stage_main


@stage_main
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--raw-dir", type=Path, required=True)
    parser.add_argument("--lots", type=Path, required=True, help="labels, to order the sheet")
    parser.add_argument("--tiles-dir", type=Path, required=True)
    parser.add_argument("--reports", type=Path, required=True)
    args = parser.parse_args(argv)
    params = load_section(TileParams, "tile", args.params)
    with tracking.stage_run("tile", params=params, deps=[args.raw_dir]):
        manifest = tile_dataset(params=params, raw_dir=args.raw_dir, tiles_dir=args.tiles_dir)
        tracking.log_metrics(
            {
                "data/n_lots": manifest["lot"].nunique(),
                "data/n_scans": manifest.groupby(["lot", "scan"]).ngroups,
                "data/n_tiles": len(manifest),
            }
        )
        try:  # the sheet is only a picture: label problems are the validate stage's to report
            lots = read_lots(args.lots)
        except SemknobsError as exc:
            print(f"tile: contact sheet skipped: {exc}")
            return
        tiles, manifest = load_tiles(args.tiles_dir)
        figure = save_figure(
            contact_sheet(tiles, manifest, lots), args.reports / "contact_sheet.png"
        )
        tracking.log_dir(figure.parent, "figures")


if __name__ == "__main__":
    raise SystemExit(main())
