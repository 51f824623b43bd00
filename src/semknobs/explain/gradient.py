"""The knob gradient: the exact local attribution of a tile in knob units.

``KnobGradient(gen, reg).attribute(images, attrs)`` returns ``d R(G(I; A)) / d A`` at each tile's
own attributes ``A``, in MPa per unit of normalised knob, by one backward pass through the
AttGAN and the regressor. It answers "which way, and how strongly, does each knob move this
tile's predicted stress right here", which is what forward sensitivity estimates with finite
sweeps and what Eq. 2's counterfactual folds into one edit.

Not in the paper, which explains with sweeps and Eq. 2 only; it is the derivative those two
approximate, so it is the natural thing to score against the oracle's ``dR/dt``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


@dataclass
class KnobAttribution:
    attrs: np.ndarray  # (n, 4) the knob settings A where the gradient is taken
    gradient: np.ndarray  # (n, 4) d R(G(I; A)) / d A, MPa per knob unit
    baseline: np.ndarray  # (n,) R(G(I; A)), MPa


class KnobGradient:
    """Captum-shaped: ``gen(x, attrs)`` edits images in [-1, 1]; ``reg(x)`` gives MPa (n,).

    Both models run in eval mode (batch norm with running statistics), so the gradient of the
    batch sum is every row's own gradient.
    """

    def __init__(self, gen: nn.Module, reg: nn.Module):
        self.gen = gen
        self.reg = reg

    def attribute(
        self, images: torch.Tensor, attrs: torch.Tensor, batch_size: int = 64
    ) -> KnobAttribution:
        self.gen.eval()
        self.reg.eval()
        grads, base = [], []
        for i in range(0, len(images), batch_size):
            var = attrs[i : i + batch_size].detach().clone().requires_grad_(True)
            pred = self.reg(self.gen(images[i : i + batch_size], var)).float()
            (grad,) = torch.autograd.grad(pred.sum(), var)
            grads.append(grad.detach())
            base.append(pred.detach())
        return KnobAttribution(
            attrs=attrs.detach().cpu().numpy(),
            gradient=torch.cat(grads).cpu().numpy(),
            baseline=torch.cat(base).cpu().numpy(),
        )
