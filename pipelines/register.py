"""DVC stage `register`: build the explainer bundle and register the AttGAN, the regressor and
the explainer as new versions (alias `candidate`) in the MLflow model registry.

The AttGAN and regressor versions link to their training runs (the training stages logged the
models; their `logged_model.json` says where). The bundle carries the `explain` stage's search
settings and the `tile` stage's tiling, so `semknobs explain` and the served explainer reproduce
the stage's numbers. Promotion to `champion` is a separate, gated step: `semknobs promote`.
"""

import argparse
import json
from pathlib import Path

from semknobs import registry, tracking
from semknobs.config import load_params, load_section
from semknobs.data.dataset import read_splits
from semknobs.data.schemas import read_lots
from semknobs.data.tiles import TileParams
from semknobs.errors import DataError
from semknobs.explain.bundle import save_explainer_dir
from semknobs.explain.counterfactual import search_params_from
from semknobs.lifecycle.register import RegisterParams, register_models
from semknobs.stage import stage_main, write_json


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable ({exc})") from None


@stage_main
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--attgan-dir", type=Path, required=True)
    parser.add_argument("--regressor-dir", type=Path, required=True)
    parser.add_argument("--attgan-logged", type=Path, help="train_attgan's logged_model.json")
    parser.add_argument("--regressor-logged", type=Path, help="train_regressor's logged_model.json")
    parser.add_argument(
        "--attgan-metrics", type=Path, nargs="+", required=True, help="evaluation + training"
    )
    parser.add_argument("--regressor-metrics", type=Path, required=True)
    parser.add_argument("--explain-metrics", type=Path, required=True)
    parser.add_argument("--lots", type=Path, required=True)
    parser.add_argument("--splits", type=Path, required=True)
    parser.add_argument("--explainer-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="registered versions (JSON)")
    args = parser.parse_args(argv)
    params = load_section(RegisterParams, "register", args.params)
    counterfactual = search_params_from(load_params(args.params), str(args.params))
    tile = load_section(TileParams, "tile", args.params)

    labels = read_lots(args.lots)
    train = labels[labels["lot"].isin(read_splits(args.splits)["train"])]
    stress_range = float(train["peak_stress"].max() - train["peak_stress"].min())
    metrics = {
        "attgan": {k: v for path in args.attgan_metrics for k, v in _read_json(path).items()},
        "regressor": _read_json(args.regressor_metrics),
        "explainer": _read_json(args.explain_metrics),
    }
    logged = {
        kind: registry.LoggedModelRef.from_dict(_read_json(path)) if path else None
        for kind, path in (("attgan", args.attgan_logged), ("regressor", args.regressor_logged))
    }
    save_explainer_dir(
        args.explainer_dir,
        attgan_dir=args.attgan_dir,
        regressor_dir=args.regressor_dir,
        stress_range=stress_range,
        counterfactual=counterfactual,
        tile={k: v for k, v in vars(tile).items() if k != "n_jobs"},
        metrics=metrics["explainer"],
    )
    size = registry.read_config(args.explainer_dir)["img_size"]
    deps = [args.attgan_dir, args.regressor_dir, args.lots, args.splits]
    run_params = {"register": params, "explain.counterfactual": counterfactual}
    with tracking.stage_run("register", params=run_params, deps=deps) as run:
        versions = register_models(
            params=params,
            model_dirs={
                "attgan": args.attgan_dir,
                "regressor": args.regressor_dir,
                "explainer": args.explainer_dir,
            },
            logged=logged,
            metrics=metrics,
            descriptions={
                "attgan": f"AttGAN knob editor for {size}-px SEM tiles",
                "regressor": f"Peak-stress regressor for {size}-px SEM tiles",
                "explainer": "AttGAN + regressor + Eq. 2 knob search",
            },
            execution=tracking.execution_id(),
        )
        summary = {
            kind: {
                "name": v.name,
                "version": str(v.version),
                "alias": params.alias,
                "uri": f"models:/{v.name}/{v.version}",
                "run_id": v.run_id,
            }
            for kind, v in versions.items()
        }
        write_json(args.out, {"register_run": run.info.run_id, "versions": summary})
    for v in summary.values():
        print(f"register: {v['name']} v{v['version']} @{v['alias']} (run {v['run_id']})")
    print("register: promote with `semknobs promote --all` (gates in params.yaml: promote)")


if __name__ == "__main__":
    raise SystemExit(main())
