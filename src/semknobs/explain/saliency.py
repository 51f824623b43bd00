"""Pixel-attribution baselines (Captum): LayerGradCam and Integrated Gradients on the regressor,
and the weight-randomisation sanity check of Adebayo et al. (2018).

The regressor has one scalar output (MPa); Captum is given a view with shape (n, 1) and target 0.
GradCAM maps are upsampled to the tile size; both kinds of map are returned as (n, S, S).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from captum.attr import IntegratedGradients, LayerAttribution, LayerGradCam
from scipy.stats import spearmanr
from torch import nn


class _Column(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).reshape(len(x), 1)


class PixelSaliency:
    """``PixelSaliency(reg, layer).attribute(images)`` -> (GradCAM, integrated gradients)."""

    def __init__(self, reg: nn.Module, layer: nn.Module, ig_steps: int = 32):
        self.reg = reg
        self.layer = layer
        self.ig_steps = ig_steps

    def gradcam(self, images: torch.Tensor, relu: bool = True) -> np.ndarray:
        """GradCAM maps; ``relu=False`` keeps the negative evidence (for the sanity check, where a
        randomised network's maps are often all negative and would vanish under the ReLU)."""
        self.reg.eval()
        cam = LayerGradCam(_Column(self.reg), self.layer)
        maps = cam.attribute(images, target=0, relu_attributions=relu)
        up = LayerAttribution.interpolate(maps, images.shape[-2:], interpolate_mode="bilinear")
        return up[:, 0].detach().cpu().numpy()

    def integrated_gradients(self, images: torch.Tensor) -> np.ndarray:
        self.reg.eval()
        ig = IntegratedGradients(_Column(self.reg))
        baseline = torch.full_like(images, -1.0)  # a black tile
        attr = ig.attribute(images, baselines=baseline, target=0, n_steps=self.ig_steps)
        return attr[:, 0].detach().cpu().numpy()

    def attribute(self, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        return self.gradcam(images), self.integrated_gradients(images)


def randomized_copy(model: nn.Module, seed: int = 0) -> nn.Module:
    """A copy of ``model`` re-initialised from scratch (the end point of Adebayo et al.'s cascading
    randomisation): every layer's own ``reset_parameters`` and fresh batch-norm statistics."""
    clone = copy.deepcopy(model)
    torch.manual_seed(seed)
    for module in clone.modules():
        if hasattr(module, "reset_running_stats"):
            module.reset_running_stats()
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    return clone


def map_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over tiles of the Spearman rank correlation of the two maps' |values| (Adebayo et al.
    compare absolute maps); a constant map shares no structure with the other: 0."""
    values = []
    for x, y in zip(np.abs(a), np.abs(b)):
        values.append(
            spearmanr(x.ravel(), y.ravel())[0] if np.ptp(x) > 0 and np.ptp(y) > 0 else 0.0
        )
    return float(np.mean(values)) if values else float("nan")
