"""DVC stage `evaluate_attgan`: the AttGAN on the held-out test lots, with the meter's ceiling
on a synthetic study (see semknobs.stages.evaluate_attgan)."""

import argparse
from pathlib import Path

from semknobs import tracking
from semknobs.config import load_section
from semknobs.evaluation.oracle import Synthetic
from semknobs.stage import publish, stage_main
from semknobs.stages.evaluate_attgan import EvaluateAttGANParams, EvaluateAttGANPaths, run


@stage_main
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--attgan-dir", type=Path, required=True)
    parser.add_argument("--tiles-dir", type=Path, required=True)
    parser.add_argument("--lots", type=Path, required=True)
    parser.add_argument("--splits", type=Path, required=True)
    parser.add_argument("--truth-dir", type=Path, help="synthetic ground truth: adds the ceiling")
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--reports", type=Path, required=True)
    args = parser.parse_args(argv)
    params = load_section(EvaluateAttGANParams, "evaluate_attgan", args.params)
    synthetic = Synthetic.from_params(args.truth_dir, args.params)
    paths = EvaluateAttGANPaths(
        attgan_dir=args.attgan_dir,
        tiles_dir=args.tiles_dir,
        lots=args.lots,
        splits=args.splits,
        metrics=args.metrics,
        reports=args.reports,
        synthetic=synthetic,
    )
    deps = [args.attgan_dir, args.tiles_dir, args.lots, args.splits]
    with tracking.stage_run("evaluate_attgan", params=params, deps=deps):
        publish("evaluate_attgan", run(params, paths))


if __name__ == "__main__":
    raise SystemExit(main())
