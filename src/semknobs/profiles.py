"""Parameter profiles (``profiles/<name>.yaml``) are overlays of ``params.yaml``: laid over it in
place with a round-trip YAML editor, so every comment and the layout survive, or passed to DVC
as ``dvc exp run -S key=value`` overrides. Nothing rewrites the file from a plain dump."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from semknobs.atomic import atomic_path
from semknobs.config import flatten
from semknobs.errors import ParamsError


def apply_overlay(params_file: Path, overlay: Mapping[str, Any]) -> None:
    """Set every leaf of ``overlay`` in ``params_file``, keeping comments and order; a key the
    file does not have is refused (a profile must not invent params)."""
    from ruamel.yaml import YAML

    yaml = YAML()  # round-trip mode: comments, order and quoting survive
    yaml.preserve_quotes = True
    yaml.width = 100
    yaml.representer.add_representer(  # null stays "null", not an empty value
        type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null")
    )
    doc = yaml.load(params_file.read_text())
    for key, value in flatten(dict(overlay)).items():
        node = doc
        *parents, leaf = key.split(".")
        for i, part in enumerate(parents):
            if not isinstance(node, dict) or part not in node:
                raise ParamsError(f"{params_file}: no section {'.'.join(parents[: i + 1])!r}")
            node = node[part]
        if not isinstance(node, dict) or leaf not in node:
            raise ParamsError(f"{params_file}: no parameter {key!r} to set")
        node[leaf] = _like(node[leaf], value)
    with atomic_path(params_file) as tmp, open(tmp, "w") as fh:
        yaml.dump(doc, fh)


def _like(old: Any, value: Any) -> Any:
    """A flow-style list stays a flow-style list (``[24.0, 48.0]``)."""
    from ruamel.yaml.comments import CommentedSeq

    if isinstance(value, list) and isinstance(old, CommentedSeq):
        seq = CommentedSeq(value)
        if old.fa.flow_style():
            seq.fa.set_flow_style()
        return seq
    return value


def dvc_set_args(overlay: Mapping[str, Any]) -> list[str]:
    """The overlay as ``dvc exp run`` arguments: ``-S key=value`` per leaf (values as JSON,
    which DVC parses as YAML)."""
    return [f"-S '{k}={json.dumps(v)}'" for k, v in flatten(dict(overlay)).items()]
