"""Model folders and the MLflow model registry, without pickle.

A *model folder* holds one ``<name>.safetensors`` per module and a ``config.json``
(``{"kind": ..., "semknobs_version": ..., "weights": [...], **config}``) from which the modules
are rebuilt; nothing in it is executable. :func:`log_model_dir` logs such a folder as an MLflow
pyfunc model with *models-from-code*: MLflow copies the serving file of the folder's kind
(``semknobs/serving/<kind>_model.py``, see :data:`SERVING`) and the folder's files into the
logged model; loading it runs that file, whose ``PythonModel.load_context`` rebuilds the modules
from the JSON and safetensors. So neither the folder nor the logged model contains a pickle.

Registered versions are promoted with aliases (``candidate``, ``champion``, ...), never with the
deprecated stages. ``models:/semknobs-attgan@candidate`` names the version that training
registered last; :func:`load_model_dir` and :func:`load_attgan` accept that, ``runs:/...``,
``models:/<model id>`` and local folders.

A new kind (regressor, explainer bundle) needs a serving file and an entry in :data:`SERVING`;
saving, logging, registering and loading are shared.

``mlflow`` is imported inside the functions that need it (it takes seconds to import).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import importlib.util
import json
import re
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

import semknobs
from semknobs.atomic import atomic_path
from semknobs.errors import ModelError

if TYPE_CHECKING:
    import torch
    from mlflow.entities.model_registry import ModelVersion
    from mlflow.models import ModelSignature

    from semknobs.models.attgan import Generator
    from semknobs.models.regressor import PeakStressRegressor

CONFIG_FILE = "config.json"
WEIGHTS_SUFFIX = ".safetensors"
DEFAULT_ALIAS = "candidate"
MLMODEL_FILE = "MLmodel"

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


# --------------------------------------------------------------------------------------------
# kinds
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServingSpec:
    """How one kind of model folder is served through MLflow.

    ``module`` is the models-from-code file (an importable module of the installed package; it
    must end with ``mlflow.models.set_model(MODEL)`` and expose that instance as ``MODEL``).
    ``signature(config)`` and ``example(config)`` build the model signature and a small input
    example from the folder's config. ``requirements`` are distributions the serving file needs
    besides semknobs, mlflow, numpy, torch and safetensors. ``created_by`` tells a user how the
    default registered model comes about (used in error messages).
    """

    module: str
    signature: Callable[[Mapping[str, Any]], ModelSignature]
    example: Callable[[Mapping[str, Any]], Any]
    registered_name: str
    created_by: str
    requirements: tuple[str, ...] = field(default=())

    @property
    def code_path(self) -> Path:
        """The serving file inside the installed package (no repo checkout needed)."""
        spec = importlib.util.find_spec(self.module)
        if spec is None or spec.origin is None:
            raise ModelError(f"serving module {self.module} is not installed")
        return Path(spec.origin)


def _img_size(config: Mapping[str, Any], what: str) -> int:
    """The tile size a model folder's config declares (top level, else ``model.img_size``)."""
    model = config.get("model") or {}
    size = int(config.get("img_size") or model.get("img_size") or 0)
    if size <= 0:
        raise ModelError(f"{what} config has no img_size (neither top level nor model.img_size)")
    return size


def _attgan_size(config: Mapping[str, Any]) -> tuple[int, int]:
    return _img_size(config, "AttGAN"), int((config.get("model") or {}).get("n_attrs", 4))


def _attgan_signature(config: Mapping[str, Any]) -> ModelSignature:
    """Tensor signature: uint8 images (n, S, S) + float32 attributes (n, A) -> uint8 (n, S, S)."""
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    size, n_attrs = _attgan_size(config)
    inputs = Schema(
        [
            TensorSpec(np.dtype(np.uint8), (-1, size, size), "images"),
            TensorSpec(np.dtype(np.float32), (-1, n_attrs), "attributes"),
        ]
    )
    outputs = Schema([TensorSpec(np.dtype(np.uint8), (-1, size, size))])
    return ModelSignature(inputs=inputs, outputs=outputs)


def _attgan_example(config: Mapping[str, Any]) -> dict[str, np.ndarray]:
    size, n_attrs = _attgan_size(config)
    ramp = np.linspace(0, 255, size * size).reshape(1, size, size)
    return {
        "images": ramp.round().astype(np.uint8),
        "attributes": np.full((1, n_attrs), 0.5, dtype=np.float32),
    }


def _regressor_signature(config: Mapping[str, Any]) -> ModelSignature:
    """Tensor signature: uint8 tiles (n, S, S) -> float32 peak stress in MPa (n,)."""
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    size = _img_size(config, "regressor")
    inputs = Schema([TensorSpec(np.dtype(np.uint8), (-1, size, size))])
    outputs = Schema([TensorSpec(np.dtype(np.float32), (-1,))])
    return ModelSignature(inputs=inputs, outputs=outputs)


def _regressor_example(config: Mapping[str, Any]) -> np.ndarray:
    size = _img_size(config, "regressor")
    return np.linspace(0, 255, size * size).reshape(1, size, size).round().astype(np.uint8)


def _explainer_signature(config: Mapping[str, Any]) -> ModelSignature:
    """Columns: ``image`` (base64 PNG/TIFF) + optional attribute scores -> one row per tile;
    params: the Eq. 2 settings, defaulting to the bundle's."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    from semknobs.attributes import ATTRIBUTES

    inputs = Schema(
        [ColSpec("string", "image")] + [ColSpec("double", a, required=False) for a in ATTRIBUTES]
    )
    numbers = ["prediction_mpa", "baseline_mpa", "target_mpa", "achieved_mpa", "distance"]
    columns = [ColSpec("double", c) for c in numbers]
    columns += [ColSpec("boolean", "success"), ColSpec("string", "attributes_from")]
    for a in ATTRIBUTES:
        columns += [ColSpec("double", f"{k}_{a}") for k in ("start", "delta", "new")]
    cf = config.get("counterfactual") or {}
    params = ParamSchema(
        [
            ParamSpec("target", "string", str(cf.get("target", "higher"))),
            ParamSpec("lam", "double", float(cf.get("lam", 1.0))),
            ParamSpec("steps", "long", int(cf.get("steps", 100))),
            ParamSpec("delta", "double", float(cf.get("delta", 0.1))),
            ParamSpec("restarts", "long", int(cf.get("restarts", 3))),
        ]
    )
    return ModelSignature(inputs=inputs, outputs=Schema(columns), params=params)


def _explainer_example(config: Mapping[str, Any]) -> Any:
    from semknobs.serving.tile_codec import tiles_frame

    size = _img_size(config, "explainer")
    yy, xx = np.mgrid[:size, :size]
    tile = (127 + 100 * np.sin(xx / 3.0) * np.cos(yy / 4.0)).round().astype(np.uint8)
    return tiles_frame(tile[None])


SERVING: dict[str, ServingSpec] = {
    "attgan": ServingSpec(
        module="semknobs.serving.attgan_model",
        signature=_attgan_signature,
        example=_attgan_example,
        registered_name="semknobs-attgan",
        created_by="`dvc repro register`",
    ),
    "regressor": ServingSpec(
        module="semknobs.serving.regressor_model",
        signature=_regressor_signature,
        example=_regressor_example,
        registered_name="semknobs-regressor",
        created_by="`dvc repro register`",
        requirements=("timm",),
    ),
    "explainer": ServingSpec(
        module="semknobs.serving.explainer_model",
        signature=_explainer_signature,
        example=_explainer_example,
        registered_name="semknobs-explainer",
        created_by="`dvc repro register`",
        requirements=("timm", "pandas", "pillow", "tifffile"),
    ),
}
"""Serving recipe per model kind; add an entry (and a serving file) for a new kind."""


def serving_spec(kind: str) -> ServingSpec:
    try:
        return SERVING[kind]
    except KeyError:
        raise ModelError(
            f"no serving recipe for model kind {kind!r} (known: {', '.join(sorted(SERVING))})"
        ) from None


# --------------------------------------------------------------------------------------------
# model folders
# --------------------------------------------------------------------------------------------


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def save_model_dir(
    path: str | Path,
    *,
    kind: str,
    weights: Mapping[str, torch.nn.Module],
    config: Mapping[str, Any],
) -> Path:
    """Write a model folder: ``<name>.safetensors`` per module plus ``config.json``.

    The folder is built under a temporary name and renamed, so readers never see half of it and
    an existing folder is replaced whole. ``config`` must be JSON-serialisable (numpy scalars and
    paths are converted) and must not set ``kind``/``semknobs_version``/``weights`` itself.
    """
    from safetensors.torch import save_file

    if not _NAME_RE.match(kind):
        raise ValueError(f"invalid model kind {kind!r}")
    if not weights:
        raise ValueError("a model folder needs at least one module in `weights`")
    for name in weights:
        if not _NAME_RE.match(name) or name == Path(CONFIG_FILE).stem:
            raise ValueError(f"invalid weights name {name!r} (letters, digits, '_', '.', '-')")
    reserved = {"kind", "semknobs_version", "weights"} & set(config)
    if reserved:
        raise ValueError(f"config must not set {sorted(reserved)}: save_model_dir writes them")
    document = {
        "kind": kind,
        "semknobs_version": semknobs.__version__,
        "weights": sorted(weights),
        **config,
    }
    text = json.dumps(document, indent=2, default=_json_default) + "\n"  # fail before writing
    target = Path(path)
    with atomic_path(target, directory=True) as tmp:
        for name, module in weights.items():
            tensors = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
            save_file(tensors, str(tmp / f"{name}{WEIGHTS_SUFFIX}"), metadata={"format": "pt"})
        (tmp / CONFIG_FILE).write_text(text)
    return target


def read_config(model_dir: str | Path, *, kind: str | None = None) -> dict[str, Any]:
    """The ``config.json`` of a model folder, checked against ``kind`` when given."""
    folder = Path(model_dir)
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
        raise ModelError(
            f"{folder} is not a model folder: it has no {CONFIG_FILE} "
            "(write one with semknobs.registry.save_model_dir)"
        )
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"{config_path}: unreadable model config ({exc})") from exc
    if not isinstance(config, dict) or "kind" not in config:
        raise ModelError(f"{config_path}: not a semknobs model config (no 'kind' entry)")
    if kind is not None and config["kind"] != kind:
        raise ModelError(f"{folder} holds a {config['kind']!r} model, expected a {kind!r} model")
    return config


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


def _requirements(spec: ServingSpec) -> list[str]:
    """Pinned pip requirements of a served model.

    Given explicitly, so MLflow does not infer them by loading the model in a subprocess (slow,
    and it would pick up whatever the training process happened to import).
    """
    base = ("semknobs", "mlflow", "numpy", "torch", "safetensors")
    return [_pin(d) for d in (*base, *spec.requirements)]


def _preflight(spec: ServingSpec, artifacts: dict[str, str], example: Any) -> None:
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

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LoggedModelRef:
        try:
            return cls(str(data["model_uri"]), str(data["model_id"]), str(data["run_id"]))
        except (KeyError, TypeError) as exc:
            raise ModelError(f"not a logged-model reference ({exc}): {dict(data)}") from None


def log_model(
    model_dir: str | Path,
    *,
    name: str,
    kind: str,
    tags: Mapping[str, Any] | None = None,
    input_example: Any = None,
) -> LoggedModelRef:
    """Log a model folder to the active run as a pyfunc model (not registered).

    The logged model is an MLflow 3 *LoggedModel* named ``name`` (linked to the run, artifacts
    under ``<experiment artifacts>/models/<model id>/artifacts``); the folder's files are its
    pyfunc artifacts and the serving file of ``kind`` its code. The folder is loaded and the
    example predicted in-process first, so a folder the serving file cannot load is an error
    before anything is logged.
    """
    import mlflow

    run = mlflow.active_run()
    if run is None:
        raise ModelError("log_model needs an active MLflow run (open one with stage_run)")
    folder = Path(model_dir).resolve()
    config = read_config(folder, kind=kind)
    spec = serving_spec(kind)
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
    alias: str | None = DEFAULT_ALIAS,
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
    kind: str,
    registered_name: str,
    alias: str | None = DEFAULT_ALIAS,
    tags: Mapping[str, Any] | None = None,
    description: str | None = None,
    input_example: Any = None,
) -> ModelVersion:
    """:func:`log_model` then :func:`register`, in the active run."""
    ref = log_model(model_dir, name=name, kind=kind, tags=tags, input_example=input_example)
    return register(ref, registered_name=registered_name, alias=alias, description=description)


# --------------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------------

_ALIAS_URI = re.compile(r"^models:/(?P<name>[^/@]+)@(?P<alias>[^/]+)/?$")
_VERSION_URI = re.compile(r"^models:/(?P<name>[^/@]+)/(?P<version>\d+|latest)/?$")


def _creation_hint(registered_name: str) -> str:
    """How the registered model comes about, if it is one of ours (for error messages)."""
    for spec in SERVING.values():
        if spec.registered_name == registered_name:
            return f"{spec.created_by} trains and registers it as @{DEFAULT_ALIAS}"
    return "semknobs.registry.log_model_dir registers model folders"


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
                f"(aliases: {shown}). Promote a version with "
                f"`MlflowClient().set_registered_model_alias({name!r}, {alias!r}, <version>)`, "
                f"or register a new one ({_creation_hint(name)})"
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


def find_model_dir(root: str | Path) -> Path:
    """The folder holding ``config.json`` (and the safetensors) inside ``root``.

    ``root`` may be the model folder itself or a downloaded MLflow model, where the files sit
    wherever its ``MLmodel`` says the pyfunc artifacts are (``artifacts/`` in MLflow 3.17).
    """
    root = Path(root)
    if (root / CONFIG_FILE).is_file():
        return root
    mlmodel = root / MLMODEL_FILE
    if mlmodel.is_file():
        import yaml

        try:
            flavors = (yaml.safe_load(mlmodel.read_text()) or {}).get("flavors") or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ModelError(f"{mlmodel}: unreadable ({exc})") from exc
        entries = ((flavors.get("python_function") or {}).get("artifacts")) or {}
        entry = entries.get(CONFIG_FILE)
        if isinstance(entry, dict) and entry.get("path"):
            candidate = (root / entry["path"]).parent
            if (candidate / CONFIG_FILE).is_file():
                return candidate
    found = sorted(p.parent for p in root.rglob(CONFIG_FILE) if _has_kind(p))
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        raise ModelError(f"{root}: several model configs found: {[str(p) for p in found]}")
    raise ModelError(
        f"{root} holds no semknobs model: no {CONFIG_FILE} with a 'kind' entry "
        "(was it logged with semknobs.registry.log_model_dir?)"
    )


def _has_kind(path: Path) -> bool:
    try:
        return "kind" in json.loads(path.read_text())
    except (OSError, ValueError, TypeError):
        return False


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


def build_attgan_module(folder: Path, model: Mapping[str, Any], weights: str) -> torch.nn.Module:
    """The AttGAN ``weights`` module (``generator`` or ``discriminator``) of a model folder,
    rebuilt from ``model`` (AttGANConfig fields) and ``<weights>.safetensors``, in eval mode."""
    from semknobs.models.attgan import AttGANConfig, Discriminator, Generator

    try:
        cfg = AttGANConfig(**model)
    except (TypeError, ValueError) as exc:
        raise ModelError(f"{folder / CONFIG_FILE}: bad AttGAN 'model' entry ({exc})") from exc
    module = {"generator": Generator, "discriminator": Discriminator}[weights](cfg)
    return _load_weights(module, folder / f"{weights}{WEIGHTS_SUFFIX}", "AttGAN")


def build_regressor_module(
    folder: Path, model: Mapping[str, Any], target: Mapping[str, Any]
) -> PeakStressRegressor:
    """The regressor of a model folder, rebuilt from ``model`` (RegressorConfig fields) and
    ``target`` (training mean/std of the stress) and ``regressor.safetensors``, in eval mode."""
    from semknobs.models.regressor import PeakStressRegressor, RegressorConfig

    try:
        cfg = RegressorConfig.from_dict(dict(model))
        module = PeakStressRegressor(cfg, float(target["mean"]), float(target["std"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(
            f"{folder / CONFIG_FILE}: bad regressor 'model'/'target' entry ({exc})"
        ) from exc
    return _load_weights(module, folder / f"regressor{WEIGHTS_SUFFIX}", "regressor")


def _load_weights(module: torch.nn.Module, weights: Path, what: str) -> Any:
    from safetensors.torch import load_file

    if not weights.is_file():
        raise ModelError(f"{weights.parent}: {what} model folder without {weights.name}")
    try:
        module.load_state_dict(load_file(str(weights)))
    except RuntimeError as exc:  # missing/unexpected keys, shape mismatch
        raise ModelError(f"{weights} does not fit the config's {what}: {exc}") from exc
    return module.eval()


def load_attgan(model_uri_or_dir: str | Path) -> tuple[Generator, dict[str, Any]]:
    """Rebuild the AttGAN generator of a model folder or logged model.

    Returns ``(generator in eval mode on the CPU, the folder's full config)``; the generator is
    rebuilt from ``config["model"]`` (AttGANConfig fields) and ``generator.safetensors``.
    """
    with local_model_dir(model_uri_or_dir) as folder:
        config = read_config(folder, kind="attgan")
        if not isinstance(config.get("model"), dict):
            raise ModelError(f"{folder / CONFIG_FILE}: bad AttGAN 'model' entry (missing)")
        generator = build_attgan_module(folder, config["model"], "generator")
    return generator, config


def load_regressor(model_uri_or_dir: str | Path) -> tuple[PeakStressRegressor, dict[str, Any]]:
    """Rebuild the peak-stress regressor of a model folder or logged model.

    Returns ``(regressor in eval mode on the CPU, the folder's full config)``; the module is
    rebuilt from ``config["model"]`` (RegressorConfig fields) and ``config["target"]`` (the
    training mean/std of the stress) and loaded from ``regressor.safetensors``.
    """
    with local_model_dir(model_uri_or_dir) as folder:
        config = read_config(folder, kind="regressor")
        model = build_regressor_module(
            folder, config.get("model") or {}, config.get("target") or {}
        )
    return model, config
