"""``semknobs``: the command for people who use the results without running the pipeline.

semknobs measure IMAGE...        attribute-meter readings of tiles (or of whole scans, --tile)
semknobs ui                      the MLflow UI over mlruns/, bound to 127.0.0.1
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from semknobs import __version__
from semknobs.errors import SemknobsError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="semknobs", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"semknobs {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    measure = commands.add_parser("measure", help="measure size, porosity, dispersity, facetness")
    measure.add_argument("images", nargs="+", type=Path)
    measure.add_argument(
        "--tile",
        action="store_true",
        help="treat inputs as whole scans: crop the bar and tile them like the pipeline does",
    )
    measure.add_argument("--params", default="params.yaml", help="for --tile: the tile section")
    measure.add_argument("--csv", type=Path, help="also write the readings to this CSV")

    profile = commands.add_parser(
        "profile", help="lay a profile (profiles/<name>.yaml) over params"
    )
    profile.add_argument("name", help="e.g. paper")
    profile.add_argument("--params", default="params.yaml")
    profile.add_argument("--dir", default="profiles", help="where profiles live")

    ui = commands.add_parser("ui", help="MLflow UI over the local store")
    ui.add_argument("--host", default="127.0.0.1")
    ui.add_argument("--port", type=int, default=5000)
    ui.add_argument("--store", default="sqlite:///mlruns/mlflow.db")

    args = parser.parse_args(argv)
    try:
        if args.command == "measure":
            return _measure(args)
        if args.command == "profile":
            return _profile(args)
        ui_args = ["--backend-store-uri", args.store, "--host", args.host, "--port", str(args.port)]
        return subprocess.call([sys.executable, "-m", "mlflow", "ui", *ui_args])
    except SemknobsError as exc:
        print(f"semknobs: error: {exc}", file=sys.stderr)
        return 2


def _measure(args: argparse.Namespace) -> int:
    import numpy as np
    import pandas as pd

    from semknobs.config import load_section
    from semknobs.data.scans import read_scan
    from semknobs.data.tiles import TileParams, tile_scan
    from semknobs.measure import measure_tiles

    params = TileParams()
    if args.tile and Path(args.params).exists():
        params = load_section(TileParams, "tile", args.params)
    tables = []
    for path in args.images:
        image = read_scan(path)
        if args.tile:
            tiles, rc = tile_scan(image, params, path)
            where = {"row": rc[:, 0], "col": rc[:, 1]}
        else:
            tiles, where = image[None], {}
        readings = measure_tiles(tiles, progress=len(tiles) > 50)
        tables.append(
            pd.DataFrame({"image": str(path), **where}, index=readings.index).join(readings)
        )
    table = pd.concat(tables, ignore_index=True)
    if args.csv:
        table.to_csv(args.csv, index=False)
    with pd.option_context("display.width", 120, "display.max_rows", 200):
        print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    if args.tile and len(table) > 1:
        print("\nmean per image:")
        print(
            table.groupby("image")[["size", "porosity", "dispersity", "facetness"]].agg(np.nanmean)
        )
    return 0


def _profile(args: argparse.Namespace) -> int:
    import yaml

    from semknobs.atomic import write_text
    from semknobs.config import deep_merge, load_overrides, load_params

    overrides = load_overrides(Path(args.dir) / f"{args.name}.yaml")
    merged = deep_merge(load_params(args.params), overrides)
    write_text(args.params, yaml.safe_dump(merged, sort_keys=False))
    print(f"semknobs: laid profile {args.name!r} over {args.params}; review with `git diff`")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
