"""``semknobs``: the command for people who use the results without running the pipeline.

semknobs measure IMAGE...        attribute-meter readings of tiles (or of whole scans, --tile)
semknobs explain IMAGE... --out DIR
                                 which knob changes raise or lower the predicted peak stress
semknobs promote --model NAME | --all
                                 move alias `champion` to a version that passes its gates
semknobs serve                   the explainer as a REST service on 127.0.0.1
semknobs ui                      the MLflow UI over mlruns/, bound to 127.0.0.1
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from semknobs import __version__
from semknobs.errors import SemknobsError
from semknobs.names import EXPLAINER_URI


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

    explain = commands.add_parser("explain", help="explain tiles or whole scans in knob changes")
    explain.add_argument("images", nargs="+", type=Path, help="tiles or whole scans")
    explain.add_argument("--model", default=EXPLAINER_URI, help=f"default {EXPLAINER_URI}")
    explain.add_argument("--out", type=Path, required=True, help="output folder")
    explain.add_argument(
        "--target",
        action="append",
        help="higher, lower or a stress in MPa (repeatable; default: higher and lower)",
    )
    explain.add_argument(
        "--attributes",
        nargs=4,
        type=float,
        metavar=("SIZE", "POROSITY", "DISPERSITY", "FACETNESS"),
        help="the inputs' expert scores (default: estimated per tile by the AttGAN)",
    )
    explain.add_argument("--lam", type=float, help="Eq. 2 lambda (default: the bundle's)")
    explain.add_argument("--steps", type=int, help="Adam steps (default: the bundle's)")
    explain.add_argument("--delta", type=float, help="requested change (default: the bundle's)")

    promote = commands.add_parser("promote", help="gated promotion to alias champion")
    which = promote.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", help="registered model name, e.g. semknobs-regressor")
    which.add_argument("--all", action="store_true", help="every model with gates in params")
    promote.add_argument("--version", help="version to promote (default: the candidate)")
    promote.add_argument("--force", action="store_true", help="promote despite failed gates")
    promote.add_argument("--reason", help="why (required with --force; recorded)")
    promote.add_argument("--params", default="params.yaml", help="the promote section")

    serve = commands.add_parser("serve", help="serve the explainer (mlflow models serve)")
    serve.add_argument("--model", default=EXPLAINER_URI, help=f"default {EXPLAINER_URI}")
    serve.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1 (loopback only)")
    serve.add_argument("--port", type=int, default=5001)
    serve.add_argument("--workers", type=int, default=1)

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
        if args.command == "explain":
            return _explain(args)
        if args.command == "promote":
            return _promote(args)
        if args.command == "serve":
            return _serve(args)
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
    from semknobs.meter import measure_tiles

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
    from semknobs.config import load_overrides
    from semknobs.profiles import apply_overlay, dvc_set_args

    overrides = load_overrides(Path(args.dir) / f"{args.name}.yaml")
    apply_overlay(Path(args.params), overrides)
    print(f"semknobs: laid profile {args.name!r} over {args.params} (comments kept); review with")
    print("  git diff; the same as a DVC experiment instead:")
    print("  git checkout params.yaml && dvc exp run " + " ".join(dvc_set_args(overrides)))
    return 0


def _explain(args: argparse.Namespace) -> int:
    from semknobs.explain.bundle import KnobExplainer
    from semknobs.explain.files import explain_paths

    missing = [str(p) for p in args.images if not p.is_file()]
    if missing:
        raise SemknobsError(f"no such file: {', '.join(missing)}")
    explainer = KnobExplainer.load(args.model)
    settings = {"lam": args.lam, "steps": args.steps, "delta": args.delta}
    try:
        summaries = explain_paths(
            args.images,
            explainer=explainer,
            out_dir=args.out,
            targets=args.target or ("higher", "lower"),
            settings=settings,
            attributes=args.attributes,
        )
    except ValueError as exc:  # bad --target/--lam/--steps
        raise SemknobsError(str(exc)) from None
    for s in summaries:
        parts = [
            f"{t}: {v['baseline_mpa']:.1f} -> {v['achieved_mpa']:.1f} MPa "
            f"({100 * v['success_rate']:.0f}% reached)"
            for t, v in s["targets"].items()
        ]
        print(f"{s['input']}: {s['tiles']} tile(s); " + "; ".join(parts))
    print(f"semknobs: wrote CSV, JSON and PNG per input to {args.out}")
    return 0


def _promote(args: argparse.Namespace) -> int:
    from semknobs import tracking
    from semknobs.config import load_section
    from semknobs.lifecycle.promote import PromoteParams, promote

    params = load_section(PromoteParams, "promote", args.params)
    if args.all and args.version:
        raise SemknobsError("--version goes with --model, not --all")
    tracking.configure()
    names = params.names() if args.all else [args.model]
    refused = 0
    for name in names:
        result = promote(
            name, params=params, version=args.version, force=args.force, reason=args.reason
        )
        for r in result.results:
            mark = "skip" if r.skipped else ("pass" if r.passed else "FAIL")
            print(f"  [{mark}] {r.text}")
        if result.promoted:
            how = " (forced)" if result.forced else ""
            was = f"; was v{result.previous}" if result.previous else ""
            print(f"{name} v{result.version} is now @{params.alias}{how}{was}")
        else:
            refused += 1
            failed = ", ".join(r.text for r in result.failed)
            print(
                f"semknobs: refused to promote {name} v{result.version}: {failed}. "
                "Override with --force --reason TEXT.",
                file=sys.stderr,
            )
    return 1 if refused else 0


def _serve(args: argparse.Namespace) -> int:
    from semknobs import registry, tracking
    from semknobs.serving.client import interpreter_env

    uri = tracking.configure()
    registry.check_registered(args.model)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"semknobs: warning: serving on {args.host}, reachable from other machines")
    command = [
        sys.executable, "-m", "mlflow", "models", "serve", "-m", args.model,
        "--env-manager", "local", "--host", args.host, "--port", str(args.port),
        "--workers", str(args.workers),
    ]  # fmt: skip
    env = interpreter_env(MLFLOW_TRACKING_URI=uri)  # mlflow execs `uvicorn` by name
    print(f"semknobs: serving {args.model} on http://{args.host}:{args.port}/invocations")
    return subprocess.call(command, env=env)


if __name__ == "__main__":
    raise SystemExit(main())
