"""Plumbing shared by every stage: the command line, the MLflow run, errors, metrics files,
figures.

A stage is a module ``semknobs.stages.<name>`` with ``NAME``, a typed ``Params`` dataclass (its
``params.yaml`` section), a ``Paths`` dataclass (its command-line paths) and
``run(params, paths, ctx) -> StageResult`` holding all of its logic; tests call ``run``
directly. ``pipelines/<name>.py`` is ``main = stage_cli(module)``: :func:`stage_cli` builds the
argparse interface from ``Paths``, loads the params, opens the stage's MLflow run, calls ``run``
and logs its result. Optional hooks of a stage module:

* ``load(params_file, paths) -> Params`` -- default: the ``NAME`` section, strictly typed;
* ``DEPS`` -- the ``Paths`` fields whose DVC hashes tag the run (its data version);
* ``tags(params, paths, ctx) -> dict`` -- extra run tags; ``logged_params(params)`` -- what is
  logged as the run's params (default: ``params``);
* ``DISTRIBUTED = True`` -- runs under torchrun: one process group, the MLflow run on rank 0;
* ``LOG_ON_FAILURE`` -- ``{artifact path: Paths field}`` folders logged even when ``run`` fails;
* ``OUTS`` -- the ``Paths`` fields that are the stage's DVC outs: a run that returns without
  writing one of them fails (exit 2, naming it) instead of exiting 0 for DVC to find it missing;
* ``untracked(paths) -> bool`` -- True: run without a stage run of its own.
"""

from __future__ import annotations

import functools
import json
import math
import os
import sys
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from semknobs.atomic import atomic_path
from semknobs.errors import SemknobsError
from semknobs.lineage import reproducible

os.environ.setdefault("MPLBACKEND", "Agg")


def stage_main(func: Callable[..., Any]) -> Callable[..., int]:
    """Run ``func``; a :class:`SemknobsError` or a failed write (unwritable folder, full disk)
    becomes one line on stderr and exit status 2. The MLflow run, if open, ends FAILED."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> int:
        name = getattr(func, "stage_name", None) or Path(func.__code__.co_filename).stem
        try:
            func(*args, **kwargs)
        except SemknobsError as exc:
            print(f"{name}: error: {exc}", file=sys.stderr)
            return 2
        except OSError as exc:
            print(f"{name}: error: {describe_os_error(exc)}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            return 130
        return 0

    return wrapper


def describe_os_error(exc: OSError) -> str:
    """A one-line reason for a failed file operation, naming the path."""
    import errno

    where = exc.filename or "a file"
    if exc.errno == errno.ENOSPC:
        return f"no space left on the device holding {where}; free some space and rerun"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"cannot write {where}: {exc.strerror} (check the folder's permissions)"
    return f"{where}: {exc.strerror or exc}"


def write_metrics(path: str | os.PathLike, metrics: dict[str, float]) -> None:
    """A flat JSON of ``split/metric`` keys (DVC metrics); NaN becomes null. Timings
    (:func:`semknobs.lineage.is_timing`) are left out: a rerun of the same inputs rewrites the
    file byte for byte; the stage's MLflow run has them (:func:`publish` logs the result)."""
    clean = {
        k: (None if isinstance(v, float) and math.isnan(v) else v)
        for k, v in reproducible(metrics).items()
    }
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(clean, indent=2, sort_keys=True) + "\n")


def write_json(path: str | os.PathLike, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")


def save_figure(fig: Any, path: str | os.PathLike, *, dpi: int = 110) -> Path:
    """Save a matplotlib figure atomically (PNG), close it, return the path."""
    import matplotlib.pyplot as plt

    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return path


@dataclass
class StageResult:
    """What a stage's ``run`` returns: metrics (already written to its metrics file, if it has
    one), the folders to log to MLflow (artifact path -> local folder) and the lines the script
    prints at the end."""

    metrics: dict[str, float] = field(default_factory=dict)
    artifacts: dict[str, Path] = field(default_factory=dict)
    summary: list[str] = field(default_factory=list)


def _no_log(metrics: Mapping[str, float], step: int | None = None) -> None:
    return None


def _close(fig: Any, artifact_file: str) -> None:
    import matplotlib.pyplot as plt

    plt.close(fig)


@dataclass
class StageContext:
    """What ``run`` may use of its surroundings. The defaults (a plain test call) log nothing;
    :func:`stage_cli` wires them to the stage's MLflow run and the torchrun process group."""

    log: Callable[[Mapping[str, float], int | None], None] = _no_log
    log_figure: Callable[[Any, str], None] = _close
    world: Any = None  # semknobs.train.distributed.World; None: one process
    run_id: str | None = None  # the stage's MLflow run (None: not tracked)
    experiment_id: str | None = None

    def __post_init__(self) -> None:
        if self.world is None:
            from semknobs.train.distributed import World

            self.world = World()


def stage_cli(module: types.ModuleType) -> Callable[[list[str] | None], int]:
    """``main(argv) -> exit status`` of a stage module (see the module docstring)."""

    def main(argv: list[str] | None = None) -> None:
        parser = argparse_for(module)
        args = vars(parser.parse_args(argv))
        params_file = Path(args.pop("params"))
        paths = module.Paths(**args)
        load = getattr(module, "load", None)
        if load is not None:
            params = load(params_file, paths)
        else:
            from semknobs.config import load_section

            params = load_section(module.Params, module.NAME, params_file)
        if getattr(module, "DISTRIBUTED", False):
            from semknobs.train import distributed

            with distributed.session() as world:
                _run(module, params, paths, world)
        else:
            _run(module, params, paths, None)

    main.stage_name = module.NAME  # type: ignore[attr-defined]  (names the error messages)
    return stage_main(main)


def _run(module: types.ModuleType, params: Any, paths: Any, world: Any) -> None:
    from semknobs import tracking

    ctx = StageContext(world=world)
    if hasattr(module, "untracked") and module.untracked(paths):
        result = module.run(params, paths, ctx)  # e.g. a worker joining another machine's run
        for line in result.summary if result is not None else ():
            print(f"{module.NAME}: {line}")
        return
    deps = [getattr(paths, name) for name in getattr(module, "DEPS", ())]
    tags = module.tags(params, paths, ctx) if hasattr(module, "tags") else {}
    logged = module.logged_params(params) if hasattr(module, "logged_params") else params
    mlflow_run = tracking.stage_run(
        module.NAME, params=logged, deps=[d for d in deps if d is not None], tags=tags
    )
    main_only = ctx.world.main_only(mlflow_run)
    with main_only as run:
        if ctx.world.is_main:
            ctx.log, ctx.log_figure = tracking.log_metrics, tracking.log_figure
            ctx.run_id, ctx.experiment_id = run.info.run_id, run.info.experiment_id
        try:
            result = module.run(params, paths, ctx)
        except BaseException:
            for artifact_path, name in getattr(module, "LOG_ON_FAILURE", {}).items():
                folder = Path(getattr(paths, name))
                if ctx.run_id is not None and folder.exists():
                    tracking.log_dir(folder, artifact_path)
            raise
        if ctx.world.is_main:
            require_outputs(module, paths)
        if ctx.world.is_main and result is not None:
            publish(module.NAME, result)


def require_outputs(module: types.ModuleType, paths: Any) -> None:
    """Raise :class:`SemknobsError` naming the declared outputs (``module.OUTS``) that do not
    exist after a successful ``run``: a stage must never exit 0 without them."""
    missing = []
    for name in getattr(module, "OUTS", ()):
        path = getattr(paths, name)
        if path is not None and not Path(path).exists():
            missing.append(f"{path} (--{name.replace('_', '-')})")
    if missing:
        raise SemknobsError(
            f"finished without writing its declared output(s) {', '.join(missing)}; "
            "this is a bug of the stage, please report it"
        )


def argparse_for(module: types.ModuleType):
    """``--params`` plus one option per field of ``module.Paths`` (``attgan_dir`` ->
    ``--attgan-dir``; required unless it has a default; help from the field's metadata)."""
    import argparse

    parser = argparse.ArgumentParser(
        prog=f"pipelines/{module.NAME}.py",
        description=(module.__doc__ or "").strip().split("\n\n")[0],
    )
    parser.add_argument("--params", default="params.yaml", help="default params.yaml")
    hints = typing.get_type_hints(module.Paths)
    for f in fields(module.Paths):
        kind = _plain_type(hints[f.name])
        option = f"--{f.name.replace('_', '-')}"
        extra: dict[str, Any] = {"help": f.metadata.get("help")}
        if kind is bool:
            parser.add_argument(option, action="store_true", **extra)
            continue
        has_default = f.default is not MISSING
        if has_default:
            extra["default"] = f.default
        if kind is list:
            extra["nargs"] = "+"
            kind = Path
        parser.add_argument(option, type=kind, required=not has_default, **extra)
    return parser


def _plain_type(tp: Any) -> Any:
    """``Path | None`` -> Path, ``list[Path]`` -> list, ``int`` -> int."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    return list if typing.get_origin(tp) is list else tp


def publish(stage: str, result: StageResult) -> None:
    """Log a stage's result to the active MLflow run (metrics and artifact folders) and print
    its summary lines."""
    from semknobs import tracking

    tracking.log_metrics({k: v for k, v in result.metrics.items() if _finite(v)})
    for artifact_path, folder in result.artifacts.items():
        if Path(folder).exists():
            tracking.log_dir(folder, artifact_path)
    for line in result.summary:
        print(f"{stage}: {line}")


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
