"""MLflow models-from-code entry point for the peak-stress regressor (kind ``regressor``).

MLflow copies this file into every logged regressor and runs it when the model is loaded
(``mlflow.pyfunc.load_model``, ``mlflow models serve``); it needs only the installed
``semknobs`` package. The weights come from the model's artifacts (``regressor.safetensors`` +
``config.json`` with the preset/config and target statistics, see :mod:`semknobs.registry`):
nothing is unpickled.

Input (tensor signature): uint8 tiles (n, S, S). Output: predicted peak stress in MPa, float32
(n,), one value per tile; a lot's prediction is the mean over its tiles. Load-time options via
``model_config``: ``device`` (default ``"cpu"``) and ``batch_size`` (default 256).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch

CONFIG_ARTIFACT = "config.json"


class RegressorModel(mlflow.pyfunc.PythonModel):
    """Predicts the peak stress (MPa) of SEM tiles with a registered regressor."""

    # predict() has no type hint on purpose (see semknobs.serving.attgan_model): MLflow would
    # otherwise replace the tensor signature the model is logged with.
    _skip_type_hint_validation = True

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        from semknobs.registry import load_regressor

        options = dict(context.model_config or {})
        self.device = torch.device(options.get("device", "cpu"))
        self.batch_size = int(options.get("batch_size", 256))
        folder = Path(context.artifacts[CONFIG_ARTIFACT]).parent
        model, config = load_regressor(folder)
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
