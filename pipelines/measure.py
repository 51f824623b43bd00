"""DVC stage `measure`: the attribute meter's readings for every tile (a per-tile table)."""

import argparse
from pathlib import Path

from semknobs import tracking
from semknobs.atomic import atomic_path
from semknobs.config import load_section
from semknobs.data.quality import require_validated
from semknobs.data.tiles import load_tiles
from semknobs.measure import MeasureParams, measure_tiles
from semknobs.stage import stage_main


@stage_main
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--tiles-dir", type=Path, required=True)
    parser.add_argument("--validation", type=Path, required=True, help="validate's summary.json")
    parser.add_argument("--out", type=Path, required=True, help="per-tile readings CSV")
    args = parser.parse_args(argv)
    params = load_section(MeasureParams, "measure", args.params)
    with tracking.stage_run("measure", params=params, deps=[args.tiles_dir]):
        require_validated(args.validation)
        tiles, manifest = load_tiles(args.tiles_dir)
        readings = measure_tiles(tiles, params.meter, n_jobs=params.n_jobs)
        table = manifest[["tile", "lot", "scan", "row", "col"]].join(readings)
        with atomic_path(args.out) as tmp:
            table.to_csv(tmp, index=False, float_format="%.6g")
        tracking.log_metrics(
            {f"meter/missing_{c}": float(readings[c].isna().mean()) for c in readings}
        )


if __name__ == "__main__":
    raise SystemExit(main())
