"""MLflow models-from-code entry point for the AttGAN generator (kind ``attgan``).

MLflow copies this file into every logged AttGAN model and runs it when the model is loaded
(``mlflow.pyfunc.load_model``, ``mlflow models serve``); it needs only the installed
``semknobs`` package, not a repo checkout. The weights come from the model's artifacts
(``generator.safetensors`` + ``config.json``, see :mod:`semknobs.registry`): nothing is
unpickled.

Input (tensor signature): ``{"images": uint8 (n, S, S), "attributes": float32 (n, 4)}`` with
attributes in [0, 1] (the scaled knobs; values outside extrapolate and are not clipped). Output:
the edited tiles, uint8 (n, S, S). Load-time options via ``model_config``: ``device`` (default
``"cpu"``) and ``batch_size`` (default 64).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch

CONFIG_ARTIFACT = "config.json"


def _to_tensor(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 (n, S, S) -> float (n, 1, S, S) in [-1, 1], as in semknobs.evaluation.attgan."""
    x = torch.from_numpy(np.ascontiguousarray(images)).to(device)
    return x.float().div(127.5).sub(1)[:, None]


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    """(n, 1, S, S) in [-1, 1] -> uint8 (n, S, S), as in semknobs.evaluation.attgan."""
    return ((x.squeeze(1).float().clamp(-1, 1) + 1) * 127.5).round().byte().cpu().numpy()


class AttGANModel(mlflow.pyfunc.PythonModel):
    """Edits SEM tiles towards target attribute values with a registered AttGAN generator."""

    # predict() has no type hint on purpose: MLflow would derive a column-based signature from
    # it and override the tensor signature the model is logged with (semknobs.registry). This
    # flag (also set by MLflow's own ChatModel classes) stops PythonModel.__init_subclass__ from
    # wrapping predict() for hint-based validation and from warning that the hint is missing.
    _skip_type_hint_validation = True

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        from semknobs.registry import load_attgan

        options = dict(context.model_config or {})
        self.device = torch.device(options.get("device", "cpu"))
        self.batch_size = int(options.get("batch_size", 64))
        folder = Path(context.artifacts[CONFIG_ARTIFACT]).parent
        generator, config = load_attgan(folder)
        self.generator = generator.to(self.device)
        self.img_size = int(generator.cfg.img_size)
        self.n_attrs = int(generator.cfg.n_attrs)
        self.config = config

    def predict(self, context, model_input, params: dict[str, Any] | None = None) -> np.ndarray:
        images = np.asarray(model_input["images"])
        attrs = np.asarray(model_input["attributes"], dtype=np.float32)
        size = self.img_size
        if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (size, size):
            raise ValueError(
                f"images must be uint8 (n, {size}, {size}), got {images.dtype} {images.shape}"
            )
        if attrs.shape != (len(images), self.n_attrs):
            raise ValueError(
                f"attributes must be float32 ({len(images)}, {self.n_attrs}), got {attrs.shape}"
            )
        if not np.isfinite(attrs).all():
            raise ValueError("attributes contain NaN or infinite values")
        out = np.empty_like(images)
        with torch.inference_mode():
            for i in range(0, len(images), self.batch_size):
                x = _to_tensor(images[i : i + self.batch_size], self.device)
                a = torch.from_numpy(np.ascontiguousarray(attrs[i : i + self.batch_size]))
                out[i : i + self.batch_size] = _to_uint8(self.generator(x, a.to(self.device)))
        return out


MODEL = AttGANModel()
mlflow.models.set_model(MODEL)
