"""``semknobs``: the command for people who use the results without running the pipeline.

semknobs measure IMAGE...        attribute-meter readings of tiles (or of whole scans, --tile)
semknobs explain IMAGE... --out DIR
                                 which knob changes raise or lower the predicted peak stress
semknobs promote --model NAME | --all
                                 move alias `champion` to a version that passes its gates
semknobs compare [-n N]          headline metrics and changed params of the last N executions
semknobs serve                   the explainer as a REST service on 127.0.0.1
semknobs ui                      the MLflow UI over mlruns/, bound to 127.0.0.1
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from semknobs import __version__
from semknobs.errors import SemknobsError
from semknobs.names import EXPLAINER_URI, TRACKING_DB


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
        help="the inputs' expert scores (default: read per tile by the bundle's calibrated meter)",
    )
    explain.add_argument("--lam", type=float, help="Eq. 2 lambda (default: the bundle's)")
    explain.add_argument(
        "--steps", type=int, help="optimiser steps per start (default: the bundle's)"
    )
    explain.add_argument(
        "--optimizer", help="Eq. 2 optimiser, as params.yaml names it (default: the bundle's)"
    )
    explain.add_argument("--delta", type=float, help="requested change (default: the bundle's)")
    explain.add_argument(
        "--one-lot",
        metavar="NAME",
        help="the inputs are one lot's: also its knob gradient and meter regression over all "
        "their tiles (<NAME>_lot.json, <NAME>_lot_gradient.*)",
    )
    explain.add_argument(
        "--no-gradient",
        action="store_true",
        help="skip each input's knob gradient (<stem>_gradient.*, knob_gradient in the JSON)",
    )

    promote = commands.add_parser("promote", help="gated promotion to alias champion")
    which = promote.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", help="registered model name, e.g. semknobs-regressor")
    which.add_argument("--all", action="store_true", help="every model with gates in params")
    promote.add_argument("--version", help="version to promote (default: the candidate)")
    promote.add_argument("--force", action="store_true", help="promote despite failed gates")
    promote.add_argument("--reason", help="why (required with --force; recorded)")
    promote.add_argument("--params", default="params.yaml", help="the promote section")

    cmp = commands.add_parser(
        "compare", help="headline metrics and changed params of the last pipeline executions"
    )
    cmp.add_argument("-n", "--last", type=int, default=5, help="how many executions (default 5)")
    cmp.add_argument(
        "--execution", action="append", metavar="ID", help="these executions (repeatable)"
    )
    cmp.add_argument(
        "--metric",
        action="append",
        default=[],
        metavar="[KIND:]GLOB",
        help="more metric rows, e.g. 'test/*' or 'regressor:test/*_rmse' (repeatable)",
    )
    cmp.add_argument("--params", default="params.yaml", help="the promote gates (metric rows)")
    cmp.add_argument(
        "--all-workspaces",
        action="store_true",
        help="also runs made outside this git repository (e.g. make science's studies)",
    )
    cmp.add_argument("--width", type=int, help="table width (default: terminal, at most 100)")
    cmp.add_argument("--json", action="store_true", help="print JSON instead of the table")

    serve = commands.add_parser("serve", help="serve the explainer over HTTP (gated)")
    serve.add_argument("--model", default=EXPLAINER_URI, help=f"default {EXPLAINER_URI}")
    serve.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1 (loopback only)")
    serve.add_argument("--port", type=int, default=5001)
    serve.add_argument("--workers", type=int, default=1)
    serve.add_argument(
        "--deadline",
        type=float,
        help="seconds a request's search may run before it is stopped with a 504 "
        "(default: the bundle's explain.limits.deadline_s, 30)",
    )
    serve.add_argument(
        "--stop-timeout",
        type=float,
        default=10.0,
        metavar="S",
        help="on SIGTERM/SIGINT: seconds the server gets to finish before it is killed "
        "(default 10)",
    )

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
        if args.command == "compare":
            return _compare(args)
        if args.command == "serve":
            return _serve(args)
        return _ui(args)
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
    from semknobs.explain.agreement import agreement_line
    from semknobs.explain.bundle import KnobExplainer
    from semknobs.explain.edit_texture import crystal_line, summary_line
    from semknobs.explain.files import explain_paths, gradient_line, read_line

    missing = [str(p) for p in args.images if not p.is_file()]
    if missing:
        raise SemknobsError(f"no such file: {', '.join(missing)}")
    explainer = KnobExplainer.load(args.model)
    settings = {
        "lam": args.lam, "steps": args.steps, "delta": args.delta, "optimizer": args.optimizer,
    }  # fmt: skip
    try:
        summaries = explain_paths(
            args.images,
            explainer=explainer,
            out_dir=args.out,
            targets=args.target or ("higher", "lower"),
            settings=settings,
            attributes=args.attributes,
            gradient=not args.no_gradient,
            one_lot=args.one_lot,
        )
    except ValueError as exc:  # bad --target/--lam/--steps
        raise SemknobsError(str(exc)) from None
    for s in summaries:
        parts = [
            f"{t}: {v['baseline_mpa']:.1f} -> {v['achieved_mpa']:.1f} MPa "
            f"({100 * v['success_rate']:.0f}% reached)"
            for t, v in s.get("targets", {}).items()
        ] or [f"{len(s['inputs'])} input(s) as one lot"]
        print(f"{s.get('input') or 'lot ' + s['lot']}: {s['tiles']} tile(s); " + "; ".join(parts))
        for key, what, value in (
            ("knob_gradient", "knob gradient, gain-corrected", "gain_corrected"),
            ("meter_regression", "meter regression, no AttGAN", "slope"),
        ):
            if key in s:
                line = gradient_line(s[key], value)
                print(f"  {what} (MPa per knob unit, 95 % interval): {line}")
        if "agreed_signs" in s:
            print(f"  signs both agree on: {agreement_line(s['agreed_signs'])}")
    if summaries and "knob_read" in summaries[0]:
        print(
            "the regressor's read of each knob's edits (truth-free, over the lots the explainer "
            f"was built on; a low read: that knob's sign deserves little trust): "
            f"{read_line(summaries[0]['knob_read'])}"
        )
    if summaries and "edit_texture" in summaries[0]:
        print(summary_line(summaries[0]["edit_texture"]))
    if summaries and "crystal_read" in summaries[0]:
        print(crystal_line(summaries[0]["crystal_read"]))
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


def _compare(args: argparse.Namespace) -> int:
    import shutil

    from semknobs import compare, tracking
    from semknobs.config import load_params, section
    from semknobs.lifecycle.promote import PromoteParams

    if args.last < 1:
        raise SemknobsError(f"--last must be at least 1, got {args.last}")
    promote = PromoteParams()
    raw = load_params(args.params) if Path(args.params).exists() else {}
    if "promote" in raw:
        promote = section(PromoteParams, raw, "promote", args.params)
    elif not args.metric:
        print(f"semknobs: no promote gates in {args.params}: no metric rows", file=sys.stderr)
    if not os.environ.get("MLFLOW_TRACKING_URI") and not Path(TRACKING_DB).is_file():
        raise SemknobsError(
            f"no MLflow store here ({TRACKING_DB}): run in the project folder after `make repro`, "
            "or set MLFLOW_TRACKING_URI"
        )
    uri = tracking.configure()
    from mlflow import MlflowClient

    client = MlflowClient()
    experiment = client.get_experiment_by_name(tracking.experiment_name())
    if experiment is None:
        raise SemknobsError(
            f"no experiment {tracking.experiment_name()!r} in {uri}; run make repro"
        )
    executions, not_shown = compare.load_executions(
        client,
        experiment.experiment_id,
        last=args.last,
        only=args.execution or (),
        commits=None if args.all_workspaces else compare.repo_commits(),
    )
    if not executions:
        raise SemknobsError(
            f"no pipeline execution has registered models in {uri} yet: run `make repro`"
        )
    result = compare.compare(executions, promote, args.metric, not_shown)
    if args.json:
        print(compare.to_json(result))
        return 0
    width = args.width or min(shutil.get_terminal_size((100, 24)).columns, 100)
    print(compare.render(result, width=width))
    return 0


def _serve(args: argparse.Namespace) -> int:
    from semknobs import registry, tracking
    from semknobs.serving.supervise import supervise

    if args.stop_timeout < 0:
        raise SemknobsError(f"--stop-timeout must be >= 0 seconds, got {args.stop_timeout:g}")
    uri = tracking.configure()
    registry.check_registered(args.model)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"semknobs: warning: serving on {args.host}, reachable from other machines")
    if args.deadline is not None and not (0 < args.deadline <= 3600):
        raise SemknobsError(f"--deadline must be in (0, 3600] seconds, got {args.deadline:g}")
    import tempfile

    import mlflow

    from semknobs.serving.app import serve_command

    with tempfile.TemporaryDirectory(prefix="semknobs-serve-") as tmp:
        # the model's files, as `mlflow models serve` fetches them; served by our gated app
        folder = mlflow.artifacts.download_artifacts(artifact_uri=args.model, dst_path=tmp)
        command, env = serve_command(
            folder, host=args.host, port=args.port, workers=args.workers, deadline_s=args.deadline
        )
        env = {**env, "MLFLOW_TRACKING_URI": uri}
        print(f"semknobs: serving {args.model} on http://{args.host}:{args.port}/invocations")
        print("semknobs: stop with Ctrl-C or SIGTERM (the whole server stops; exit status 0)")
        sys.stdout.flush()
        return supervise(command, env=env, stop_timeout_s=args.stop_timeout)


def _ui(args: argparse.Namespace) -> int:
    from semknobs.serving.client import interpreter_env
    from semknobs.serving.supervise import supervise

    ui_args = ["--backend-store-uri", args.store, "--host", args.host, "--port", str(args.port)]
    command = [sys.executable, "-m", "mlflow", "ui", *ui_args]
    _print_runs_page(args.store, f"http://{args.host}:{args.port}")
    return supervise(command, env=interpreter_env())  # mlflow ui starts its own web workers


def _print_runs_page(store: str, base_url: str) -> None:
    """Where the runs table is (MLflow 3's UI otherwise lands on its GenAI Traces page)."""
    from semknobs import tracking

    try:
        from mlflow.tracking import MlflowClient

        name = tracking.experiment_name()
        experiment = MlflowClient(tracking_uri=store).get_experiment_by_name(name)
    except Exception:
        experiment = None
    if experiment is not None:
        page = tracking.experiment_page(base_url, experiment.experiment_id)
        print(f"semknobs: runs table: {page}")
    sys.stdout.flush()


if __name__ == "__main__":
    raise SystemExit(main())
