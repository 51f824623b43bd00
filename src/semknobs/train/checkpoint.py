"""Training checkpoints without pickle: tensors in safetensors, everything else in JSON.

A checkpoint is a folder with ``state.safetensors`` (module weights, optimizer moments, RNG
state) and ``state.json`` (step, optimizer hyper-parameters, a fingerprint of the run's params,
any scalars). It is written under a temporary name and renamed, so a kill -9 mid-write leaves
the previous checkpoint intact. Loading never unpickles anything.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from semknobs.atomic import atomic_path

STATE_TENSORS = "state.safetensors"
STATE_JSON = "state.json"


def save_checkpoint(
    path: str | Path,
    *,
    modules: dict[str, nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    rng: torch.Generator,
    meta: dict[str, Any],
) -> None:
    tensors: dict[str, torch.Tensor] = {"rng": rng.get_state()}
    for name, module in modules.items():
        for key, value in module.state_dict().items():
            tensors[f"module.{name}.{key}"] = value.detach().cpu().contiguous()
    groups = {}
    for name, opt in optimizers.items():
        state = opt.state_dict()
        groups[name] = state["param_groups"]
        for pid, slots in state["state"].items():
            for key, value in slots.items():
                value = value if torch.is_tensor(value) else torch.tensor(value)
                tensors[f"optim.{name}.{pid}.{key}"] = value.detach().cpu().contiguous()
    with atomic_path(path, directory=True) as tmp:
        save_file(tensors, str(tmp / STATE_TENSORS))
        (tmp / STATE_JSON).write_text(json.dumps({"meta": meta, "param_groups": groups}, indent=1))


def read_meta(path: str | Path) -> dict[str, Any] | None:
    """The checkpoint's metadata, or None if there is no complete checkpoint at ``path``."""
    path = Path(path)
    if not (path / STATE_JSON).exists() or not (path / STATE_TENSORS).exists():
        return None
    try:
        return json.loads((path / STATE_JSON).read_text())["meta"]
    except (OSError, ValueError, KeyError):
        return None


def load_checkpoint(
    path: str | Path,
    *,
    modules: dict[str, nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    rng: torch.Generator,
) -> dict[str, Any]:
    """Restore modules, optimizers and RNG in place; returns the metadata."""
    path = Path(path)
    tensors = load_file(str(path / STATE_TENSORS))
    info = json.loads((path / STATE_JSON).read_text())
    rng.set_state(tensors["rng"])
    for name, module in modules.items():
        prefix = f"module.{name}."
        module.load_state_dict(
            {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        )
    for name, opt in optimizers.items():
        prefix = f"optim.{name}."
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith(prefix):
                pid, slot = key[len(prefix) :].split(".", 1)
                state.setdefault(int(pid), {})[slot] = value
        opt.load_state_dict({"state": state, "param_groups": info["param_groups"][name]})
    return info["meta"]


def save_weights(path: str | Path, module: nn.Module) -> None:
    with atomic_path(path) as tmp:
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}, str(tmp)
        )


def load_weights(path: str | Path, module: nn.Module) -> nn.Module:
    module.load_state_dict(load_file(str(path)))
    return module
