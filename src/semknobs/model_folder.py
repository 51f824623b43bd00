"""Model folders: one ``<name>.safetensors`` per module plus a ``config.json``
(``{"kind": ..., "semknobs_version": ..., "weights": [...], **config}``) from which the modules
are rebuilt; nothing in a folder is executable or pickled. Generic: the kinds and their typed
configs live with their serving code (``semknobs/serving/<kind>_model.py``); publishing folders
to MLflow is :mod:`semknobs.registry`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

import semknobs
from semknobs.atomic import atomic_path
from semknobs.errors import ModelError, ParamsError

if TYPE_CHECKING:
    import torch

CONFIG_FILE = "config.json"
WEIGHTS_SUFFIX = ".safetensors"
MLMODEL_FILE = "MLmodel"
RESERVED = frozenset({"kind", "semknobs_version", "weights"})  # written by save_model_dir

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
T = TypeVar("T")


def img_size(config: Mapping[str, Any], what: str) -> int:
    """The tile size a model folder's config declares (top level, else ``model.img_size``)."""
    model = config.get("model") or {}
    size = int(config.get("img_size") or model.get("img_size") or 0)
    if size <= 0:
        raise ModelError(f"{what} config has no img_size (neither top level nor model.img_size)")
    return size


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
    reserved = RESERVED & set(config)
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


def read_folder(model_dir: str | Path, cls: type[T], *, kind: str) -> T:
    """The typed config of a model folder: ``config.json`` without the bookkeeping entries,
    converted strictly to the kind's frozen dataclass ``cls`` (the params loader's rules)."""
    from semknobs.config import from_mapping

    config = read_config(model_dir, kind=kind)
    body = {k: v for k, v in config.items() if k not in RESERVED}
    try:
        return from_mapping(cls, body, where=f"{Path(model_dir) / CONFIG_FILE}")
    except ParamsError as exc:
        raise ModelError(str(exc)) from None


def load_weights(module: torch.nn.Module, folder: Path, name: str, what: str) -> Any:
    """``module`` with the weights of ``<folder>/<name>.safetensors``, in eval mode."""
    from safetensors.torch import load_file

    weights = Path(folder) / f"{name}{WEIGHTS_SUFFIX}"
    if not weights.is_file():
        raise ModelError(f"{weights.parent}: {what} model folder without {weights.name}")
    try:
        module.load_state_dict(load_file(str(weights)))
    except RuntimeError as exc:  # missing/unexpected keys, shape mismatch
        raise ModelError(f"{weights} does not fit the config's {what}: {exc}") from exc
    return module.eval()


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
