"""Plumbing shared by the thin stage scripts in ``pipelines/``: errors, metrics files, figures.

A stage script parses its paths, loads its params section, opens its MLflow run and calls pure
functions; everything here keeps those scripts short and their failures readable.
"""

from __future__ import annotations

import functools
import json
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from semknobs.atomic import atomic_path
from semknobs.errors import SemknobsError

os.environ.setdefault("MPLBACKEND", "Agg")


def stage_main(func: Callable[..., Any]) -> Callable[..., int]:
    """Run ``func``; a :class:`SemknobsError` or a failed write (unwritable folder, full disk)
    becomes one line on stderr and exit status 2. The MLflow run, if open, ends FAILED."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> int:
        name = Path(func.__code__.co_filename).stem
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
    """A flat JSON of ``split/metric`` keys (DVC metrics); NaN becomes null."""
    clean = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()}
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


def publish(stage: str, result: Any) -> None:
    """Log a stage's :class:`~semknobs.stages.common.StageResult` to the active MLflow run
    (metrics and artifact folders) and print its summary lines."""
    from semknobs import tracking

    tracking.log_metrics({k: v for k, v in result.metrics.items() if _finite(v)})
    for artifact_path, folder in result.artifacts.items():
        tracking.log_dir(folder, artifact_path)
    for line in result.summary:
        print(f"{stage}: {line}")


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)
