"""Model folders in MLflow: logging, registering, aliases, loading back. Generic: nothing here
knows a model kind.

Each kind declares itself where it is served, timm style: ``semknobs/serving/<kind>_model.py``
holds its :class:`ModelKind` (``SPEC``: signature, input example, requirements), its typed
folder config and the builder that rebuilds its modules from a folder
(:mod:`semknobs.model_folder`), and the MLflow *models-from-code* class. :func:`log_model` logs
a folder with the kind's serving file as code; loading the logged model runs that file, which
rebuilds the modules from the JSON and safetensors. Nothing is pickled.

Registered versions are promoted with aliases (``candidate``, ``champion``, ...), never with the
deprecated stages. :func:`load_model_dir` accepts ``models:/<name>@<alias>``,
``models:/<name>/<version>``, ``models:/<model id>``, ``runs:/...`` and local folders.

``mlflow`` is imported inside the functions that need it (it takes seconds to import).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import importlib.util
import re
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import semknobs
from semknobs.errors import ModelError
from semknobs.model_folder import CONFIG_FILE, WEIGHTS_SUFFIX, find_model_dir, read_config
from semknobs.names import CANDIDATE, CHAMPION, MODEL_NAMES

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion
    from mlflow.models import ModelSignature


# --------------------------------------------------------------------------------------------
# kinds
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelKind:
    """How one kind of model folder is served through MLflow (each ``serving/<kind>_model.py``
    declares its own as ``SPEC``).

    ``module`` is the models-from-code file (an importable module of the installed package that
    ends with ``mlflow.models.set_model(MODEL)``). ``signature(config)`` and ``example(config)``
    build the model signature and a small input example from the folder's config.
    ``requirements`` are distributions the serving file needs besides semknobs, mlflow, numpy,
    torch and safetensors.
    """

    kind: str
    module: str
    signature: Callable[[Mapping[str, Any]], ModelSignature]
    example: Callable[[Mapping[str, Any]], Any]
    requirements: tuple[str, ...] = field(default=())

    @property
    def code_path(self) -> Path:
        """The serving file inside the installed package (no repo checkout needed)."""
        spec = importlib.util.find_spec(self.module)
        if spec is None or spec.origin is None:
            raise ModelError(f"serving module {self.module} is not installed")
        return Path(spec.origin)


# --------------------------------------------------------------------------------------------
# logging and registering
# --------------------------------------------------------------------------------------------


def _pin(distribution: str) -> str:
    """``name==version`` of an installed distribution, without a local label (``+cu128``)."""
    try:
        version = importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return distribution
    return f"{distribution}=={version.split('+', 1)[0]}"


def _requirements(spec: ModelKind) -> list[str]:
    """Pinned pip requirements of a served model.

    Given explicitly, so MLflow does not infer them by loading the model in a subprocess (slow,
    and it would pick up whatever the training process happened to import).
    """
    base = ("semknobs", "mlflow", "numpy", "torch", "safetensors")
    return [_pin(d) for d in (*base, *spec.requirements)]


def _preflight(spec: ModelKind, artifacts: dict[str, str], example: Any) -> None:
    """Load the folder through the serving class and predict the example, in-process.

    MLflow does the same on the logged copy but only *warns* when it fails; this makes a folder
    that the serving file cannot load an error before anything is logged or registered.
    """
    from mlflow.pyfunc import PythonModelContext

    module = importlib.import_module(spec.module)
    model = type(module.MODEL)()
    model.load_context(PythonModelContext(artifacts=artifacts, model_config={}))
    model.predict(None, example)


def _lineage_tags(run_id: str) -> dict[str, str]:
    """Run tags worth repeating on the model version (commit, data version, execution)."""
    from mlflow import MlflowClient

    run_tags = MlflowClient().get_run(run_id).data.tags
    keys = ("semknobs.stage", "semknobs.execution", "git.commit", "git.dirty", "data.version")
    return {k: run_tags[k] for k in keys if k in run_tags}


@dataclass(frozen=True)
class LoggedModelRef:
    """A model logged by :func:`log_model`: ``models:/<model id>`` and the run that logged it."""

    model_uri: str
    model_id: str
    run_id: str

    def to_dict(self) -> dict[str, str]:
        return {"model_uri": self.model_uri, "model_id": self.model_id, "run_id": self.run_id}


FOLDER_TAG = "semknobs.folder_sha256"  # a logged model's tag: the digest of its folder


def folder_digest(model_dir: str | Path) -> str:
    """sha256 over a model folder's files (names and bytes, sorted): equal folders, equal
    digests, so a folder finds the logged model it was logged as (:func:`find_logged`)."""
    import hashlib

    digest = hashlib.sha256()
    folder = Path(model_dir)
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def find_logged(
    model_dir: str | Path, experiment_id: str, tracking_uri: str | None = None
) -> LoggedModelRef | None:
    """The newest logged model of ``experiment_id`` whose folder equals ``model_dir``
    (:data:`FOLDER_TAG`), or None. How ``register`` finds the models the training stages logged:
    no pointer file with MLflow ids in a DVC out (ids differ on every run)."""
    from mlflow import MlflowClient

    found = MlflowClient(tracking_uri).search_logged_models(
        experiment_ids=[experiment_id],
        filter_string=f"tags.`{FOLDER_TAG}` = '{folder_digest(model_dir)}'",
        order_by=[{"field_name": "creation_time", "ascending": False}],
        max_results=1,
    )
    if not found:
        return None
    model = found[0]
    return LoggedModelRef(f"models:/{model.model_id}", model.model_id, model.source_run_id)


def log_model(
    model_dir: str | Path,
    *,
    name: str,
    spec: ModelKind,
    tags: Mapping[str, Any] | None = None,
    input_example: Any = None,
) -> LoggedModelRef:
    """Log a model folder to the active run as a pyfunc model (not registered).

    The logged model is an MLflow 3 *LoggedModel* named ``name`` (linked to the run, artifacts
    under ``<experiment artifacts>/models/<model id>/artifacts``); the folder's files are its
    pyfunc artifacts and the kind's serving file (``spec``) its code. The folder is loaded and the
    example predicted in-process first, so a folder the serving file cannot load is an error
    before anything is logged.
    """
    import mlflow

    run = mlflow.active_run()
    if run is None:
        raise ModelError("log_model needs an active MLflow run (open one with stage_run)")
    folder = Path(model_dir).resolve()
    kind = spec.kind
    config = read_config(folder, kind=kind)
    missing = [
        w for w in config.get("weights", []) if not (folder / f"{w}{WEIGHTS_SUFFIX}").is_file()
    ]
    if missing:
        raise ModelError(f"{folder}: weights listed in {CONFIG_FILE} are missing: {missing}")
    artifacts = {p.name: str(p) for p in sorted(folder.iterdir()) if p.is_file()}
    example = spec.example(config) if input_example is None else input_example
    _preflight(spec, artifacts, example)

    extra = {str(k): str(v) for k, v in (tags or {}).items()}
    model_tags = {**extra, "semknobs.kind": kind, "semknobs.version": semknobs.__version__}
    model_tags[FOLDER_TAG] = folder_digest(folder)
    info = mlflow.pyfunc.log_model(
        name=name,
        python_model=str(spec.code_path),
        artifacts=artifacts,
        signature=spec.signature(config),
        input_example=example,
        pip_requirements=_requirements(spec),
        tags=model_tags,
    )
    return LoggedModelRef(info.model_uri, info.model_id, run.info.run_id)


def register(
    ref: LoggedModelRef,
    *,
    registered_name: str,
    alias: str | None = CANDIDATE,
    tags: Mapping[str, Any] | None = None,
    description: str | None = None,
) -> ModelVersion:
    """Register a logged model as a new version of ``registered_name`` and move ``alias`` to it.

    The version is tagged ``semknobs.run_id`` / ``semknobs.model_id`` (the run that logged the
    model, e.g. its training run, which the version's run link also names), that run's lineage
    tags (``git.*``, ``data.version``, ``semknobs.execution``, ``semknobs.stage``), the logged
    model's tags and ``tags``; it gets ``description``. Works from any run (the ``register``
    stage registers models that the training stages logged).
    """
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    try:
        logged = client.get_logged_model(ref.model_id)
    except MlflowException as exc:
        raise ModelError(
            f"logged model {ref.model_uri} is not in the tracking store {_tracking_uri()} "
            f"({exc.message}); rerun the stage that trains it"
        ) from None
    version_tags = {
        **_lineage_tags(ref.run_id),
        **{k: v for k, v in (logged.tags or {}).items() if not k.startswith("mlflow.")},
        **{str(k): str(v) for k, v in (tags or {}).items()},
        "semknobs.run_id": ref.run_id,
        "semknobs.model_id": ref.model_id,
    }
    version = mlflow.register_model(ref.model_uri, registered_name, tags=version_tags)
    # The source is models:/<model id>; the store fills the run link from the LoggedModel's
    # source run. Check it before the alias makes this version the one people load.
    if version.run_id != ref.run_id:
        raise ModelError(
            f"model version {registered_name} v{version.version} was registered without its "
            f"run link (run_id={version.run_id!r}, expected {ref.run_id}); no alias was set"
        )
    if description is not None:
        client.update_model_version(registered_name, version.version, description)
    if alias:
        client.set_registered_model_alias(registered_name, alias, version.version)
    # Re-read, so the returned object carries the alias and description as stored.
    return client.get_model_version(registered_name, version.version)


def log_model_dir(
    model_dir: str | Path,
    *,
    name: str,
    spec: ModelKind,
    registered_name: str,
    alias: str | None = CANDIDATE,
    tags: Mapping[str, Any] | None = None,
    description: str | None = None,
    input_example: Any = None,
) -> ModelVersion:
    """:func:`log_model` then :func:`register`, in the active run."""
    ref = log_model(model_dir, name=name, spec=spec, tags=tags, input_example=input_example)
    return register(ref, registered_name=registered_name, alias=alias, description=description)


# --------------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------------

_ALIAS_URI = re.compile(r"^models:/(?P<name>[^/@]+)@(?P<alias>[^/]+)/?$")
_VERSION_URI = re.compile(r"^models:/(?P<name>[^/@]+)/(?P<version>\d+|latest)/?$")


def _creation_hint(registered_name: str) -> str:
    """How the registered model comes about, if it is one of ours (for error messages)."""
    if registered_name in MODEL_NAMES.values():
        return f"`dvc repro register` trains and registers it as @{CANDIDATE}"
    return "semknobs.registry.log_model_dir registers model folders"


def _alias_hint(client: Any, name: str, alias: str, aliases: Mapping[str, Any]) -> str:
    """How to get alias ``alias`` of ``name``: for one of our models' @champion, the gated
    ``semknobs promote`` command that moves it (never a bare alias move past the gates)."""
    if alias != CHAMPION or name not in MODEL_NAMES.values():
        return (
            f"Load an alias it has or a version (models:/{name}/<version>); "
            f"`semknobs promote` moves @{CHAMPION} of {', '.join(MODEL_NAMES.values())}"
        )
    if CANDIDATE in aliases:
        command = f"`semknobs promote --model {name}` checks @{CANDIDATE} (v{aliases[CANDIDATE]})"
    else:
        found = client.search_model_versions(f"name = '{name}'")
        newest = max((int(v.version) for v in found), default=None)
        if newest is None:
            return f"It has no versions: {_creation_hint(name)}"
        command = f"`semknobs promote --model {name} --version {newest}` checks the newest version"
    return (
        f"Promote a version past its quality gates (params.yaml: promote): {command} and moves "
        f"@{CHAMPION} to it if it passes; or register a new one ({_creation_hint(name)})"
    )


def check_registered(model_uri: str) -> None:
    """Turn a missing registered model, version or alias into a :class:`ModelError`."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    alias_match = _ALIAS_URI.match(model_uri)
    version_match = _VERSION_URI.match(model_uri)
    match = alias_match or version_match
    if match is None:
        return
    name = match["name"]
    client = MlflowClient()
    try:
        registered = client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        raise ModelError(
            f"registered model {name!r} does not exist in {_tracking_uri()}; {_creation_hint(name)}"
        ) from None
    aliases = registered.aliases or {}
    shown = ", ".join(f"@{a} -> v{v}" for a, v in sorted(aliases.items())) or "none"
    if alias_match:
        alias = alias_match["alias"]
        if alias not in aliases:
            raise ModelError(
                f"registered model {name!r} has no version with alias {alias!r} "
                f"(aliases: {shown}). {_alias_hint(client, name, alias, aliases)}"
            )
    elif version_match["version"] != "latest":
        version = version_match["version"]
        try:
            client.get_model_version(name, version)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            raise ModelError(
                f"registered model {name!r} has no version {version} (aliases: {shown})"
            ) from None


def _tracking_uri() -> str:
    import mlflow

    return mlflow.get_tracking_uri()


def _local_path(model_uri: str) -> Path | None:
    if model_uri.startswith("file://"):
        from urllib.parse import unquote, urlparse

        return Path(unquote(urlparse(model_uri).path))
    if "://" in model_uri or re.match(r"^[a-z][a-z0-9+.-]*:/", model_uri):
        return None
    return Path(model_uri)


def load_model_dir(model_uri: str | Path, dst_path: str | Path | None = None) -> Path:
    """Download a logged model (or take a local folder) and return its model folder.

    ``model_uri``: ``models:/<name>@<alias>``, ``models:/<name>/<version>``,
    ``models:/<model id>``, ``runs:/<run id>/<name>``, any artifact URI, or a local folder (a
    model folder or a saved MLflow model). Remote models go to ``dst_path`` (default: a fresh
    temporary folder, left to the caller). Uses the project's tracking store (see
    :func:`semknobs.tracking.configure`) unless ``MLFLOW_TRACKING_URI`` says otherwise.
    """
    uri = str(model_uri)
    local = _local_path(uri)
    if local is not None:
        if not local.exists():
            raise ModelError(f"model folder {local} does not exist")
        return find_model_dir(local)

    from mlflow.artifacts import download_artifacts
    from mlflow.exceptions import MlflowException

    from semknobs import tracking

    tracking.configure()
    check_registered(uri)
    if dst_path is None:
        dst_path = tempfile.mkdtemp(prefix="semknobs-model-")
    Path(dst_path).mkdir(parents=True, exist_ok=True)
    try:
        root = download_artifacts(artifact_uri=uri, dst_path=str(dst_path))
    except MlflowException as exc:
        raise ModelError(f"cannot download model {uri} from {_tracking_uri()}: {exc}") from exc
    return find_model_dir(root)


@contextlib.contextmanager
def local_model_dir(model_uri_or_dir: str | Path) -> Iterator[Path]:
    """A local model folder for the duration of the block; a download is removed afterwards."""
    local = _local_path(str(model_uri_or_dir))
    if local is not None:
        yield load_model_dir(local)
        return
    with tempfile.TemporaryDirectory(prefix="semknobs-model-") as tmp:
        yield load_model_dir(model_uri_or_dir, dst_path=tmp)
