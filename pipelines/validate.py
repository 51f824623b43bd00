"""DVC stage `validate`: pandera schemas + Great Expectations suite; stops the pipeline on failure.

The readable report (reports/validate/report.txt) and GX Data Docs are written either way and
logged to MLflow; on failure the report goes to stderr and the stage exits non-zero.
"""

import argparse
from pathlib import Path

from semknobs import tracking
from semknobs.config import load_section
from semknobs.data.quality import ValidateParams, validate_dataset
from semknobs.stage import stage_main


@stage_main
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--lots", type=Path, required=True)
    parser.add_argument("--tiles-dir", type=Path, required=True)
    parser.add_argument("--reports", type=Path, required=True)
    args = parser.parse_args(argv)
    params = load_section(ValidateParams, "validate", args.params)
    with tracking.stage_run("validate", params=params, deps=[args.lots, args.tiles_dir]):
        try:
            summary = validate_dataset(
                params=params, lots_csv=args.lots, tiles_dir=args.tiles_dir, report_dir=args.reports
            )
        finally:
            if args.reports.exists():
                tracking.log_dir(args.reports, "validation")
        tracking.log_metrics({k: v for k, v in summary.items() if k.startswith("data/")})
        print(f"validate: {args.lots} and {args.tiles_dir} passed every check")


if __name__ == "__main__":
    raise SystemExit(main())
