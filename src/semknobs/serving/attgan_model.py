"""The AttGAN generator as a model kind (``attgan``): its folder config, builder, MLflow spec and
models-from-code entry point.

MLflow copies this file into every logged AttGAN model and runs it when the model is loaded
(``mlflow.pyfunc.load_model``, ``mlflow models serve``); it needs only the installed
``semknobs`` package, not a repo checkout. The weights come from the model's artifacts
(``generator.safetensors`` + ``config.json``, see :mod:`semknobs.model_folder`): nothing is
unpickled.

Input (tensor signature): ``{"images": uint8 (n, S, S), "attributes": float32 (n, 4)}`` with
attributes in [0, 1] (the scaled knobs; values outside extrapolate and are not clipped); a
generator conditioned on the change (``condition: change``) or with noise maps scaled by it
(``noise``) also needs ``"source"``: float32 (n, 4), each tile's own attributes, which it edits
from. Output:
the edited tiles, uint8 (n, S, S). Load-time options via ``model_config``: ``device`` (default
``"cpu"``) and ``batch_size`` (default 64).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch

from semknobs.config import from_mapping
from semknobs.model_folder import CONFIG_FILE, img_size, load_weights, read_folder
from semknobs.models.attgan import AttGANConfig, Discriminator, Generator
from semknobs.pixels import to_model, to_uint8
from semknobs.registry import ModelKind

KIND = "attgan"


@dataclass(frozen=True)
class AttGANFolder:
    """``config.json`` of an AttGAN model folder (besides the bookkeeping entries)."""

    model: AttGANConfig
    scaler: dict[str, dict[str, float]]  # AttributeScaler.to_dict() of the training lots
    img_size: int
    train_lots: list[str] = field(default_factory=list)
    train: dict[str, Any] = field(default_factory=dict)  # the training params, for the record
    metrics: dict[str, Any] = field(default_factory=dict)


def build(folder: Path, config: AttGANFolder, weights: str = "generator") -> torch.nn.Module:
    """The ``generator`` or ``discriminator`` of a folder, in eval mode on the CPU."""
    module = {"generator": Generator, "discriminator": Discriminator}[weights](config.model)
    return load_weights(module, folder, weights, "AttGAN")


def load(model_uri_or_dir: str | Path) -> tuple[Generator, AttGANFolder]:
    """The generator (eval mode, CPU) and the folder config of a folder or logged model."""
    from semknobs.registry import local_model_dir

    with local_model_dir(model_uri_or_dir) as folder:
        config = read_folder(folder, AttGANFolder, kind=KIND)
        return build(folder, config), config


def _size(config: Mapping[str, Any]) -> tuple[int, int]:
    return img_size(config, "AttGAN"), int((config.get("model") or {}).get("n_attrs", 4))


def _needs_source(config: Mapping[str, Any]) -> bool:
    return from_mapping(AttGANConfig, config.get("model"), "model").edits_from_source


def _signature(config: Mapping[str, Any]):
    """Tensor signature: uint8 images (n, S, S) + float32 attributes (n, A) -> uint8 (n, S, S)."""
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    size, n_attrs = _size(config)
    specs = [
        TensorSpec(np.dtype(np.uint8), (-1, size, size), "images"),
        TensorSpec(np.dtype(np.float32), (-1, n_attrs), "attributes"),
    ]
    if _needs_source(config):
        specs.append(TensorSpec(np.dtype(np.float32), (-1, n_attrs), "source"))
    inputs = Schema(specs)
    outputs = Schema([TensorSpec(np.dtype(np.uint8), (-1, size, size))])
    return ModelSignature(inputs=inputs, outputs=outputs)


def _example(config: Mapping[str, Any]) -> dict[str, np.ndarray]:
    size, n_attrs = _size(config)
    ramp = np.linspace(0, 255, size * size).reshape(1, size, size)
    example = {
        "images": ramp.round().astype(np.uint8),
        "attributes": np.full((1, n_attrs), 0.5, dtype=np.float32),
    }
    if _needs_source(config):
        example["source"] = np.full((1, n_attrs), 0.4, dtype=np.float32)
    return example


SPEC = ModelKind(KIND, "semknobs.serving.attgan_model", _signature, _example)


class AttGANModel(mlflow.pyfunc.PythonModel):
    """Edits SEM tiles towards target attribute values with a registered AttGAN generator."""

    # predict() has no type hint on purpose: MLflow would derive a column-based signature from
    # it and override the tensor signature the model is logged with (semknobs.registry). This
    # flag (also set by MLflow's own ChatModel classes) stops PythonModel.__init_subclass__ from
    # wrapping predict() for hint-based validation and from warning that the hint is missing.
    _skip_type_hint_validation = True

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        options = dict(context.model_config or {})
        self.device = torch.device(options.get("device", "cpu"))
        self.batch_size = int(options.get("batch_size", 64))
        folder = Path(context.artifacts[CONFIG_FILE]).parent
        generator, config = load(folder)
        self.generator = generator.to(self.device)
        self.img_size = int(generator.cfg.img_size)
        self.n_attrs = int(generator.cfg.n_attrs)
        self.config = config

    def _attributes(self, model_input, key: str, n: int) -> np.ndarray:
        values = np.asarray(model_input[key], dtype=np.float32)
        if values.shape != (n, self.n_attrs):
            raise ValueError(f"{key} must be float32 ({n}, {self.n_attrs}), got {values.shape}")
        if not np.isfinite(values).all():
            raise ValueError(f"{key} contain NaN or infinite values")
        return values

    def predict(self, context, model_input, params: dict[str, Any] | None = None) -> np.ndarray:
        images = np.asarray(model_input["images"])
        size = self.img_size
        if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (size, size):
            raise ValueError(
                f"images must be uint8 (n, {size}, {size}), got {images.dtype} {images.shape}"
            )
        attrs = self._attributes(model_input, "attributes", len(images))
        if self.generator.cfg.edits_from_source:
            if "source" not in model_input:
                raise ValueError(
                    "this generator edits from each tile's own attributes: pass 'source' "
                    f"float32 ({len(images)}, {self.n_attrs}) beside 'attributes'"
                )
            source = self._attributes(model_input, "source", len(images))
        else:  # the absolute design ignores it
            source = attrs
        attrs_t, source_t = (torch.as_tensor(v, device=self.device) for v in (attrs, source))
        out = np.empty_like(images)
        with torch.inference_mode():
            for i in range(0, len(images), self.batch_size):
                sl = slice(i, i + self.batch_size)
                x = to_model(images[sl], self.device)
                out[sl] = to_uint8(self.generator(x, attrs_t[sl], source_t[sl]))
        return out


MODEL = AttGANModel()
mlflow.models.set_model(MODEL)
