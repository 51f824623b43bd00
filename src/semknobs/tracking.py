"""MLflow tracking for pipeline stages: one run per stage, tagged so runs can be traced back.

Every stage run records its flattened params, the git commit, the data version (hashes that DVC
wrote to ``dvc.lock`` or ``*.dvc`` files) and an *execution id* shared by all stages of one
``dvc repro``, so the MLflow UI can filter a single pipeline execution
(``tags.semknobs.execution = '...'``).

The default store is ``sqlite:///mlruns/mlflow.db`` (MLflow 3 refuses the plain file store), with
artifacts in ``mlruns/artifacts``; ``MLFLOW_TRACKING_URI`` overrides both (e.g. a team server).

The experiment is tagged ``mlflow.experimentKind = custom_model_development`` (MLflow's own tag for
the experiment type; the other kind is ``genai_development``), so the MLflow UI treats it as model
development -- runs and models, not GenAI traces. MLflow 3.17's UI also keeps a per-browser
"workflow type" (GenAI or machine learning) that picks the landing tab: :func:`experiment_page`
is the experiment's address with ``workflowType=machine_learning``.

``mlflow`` is imported inside the functions that need it: importing it takes seconds and the CLI
imports this module for every command.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from semknobs.config import flatten, to_mapping
from semknobs.lineage import _safe_key, data_version, git_info
from semknobs.names import EXPERIMENT, TRACKING_DB, telemetry_off

if TYPE_CHECKING:
    import mlflow

# MLflow's telemetry client starts when ``mlflow`` is imported, so switch it off before anything
# in this process can import it (configure() repeats this in case someone reset the variable).
telemetry_off()


# MLflow limits (mlflow.utils.validation): params/tags per batch, param value length, key length.
_MAX_PARAMS_PER_BATCH = 100
_MAX_PARAM_VALUE = 6000
_MAX_TAG_VALUE = 8000

# MLflow's experiment-type tag (mlflow/demo/generators/traces.py sets "genai_development"; the UI
# bundle's ExperimentKind enum): ours is classic model development.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"

_configured_uri: str | None = None  # the URI configure() last set
_default_written: str | None = None  # a default URI that mlflow then exported to the env
_fallback_execution_id: str | None = None


# --------------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------------


def configure(root: Path | str | None = None) -> str:
    """Point MLflow at the project's tracking store and return its URI.

    ``MLFLOW_TRACKING_URI`` wins when set. Otherwise the default sqlite database is placed at
    ``<root>/mlruns/mlflow.db`` (``root`` defaults to the working directory) as an absolute URI,
    so the store does not move when a stage changes directory. Cheap to call repeatedly.
    """
    global _configured_uri, _default_written
    telemetry_off()
    uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    # mlflow.set_tracking_uri() exports the URI to MLFLOW_TRACKING_URI (for subprocesses), so a
    # value there that we wrote ourselves is not a user override.
    from_default = not uri or uri == _default_written
    if from_default:
        db = Path(root if root is not None else Path.cwd()).resolve() / TRACKING_DB
        db.parent.mkdir(parents=True, exist_ok=True)
        uri = f"sqlite:///{db.as_posix()}"
    import mlflow

    mlflow.set_tracking_uri(uri)  # a no-op when unchanged
    _configured_uri = uri
    _default_written = uri if from_default else None
    return uri


def experiment_name(name: str | None = None) -> str:
    """``name``, else ``SEMKNOBS_EXPERIMENT``, else :data:`EXPERIMENT`."""
    return name or os.environ.get("SEMKNOBS_EXPERIMENT") or EXPERIMENT


def _sqlite_file(uri: str) -> Path | None:
    """The database file of a local ``sqlite:///`` URI, or None (server, in-memory, other DB)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///") :].split("?", 1)[0]
    if not path or path == ":memory:":
        return None
    return Path(path).resolve()


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock (POSIX only; elsewhere a no-op)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _client(uri: str) -> mlflow.MlflowClient:
    """An MlflowClient for ``uri``; creating a fresh sqlite database is serialised.

    MLflow's tracking store creates its tables and runs the alembic migrations on first use
    without a lock, so two stages starting at once against a new database can trip over each
    other. A file lock beside the database makes the first initialisation one-at-a-time.
    """
    from mlflow import MlflowClient

    db = _sqlite_file(uri)
    if db is None:
        return MlflowClient(tracking_uri=uri)
    with _file_lock(db.parent / ".mlflow-init.lock"):
        return MlflowClient(tracking_uri=uri)


def ensure_experiment(name: str | None = None) -> str:
    """The id of experiment ``name`` (see :func:`experiment_name`), created if missing.

    With a local sqlite store the experiment's artifacts go to ``<db dir>/artifacts`` (for the
    default store: ``<root>/mlruns/artifacts``); with a server, the server decides. Two processes
    racing to create it both end up with the same id: the loser's "already exists" error is
    caught and the experiment re-read. A deleted experiment of that name is restored. The
    experiment carries :data:`EXPERIMENT_KIND_TAG` = :data:`EXPERIMENT_KIND` (set at creation,
    and on an older experiment that lacks it; a kind someone chose is left alone).
    """
    from mlflow.exceptions import MlflowException

    uri = _configured_uri or configure()
    name = experiment_name(name)
    client = _client(uri)
    exp = client.get_experiment_by_name(name)
    if exp is None:
        db = _sqlite_file(uri)
        location = (db.parent / "artifacts").as_uri() if db is not None else None
        try:
            return str(
                client.create_experiment(
                    name, artifact_location=location, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}
                )
            )
        except MlflowException as exc:
            # Another process created it between our read and our create: read theirs.
            exp = client.get_experiment_by_name(name)
            if exp is None or exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
    if exp.lifecycle_stage == "deleted":
        client.restore_experiment(exp.experiment_id)
    if EXPERIMENT_KIND_TAG not in exp.tags:
        client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return str(exp.experiment_id)


def experiment_page(base_url: str, experiment_id: str) -> str:
    """The MLflow UI address of an experiment's runs, e.g.
    ``http://127.0.0.1:5000/#/experiments/1/runs?workflowType=machine_learning``: the query
    switches MLflow 3.17's UI to its machine-learning workflow, whose landing tab is Runs (its
    default, GenAI, opens on Traces whatever the experiment's kind tag says)."""
    base = base_url.rstrip("/")
    return f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


# --------------------------------------------------------------------------------------------
# execution id
# --------------------------------------------------------------------------------------------


def execution_id() -> str:
    """One id for all stage runs of one pipeline execution, from the environment.

    ``SEMKNOBS_EXECUTION_ID`` if set (``make repro`` and ``make science`` set a unique one);
    else, for a stage DVC runs (DVC exports ``DVC_STAGE`` to stage commands):
    ``dvc-exp-<name>`` inside ``dvc exp run`` (``DVC_EXP_NAME``), otherwise
    ``dvc-<process group>``. DVC starts each stage through ``$SHELL -c``, and whether that shell
    execs the command or stays as its parent varies, so the parent pid is not shared by the
    stages; the process group is (DVC does not start new ones). A shell with job control (a
    terminal) gives every ``dvc repro`` its own group; two repros started by one script share
    it -- scripts set ``SEMKNOBS_EXECUTION_ID``, as the Makefile does. A group id can recur much
    later. Outside DVC: a fresh ``run-<12 hex>``, fixed for this process. Never raises.
    """
    global _fallback_execution_id
    env = os.environ.get("SEMKNOBS_EXECUTION_ID", "").strip()
    if env:
        return env
    if os.environ.get("DVC_STAGE"):
        exp = os.environ.get("DVC_EXP_NAME", "").strip()
        return f"dvc-exp-{exp}" if exp else f"dvc-{os.getpgrp()}"
    if _fallback_execution_id is None:
        _fallback_execution_id = f"run-{uuid.uuid4().hex[:12]}"
    return _fallback_execution_id


# --------------------------------------------------------------------------------------------
# runs
# --------------------------------------------------------------------------------------------


def _param_value(value: Any) -> str:
    if isinstance(value, (list, tuple, dict)):
        text = json.dumps(to_mapping(value), default=str)
    elif isinstance(value, bool) or value is None:
        text = json.dumps(value)  # true/false/null, as in params.yaml
    else:
        text = str(value)
    if len(text) > _MAX_PARAM_VALUE:
        marker = "...[truncated; see params.json]"
        text = text[: _MAX_PARAM_VALUE - len(marker)] + marker
    return text


def params_for_mlflow(params: Mapping[str, Any] | Any) -> dict[str, str]:
    """Flattened, stringified params as MLflow stores them (keys sanitised, values capped).

    Scalars become ``str(value)`` (booleans and null as ``true``/``false``/``null``), lists are
    JSON; values longer than MLflow's 6000 characters are cut (:func:`stage_run` also keeps the
    full, nested params as the run artifact ``params.json``).
    """
    mapping = to_mapping(params)
    if not isinstance(mapping, Mapping):
        raise TypeError(f"params must be a mapping or dataclass, got {type(params).__name__}")
    return {_safe_key(k): _param_value(v) for k, v in flatten(dict(mapping)).items()}


def _tag_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(to_mapping(value), default=str)
    return text[:_MAX_TAG_VALUE]


@contextlib.contextmanager
def stage_run(
    stage: str,
    *,
    params: Mapping[str, Any] | Any,
    deps: Iterable[str | os.PathLike[str]] = (),
    tags: Mapping[str, Any] | None = None,
    root: Path | str | None = None,
) -> Iterator[mlflow.ActiveRun]:
    """Open the MLflow run of one pipeline stage and yield it.

    The run is named ``stage`` and tagged ``semknobs.stage``, ``semknobs.execution``,
    ``git.*``, ``data.*`` (see :func:`data_version`, reading ``<root>/dvc.lock``) and ``tags``;
    params are logged flattened (see :func:`params_for_mlflow`). An exception inside the block
    ends the run as FAILED and propagates; Ctrl-C or SIGTERM ends it KILLED (not left RUNNING);
    otherwise the run ends FINISHED.
    """
    import mlflow

    from semknobs.atomic import sigterm_exits

    root_path = Path(root if root is not None else Path.cwd()).resolve()
    configure(root_path)
    experiment_id = ensure_experiment()
    flat = params_for_mlflow(params)
    run_tags: dict[str, str] = {
        "semknobs.stage": stage,
        "semknobs.execution": execution_id(),
        **git_info(root_path),
        **data_version([_abs(d, root_path) for d in deps], root_path / "dvc.lock"),
    }
    for key, value in (tags or {}).items():
        run_tags[_safe_key(str(key))] = _tag_value(value)

    with sigterm_exits(), mlflow.start_run(experiment_id=experiment_id, run_name=stage) as run:
        try:
            mlflow.set_tags(run_tags)
            items = list(flat.items())
            for i in range(0, len(items), _MAX_PARAMS_PER_BATCH):
                mlflow.log_params(dict(items[i : i + _MAX_PARAMS_PER_BATCH]))
            mlflow.log_dict(to_mapping(params), "params.json")
            yield run
        except (KeyboardInterrupt, SystemExit):
            mlflow.end_run("KILLED")
            raise


def _abs(dep: str | os.PathLike[str], root: Path) -> Path:
    p = Path(dep)
    return p if p.is_absolute() else root / p


def log_metrics(metrics: Mapping[str, float], step: int | None = None) -> None:
    """Log metrics to the active run. Keys such as ``val/rmse`` are accepted by MLflow as-is;
    only characters MLflow rejects are replaced (by '_')."""
    import mlflow

    mlflow.log_metrics({_safe_key(k): float(v) for k, v in metrics.items()}, step=step)


def log_figure(fig: Any, artifact_file: str) -> None:
    """Log a matplotlib figure as ``artifact_file`` (e.g. ``plots/pred.png``), then close it."""
    import mlflow

    try:
        mlflow.log_figure(fig, artifact_file)
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)


def log_dir(path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
    """Log every file under directory ``path`` to the active run, under ``artifact_path``."""
    import mlflow

    mlflow.log_artifacts(str(path), artifact_path)
