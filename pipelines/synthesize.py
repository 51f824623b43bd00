"""DVC stage `synthesize`: render the synthetic SEM study (scans, lot labels, ground truth)."""

import argparse
from pathlib import Path

from semknobs import tracking
from semknobs.config import load_section
from semknobs.data.figures import design_figure
from semknobs.data.synth import SynthParams, synthesize
from semknobs.stage import save_figure, stage_main


@stage_main
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--raw-dir", type=Path, required=True)
    parser.add_argument("--lots", type=Path, required=True, help="lot labels CSV to write")
    parser.add_argument("--truth-dir", type=Path, required=True)
    parser.add_argument("--reports", type=Path, required=True)
    args = parser.parse_args(argv)
    params = load_section(SynthParams, "synthesize", args.params)
    with tracking.stage_run("synthesize", params=params):
        lots = synthesize(
            params=params, raw_dir=args.raw_dir, lots_csv=args.lots, truth_dir=args.truth_dir
        )
        figure = save_figure(design_figure(lots), args.reports / "design.png")
        tracking.log_dir(figure.parent, "figures")
        n_scans = sum(1 for _ in args.raw_dir.glob("*/*.*"))
        tracking.log_metrics({"data/n_lots": len(lots), "data/n_scans": n_scans})


if __name__ == "__main__":
    raise SystemExit(main())
