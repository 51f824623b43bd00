"""DVC stage `split`: lot-wise test set and cross-validation folds (no lot on both sides)."""

import argparse
from pathlib import Path

from semknobs import tracking
from semknobs.config import load_section
from semknobs.data.figures import split_figure
from semknobs.data.quality import require_validated
from semknobs.data.schemas import read_lots
from semknobs.data.split import SplitParams, check_disjoint, make_splits
from semknobs.stage import save_figure, stage_main, write_json


@stage_main
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--lots", type=Path, required=True)
    parser.add_argument("--validation", type=Path, required=True, help="validate's summary.json")
    parser.add_argument("--out", type=Path, required=True, help="splits JSON to write")
    parser.add_argument("--reports", type=Path, required=True)
    args = parser.parse_args(argv)
    params = load_section(SplitParams, "split", args.params)
    with tracking.stage_run("split", params=params, deps=[args.lots, args.validation]):
        require_validated(args.validation)
        lots = read_lots(args.lots)
        splits = make_splits(lots, params)
        check_disjoint(splits)
        write_json(args.out, splits)
        figure = save_figure(split_figure(lots, splits), args.reports / "splits.png")
        tracking.log_dir(figure.parent, "figures")
        tracking.log_metrics(
            {"split/n_test_lots": len(splits["test"]), "split/n_train_lots": len(splits["train"])}
        )


if __name__ == "__main__":
    raise SystemExit(main())
