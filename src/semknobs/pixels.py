"""The one pixel convention: tiles are stored as uint8 (n, S, S); models see float
(n, 1, S, S) in [-1, 1] (``x / 127.5 - 1``). Every conversion goes through here."""

from __future__ import annotations

import numpy as np
import torch


def to_model(images: np.ndarray | torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 tiles (n, S, S) -> float (n, 1, S, S) in [-1, 1] on ``device``; the input is never
    modified (read-only memory maps and decoded buffers are fine)."""
    x = images if torch.is_tensor(images) else torch.from_numpy(np.array(images, copy=True))
    return x.to(device).float().div(127.5).sub(1).unsqueeze(1)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """float (n, 1, S, S) in [-1, 1] -> uint8 (n, S, S), clipped and rounded, on the CPU."""
    return ((x.detach().squeeze(1).float().clamp(-1, 1) + 1) * 127.5).round().byte().cpu().numpy()


def model_to_uint8(x: np.ndarray) -> np.ndarray:
    """The same for a float numpy array (n, S, S) or (S, S) in [-1, 1]."""
    return np.rint((np.clip(x, -1, 1) + 1) * 127.5).astype(np.uint8)
