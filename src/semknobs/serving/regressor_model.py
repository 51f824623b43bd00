"""The peak-stress regressor as a model kind (``regressor``): its folder config, builder, MLflow
spec and models-from-code entry point.

MLflow copies this file into every logged regressor and runs it when the model is loaded
(``mlflow.pyfunc.load_model``, ``mlflow models serve``); it needs only the installed
``semknobs`` package. The weights come from the model's artifacts (``regressor.safetensors`` +
``config.json`` with the preset/config and target statistics): nothing is unpickled.

Input (tensor signature): uint8 tiles (n, S, S). Output: predicted peak stress in MPa, float32
(n,), one value per tile; a lot's prediction is the mean over its tiles. Load-time options via
``model_config``: ``device`` (default ``"cpu"``) and ``batch_size`` (default 256).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch

from semknobs.model_folder import CONFIG_FILE, img_size, load_weights, read_folder
from semknobs.models.regressor import PeakStressRegressor, RegressorConfig, TargetStats
from semknobs.registry import ModelKind

KIND = "regressor"


@dataclass(frozen=True)
class RegressorFolder:
    """``config.json`` of a regressor model folder (besides the bookkeeping entries)."""

    model: RegressorConfig
    target: TargetStats
    img_size: int
    scaler: dict[str, dict[str, float]] = field(default_factory=dict)
    train_lots: list[str] = field(default_factory=list)
    train: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)


def build(folder: Path, model: RegressorConfig, target: TargetStats) -> PeakStressRegressor:
    """The regressor of a folder, in eval mode on the CPU."""
    module = PeakStressRegressor(model, target.mean, target.std)
    return load_weights(module, folder, "regressor", "regressor")


def load(model_uri_or_dir: str | Path) -> tuple[PeakStressRegressor, RegressorFolder]:
    """The regressor (eval mode, CPU) and the folder config of a folder or logged model."""
    from semknobs.registry import local_model_dir

    with local_model_dir(model_uri_or_dir) as folder:
        config = read_folder(folder, RegressorFolder, kind=KIND)
        return build(folder, config.model, config.target), config


def _signature(config: Mapping[str, Any]):
    """Tensor signature: uint8 tiles (n, S, S) -> float32 peak stress in MPa (n,)."""
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    size = img_size(config, "regressor")
    inputs = Schema([TensorSpec(np.dtype(np.uint8), (-1, size, size))])
    outputs = Schema([TensorSpec(np.dtype(np.float32), (-1,))])
    return ModelSignature(inputs=inputs, outputs=outputs)


def _example(config: Mapping[str, Any]) -> np.ndarray:
    size = img_size(config, "regressor")
    return np.linspace(0, 255, size * size).reshape(1, size, size).round().astype(np.uint8)


SPEC = ModelKind(KIND, "semknobs.serving.regressor_model", _signature, _example, ("timm",))


class RegressorModel(mlflow.pyfunc.PythonModel):
    """Predicts the peak stress (MPa) of SEM tiles with a registered regressor."""

    # predict() has no type hint on purpose (see semknobs.serving.attgan_model): MLflow would
    # otherwise replace the tensor signature the model is logged with.
    _skip_type_hint_validation = True

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        options = dict(context.model_config or {})
        self.device = torch.device(options.get("device", "cpu"))
        self.batch_size = int(options.get("batch_size", 256))
        folder = Path(context.artifacts[CONFIG_FILE]).parent
        model, config = load(folder)
        self.model = model.to(self.device)
        self.img_size = int(model.cfg.img_size)
        self.config = config

    def predict(self, context, model_input, params: dict[str, Any] | None = None) -> np.ndarray:
        from semknobs.models.regressor import predict

        if isinstance(model_input, dict):  # a tensor-signature input may arrive by name
            model_input = next(iter(model_input.values()))
        images = np.asarray(model_input)
        size = self.img_size
        if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (size, size):
            raise ValueError(
                f"tiles must be uint8 (n, {size}, {size}), got {images.dtype} {images.shape}"
            )
        return predict(self.model, images, self.batch_size).astype(np.float32)


MODEL = RegressorModel()
mlflow.models.set_model(MODEL)
