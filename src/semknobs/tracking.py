"""MLflow tracking for pipeline stages: one run per stage, tagged so runs can be traced back.

Every stage run records its flattened params, the git commit, the data version (hashes that DVC
wrote to ``dvc.lock`` or ``*.dvc`` files) and an *execution id* shared by all stages of one
``dvc repro``, so the MLflow UI can filter a single pipeline execution
(``tags.semknobs.execution = '...'``).

The default store is ``sqlite:///mlruns/mlflow.db`` (MLflow 3 refuses the plain file store), with
artifacts in ``mlruns/artifacts``; ``MLFLOW_TRACKING_URI`` overrides both (e.g. a team server).

``mlflow`` is imported inside the functions that need it: importing it takes seconds and the CLI
imports this module for every command.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import posixpath
import re
import subprocess
import uuid
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from semknobs.config import flatten, to_mapping

if TYPE_CHECKING:
    import mlflow

# MLflow's telemetry client starts when ``mlflow`` is imported, so switch it off before anything
# in this process can import it (configure() repeats this in case someone reset the variable).
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"

DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"
EXPERIMENT = "semknobs"

UNTRACKED = "untracked"

# MLflow limits (mlflow.utils.validation): params/tags per batch, param value length, key length.
_MAX_PARAMS_PER_BATCH = 100
_MAX_PARAM_VALUE = 6000
_MAX_TAG_VALUE = 8000
_MAX_KEY = 250
_GIT_TIMEOUT_S = 5.0
_DVC_SUBCOMMANDS = frozenset({"repro", "exp"})

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
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    # mlflow.set_tracking_uri() exports the URI to MLFLOW_TRACKING_URI (for subprocesses), so a
    # value there that we wrote ourselves is not a user override.
    from_default = not uri or uri == _default_written
    if from_default:
        mlruns = Path(root if root is not None else Path.cwd()).resolve() / "mlruns"
        mlruns.mkdir(parents=True, exist_ok=True)
        uri = f"sqlite:///{(mlruns / 'mlflow.db').as_posix()}"
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
    caught and the experiment re-read. A deleted experiment of that name is restored.
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
            return str(client.create_experiment(name, artifact_location=location))
        except MlflowException as exc:
            # Another process created it between our read and our create: read theirs.
            exp = client.get_experiment_by_name(name)
            if exp is None or exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
    if exp.lifecycle_stage == "deleted":
        client.restore_experiment(exp.experiment_id)
    return str(exp.experiment_id)


# --------------------------------------------------------------------------------------------
# execution id
# --------------------------------------------------------------------------------------------


def _read_stat(pid: int) -> tuple[int, str] | None:
    """(parent pid, start time in clock ticks since boot) from ``/proc/<pid>/stat``."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 2 (comm) is parenthesised and may contain spaces or ')': split after the last ')'.
    fields = raw.rsplit(")", 1)[-1].split()
    # fields[0] is field 3 (state); ppid is field 4, starttime is field 22.
    if len(fields) < 20:
        return None
    try:
        return int(fields[1]), fields[19]
    except ValueError:
        return None


def _read_cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode("utf-8", "replace") for a in raw.split(b"\0") if a]


def is_dvc_pipeline_cmdline(argv: list[str]) -> bool:
    """True for ``dvc repro ...`` / ``dvc exp ...`` in any launcher form.

    Matches ``dvc repro``, ``/venv/bin/dvc repro``, ``python /venv/bin/dvc repro`` and
    ``python -m dvc repro``; global options before the subcommand (``-v``, ``--cd DIR``) are
    skipped.
    """
    for i, arg in enumerate(argv):
        if posixpath.basename(arg.replace("\\", "/")) not in ("dvc", "dvc.exe"):
            continue
        rest = iter(argv[i + 1 :])
        for word in rest:
            if word == "--cd":
                next(rest, None)
            elif not word.startswith("-"):
                return word in _DVC_SUBCOMMANDS
        return False
    return False


def _dvc_ancestor_id() -> str | None:
    """``dvc-<pid>-<starttime>`` of the nearest ``dvc repro``/``dvc exp`` ancestor, if any."""
    pid = os.getppid()
    seen: set[int] = set()
    while pid > 1 and pid not in seen:
        seen.add(pid)
        stat = _read_stat(pid)
        if stat is None:
            return None
        ppid, start = stat
        if is_dvc_pipeline_cmdline(_read_cmdline(pid)):
            return f"dvc-{pid}-{start}"
        pid = ppid
    return None


def execution_id() -> str:
    """One id for all stage runs of one pipeline execution.

    ``SEMKNOBS_EXECUTION_ID`` if set; else derived from the ``dvc repro``/``dvc exp`` process
    that (indirectly) launched this one, found through ``/proc`` (pid plus start time, so a
    recycled pid gives a different id); else a fresh ``run-<12 hex>``, fixed for this process.
    Never raises.
    """
    global _fallback_execution_id
    env = os.environ.get("SEMKNOBS_EXECUTION_ID", "").strip()
    if env:
        return env
    try:
        found = _dvc_ancestor_id()
    except Exception:
        found = None
    if found:
        return found
    if _fallback_execution_id is None:
        _fallback_execution_id = f"run-{uuid.uuid4().hex[:12]}"
    return _fallback_execution_id


# --------------------------------------------------------------------------------------------
# git and data versions
# --------------------------------------------------------------------------------------------


def _git(root: Path, *args: str) -> str | None:
    try:
        proc = subprocess.run(
            ["git", "-C", str(root), *args],
            capture_output=True,
            text=True,
            timeout=_GIT_TIMEOUT_S,
            env={**os.environ, "GIT_OPTIONAL_LOCKS": "0", "GIT_TERMINAL_PROMPT": "0"},
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def git_info(root: Path | str | None = None) -> dict[str, str]:
    """``git.commit`` (full sha or "unknown"), ``git.dirty`` ("true"/"false"/"unknown") and
    ``git.branch`` (name, "HEAD" when detached, or "unknown"). Never raises.

    Untracked files count as dirty: the commit alone would not reproduce the run.
    """
    root = Path(root if root is not None else Path.cwd())
    commit = _git(root, "rev-parse", "--verify", "--quiet", "HEAD^{commit}")
    status = _git(root, "status", "--porcelain")
    branch = _git(root, "symbolic-ref", "--quiet", "--short", "HEAD")
    if branch is None and commit:
        branch = "HEAD"
    return {
        "git.commit": commit or "unknown",
        "git.dirty": "unknown" if status is None else ("true" if status else "false"),
        "git.branch": branch or "unknown",
    }


def _norm(path: str | os.PathLike[str], base: Path | None = None) -> str:
    """A dependency path as DVC writes it: relative to ``base``, POSIX separators, no './'."""
    p = Path(path)
    if p.is_absolute() and base is not None:
        with contextlib.suppress(ValueError):
            p = p.relative_to(base.resolve())
    return posixpath.normpath(p.as_posix())


def _entry_hash(entry: Any) -> str | None:
    """The content hash of one ``outs``/``deps`` entry of dvc.lock or a .dvc file.

    DVC 3 writes ``md5`` plus ``hash: md5`` (the algorithm's name); cloud-versioned entries may
    carry ``etag``/``checksum`` instead.
    """
    if not isinstance(entry, dict):
        return None
    for key in ("md5", "checksum", "etag", "hash"):
        value = entry.get(key)
        if isinstance(value, str) and value and value.lower() not in ("md5", "md5-dos2unix"):
            return value
    return None


def _load_yaml(path: Path) -> Any:
    import yaml

    try:
        return yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None


def _lock_hashes(lock: Any) -> tuple[dict[str, str], dict[str, str]]:
    """(outs, deps): path -> hash over every stage of a parsed dvc.lock."""
    outs: dict[str, str] = {}
    deps: dict[str, str] = {}
    stages = lock.get("stages") if isinstance(lock, dict) else None
    if not isinstance(stages, dict):
        return outs, deps
    for stage in stages.values():
        if not isinstance(stage, dict):
            continue
        for kind, table in (("outs", outs), ("deps", deps)):
            entries = stage.get(kind)
            if not isinstance(entries, list):
                continue
            for entry in entries:
                digest = _entry_hash(entry)
                path = entry.get("path") if isinstance(entry, dict) else None
                if digest and isinstance(path, str):
                    table.setdefault(_norm(path), digest)
    return outs, deps


def _dvc_file_hash(base: Path, path: str) -> str | None:
    """The hash recorded in ``<path>.dvc`` (as written by ``dvc add``), if there is one."""
    dvc_file = base / f"{path}.dvc"
    if not dvc_file.is_file():
        return None
    data = _load_yaml(dvc_file)
    entries = data.get("outs") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        return None
    name = posixpath.basename(path)
    hashes = [
        (e.get("path"), _entry_hash(e)) for e in entries if isinstance(e, dict) and _entry_hash(e)
    ]
    for out_path, digest in hashes:
        if isinstance(out_path, str) and posixpath.normpath(out_path) == name:
            return digest
    return hashes[0][1] if len(hashes) == 1 else None


def _ancestors(path: str) -> Iterator[str]:
    """``a/b/c`` -> ``a/b/c``, ``a/b``, ``a``."""
    while path and path not in (".", "/"):
        yield path
        parent = posixpath.dirname(path)
        if parent == path:
            return
        path = parent


def _lookup(path: str, base: Path, outs: dict[str, str], deps: dict[str, str]) -> str:
    # Exact path first, then the nearest tracked parent directory (a file inside a DVC-tracked
    # directory is versioned by the directory's hash). For each, a producing stage's output is
    # freshest, then a .dvc file; a stage's recorded dep hash is from that stage's last run.
    for candidate in _ancestors(path):
        digest = outs.get(candidate) or _dvc_file_hash(base, candidate) or deps.get(candidate)
        if digest:
            return digest
    return UNTRACKED


def _safe_key(key: str) -> str:
    """An MLflow-acceptable param/tag/metric key: bad characters become '_', length capped."""
    key = re.sub(r"[^/\w.\- :]", "_", key)
    key = re.sub(r"/{2,}", "/", key).strip("/") or "_"
    if posixpath.normpath(key) != key:  # e.g. 'a/./b' or 'a/../b'
        key = key.replace("/", "_")
    if len(key) > _MAX_KEY:
        digest = hashlib.sha256(key.encode()).hexdigest()[:8]
        key = f"{key[: _MAX_KEY - 9]}~{digest}"
    return key


def data_version(
    deps: Iterable[str | os.PathLike[str]], lock_path: str | os.PathLike[str] = "dvc.lock"
) -> dict[str, str]:
    """Data-version tags for ``deps``: ``data.<path>`` = hash (or "untracked"), ``data.version``.

    Hashes come from ``dvc.lock`` (any stage's outs, then deps) or a ``<path>.dvc`` file; paths
    are taken relative to the lock file's directory, as DVC writes them. ``data.version`` is the
    first 12 hex digits of sha256 over the sorted ``path=hash`` lines, so equal inputs give an
    equal version. A missing or malformed lock just means "untracked"; this never raises.
    """
    lock_file = Path(lock_path)
    base = lock_file.parent
    try:
        lock = _load_yaml(lock_file) if lock_file.is_file() else None
        outs, dep_hashes = _lock_hashes(lock)
    except Exception:
        outs, dep_hashes = {}, {}
    versions: dict[str, str] = {}
    for dep in deps:
        path = _norm(dep, base)
        try:
            versions[path] = _lookup(path, base, outs, dep_hashes)
        except Exception:
            versions[path] = UNTRACKED
    summary = "\n".join(f"{p}={h}" for p, h in sorted(versions.items()))
    tags = {_safe_key(f"data.{p}"): h for p, h in versions.items()}
    tags["data.version"] = hashlib.sha256(summary.encode()).hexdigest()[:12]
    return tags


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
    ends the run as FAILED and propagates; otherwise the run ends FINISHED.
    """
    import mlflow

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

    with mlflow.start_run(experiment_id=experiment_id, run_name=stage) as run:
        mlflow.set_tags(run_tags)
        items = list(flat.items())
        for i in range(0, len(items), _MAX_PARAMS_PER_BATCH):
            mlflow.log_params(dict(items[i : i + _MAX_PARAMS_PER_BATCH]))
        mlflow.log_dict(to_mapping(params), "params.json")
        yield run


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
