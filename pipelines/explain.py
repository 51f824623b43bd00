"""DVC stage `explain`: concept explanations of the regressor through the AttGAN's knobs, with
Captum and correlation baselines, and (synthetic data) the referee's scores on held-out lots
(see semknobs.stages.explain)."""

import argparse
from pathlib import Path

from semknobs import tracking
from semknobs.config import load_section
from semknobs.evaluation.oracle import Synthetic
from semknobs.stage import publish, stage_main
from semknobs.stages.explain import ExplainPaths, ExplainStageParams, run


@stage_main
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--attgan-dir", type=Path, required=True)
    parser.add_argument("--regressor-dir", type=Path, required=True)
    parser.add_argument("--tiles-dir", type=Path, required=True)
    parser.add_argument("--lots", type=Path, required=True)
    parser.add_argument("--splits", type=Path, required=True)
    parser.add_argument("--truth-dir", type=Path, help="synthetic ground truth: adds the referee")
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--reports", type=Path, required=True)
    args = parser.parse_args(argv)
    params = load_section(ExplainStageParams, "explain", args.params)
    synthetic = Synthetic.from_params(args.truth_dir, args.params)
    paths = ExplainPaths(
        attgan_dir=args.attgan_dir,
        regressor_dir=args.regressor_dir,
        tiles_dir=args.tiles_dir,
        lots=args.lots,
        splits=args.splits,
        metrics=args.metrics,
        reports=args.reports,
        synthetic=synthetic,
    )
    deps = [args.attgan_dir, args.regressor_dir, args.tiles_dir, args.lots]
    with tracking.stage_run("explain", params=params, deps=deps):
        publish("explain", run(params, paths))


if __name__ == "__main__":
    raise SystemExit(main())
