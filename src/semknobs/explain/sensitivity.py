"""Forward sensitivity: turn one knob (or two), hold the others at the tile's lot values, and
watch the regressor's prediction of the edited tile.

``ForwardSensitivity(gen, reg).attribute(images, attrs, points)`` returns, for every tile and
attribute, the predictions along a sweep of that attribute over [0, 1]; ``slopes`` reduces each
curve to a local slope at the tile's own value (the finite-difference derivative of the
response, the quantity compared with the true law's gradient). Predictions are reported relative
to the reconstruction baseline ``R(G(I; A))`` where noted.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from semknobs.attributes import ATTRIBUTES


@dataclass
class SweepResult:
    levels: np.ndarray  # (points,)
    predictions: np.ndarray  # (n, 4, points) MPa
    baseline: np.ndarray  # (n,) R(G(I; A))
    attrs: np.ndarray  # (n, 4)

    def slopes(self) -> np.ndarray:
        """d prediction / d attribute at each tile's own value, (n, 4), MPa per unit."""
        n, k, _ = self.predictions.shape
        out = np.empty((n, k))
        for j in range(k):
            grad = np.gradient(self.predictions[:, j, :], self.levels, axis=1)
            for i in range(n):
                out[i, j] = np.interp(self.attrs[i, j], self.levels, grad[i])
        return out


class ForwardSensitivity:
    def __init__(self, gen: nn.Module, reg: nn.Module, batch_size: int = 128):
        self.gen = gen
        self.reg = reg
        self.batch_size = batch_size

    @torch.no_grad()
    def predict(
        self, images: torch.Tensor, attrs: torch.Tensor, source: torch.Tensor
    ) -> torch.Tensor:
        """R(G(I; A)) for edits of ``images`` from their own attributes ``source`` to ``attrs``."""
        self.gen.eval()
        self.reg.eval()
        out = []
        for i in range(0, len(images), self.batch_size):
            sl = slice(i, i + self.batch_size)
            out.append(self.reg(self.gen(images[sl], attrs[sl], source[sl])).float())
        return torch.cat(out)

    def attribute(self, images: torch.Tensor, attrs: torch.Tensor, points: int = 9) -> SweepResult:
        n, k = attrs.shape
        levels = torch.linspace(0, 1, points, device=attrs.device)
        sweep = attrs[:, None, None, :].repeat(1, k, points, 1)  # (n, k, points, k)
        for j in range(k):
            sweep[:, j, :, j] = levels
        flat_images = images[:, None, None].expand(-1, k, points, *images.shape[1:])
        source = attrs[:, None, None, :].expand(-1, k, points, -1).reshape(-1, k)
        pred = self.predict(
            flat_images.reshape(-1, *images.shape[1:]), sweep.reshape(-1, k), source
        )
        baseline = self.predict(images, attrs, attrs)
        return SweepResult(
            levels=levels.cpu().numpy(),
            predictions=pred.reshape(n, k, points).cpu().numpy(),
            baseline=baseline.cpu().numpy(),
            attrs=attrs.cpu().numpy(),
        )

    def pair(
        self, images: torch.Tensor, attrs: torch.Tensor, a: str, b: str, points: int = 7
    ) -> tuple[np.ndarray, np.ndarray]:
        """Mean prediction over tiles on an ``a`` x ``b`` grid: (levels, (points, points))."""
        ia, ib = ATTRIBUTES.index(a), ATTRIBUTES.index(b)
        levels = torch.linspace(0, 1, points, device=attrs.device)
        grid = np.empty((points, points))
        for r, va in enumerate(levels):
            for c, vb in enumerate(levels):
                edit = attrs.clone()
                edit[:, ia], edit[:, ib] = va, vb
                grid[r, c] = float(self.predict(images, edit, attrs).mean())
        return levels.cpu().numpy(), grid
