"""DVC stage `meter` (synthetic studies): the meter's readings against the true attributes.

Reads the ground truth, so it is an evaluation stage; it also writes metrics/data.json.
"""

import argparse
from pathlib import Path

import pandas as pd

from semknobs import tracking
from semknobs.attributes import ATTRIBUTES
from semknobs.config import load_section
from semknobs.data.figures import meter_figure
from semknobs.data.meter_check import MeterCheckParams, meter_metrics, spearman_matrix
from semknobs.data.truth import read_truth, tile_truth
from semknobs.errors import DataError
from semknobs.stage import save_figure, stage_main, write_metrics


@stage_main
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--tiles-dir", type=Path, required=True)
    parser.add_argument("--readings", type=Path, required=True, help="the measure stage's CSV")
    parser.add_argument("--truth-dir", type=Path, required=True)
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--reports", type=Path, required=True)
    args = parser.parse_args(argv)
    params = load_section(MeterCheckParams, "meter", args.params)
    deps = [args.readings, args.truth_dir]
    with tracking.stage_run("meter", params=params, deps=deps):
        manifest = pd.read_csv(args.tiles_dir / "manifest.csv", dtype={"lot": str})
        readings = pd.read_csv(args.readings, dtype={"lot": str})
        truth = tile_truth(read_truth(args.truth_dir).fields, manifest)
        missing = truth[list(ATTRIBUTES)].isna().any(axis=1)
        if missing.any():
            lots = sorted(manifest.loc[missing, "lot"].unique())
            raise DataError(
                f"{args.truth_dir}: no ground truth for {int(missing.sum())} tiles of lots "
                f"{lots[:10]}: the meter check runs on the synthetic study only "
                "(for your own data, run the stages you need, e.g. `dvc repro split measure`)"
            )
        matrix = spearman_matrix(readings, truth)
        metrics = {
            "data/n_lots": int(manifest["lot"].nunique()),
            "data/n_tiles": len(manifest),
            **meter_metrics(matrix, readings),
        }
        write_metrics(args.metrics, metrics)
        tracking.log_metrics(metrics)
        figure = save_figure(meter_figure(readings, truth, matrix), args.reports / "meter.png")
        tracking.log_dir(figure.parent, "figures")
        for a in ATTRIBUTES:
            flag = "ok" if matrix.loc[a, a] >= params.target_rho else "BELOW TARGET"
            print(
                f"meter/spearman_{a} = {matrix.loc[a, a]:+.3f} ({flag}, target {params.target_rho})"
            )


if __name__ == "__main__":
    raise SystemExit(main())
