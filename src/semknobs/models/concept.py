"""The concept network: a small CNN that reads the four concepts off a tile, in normalised knob
units, as the attribute meter would (calibrated to the lot labels).

It is the AttGAN's differentiable judge of concept change (:mod:`semknobs.train.concept` trains
it on meter readings of real tiles, then of edits): unlike the critic's attribute head it has no
instance norm (which removes the per-image statistics where pore and particle densities live),
pools globally instead of reading fixed positions, and is invariant to the eight symmetries of
the square (averaged over them with ``symmetric=True``; trained with random ones).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ConceptConfig:
    channels: int = 1
    n_attrs: int = 4
    width: int = 8  # channels of the first block, doubled per block
    blocks: int = 4  # each halves the side


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.LeakyReLU(0.2),
        nn.Conv2d(c_out, c_out, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.LeakyReLU(0.2),
    )


SYMMETRIES = 8  # of the square: four quarter turns, each with and without a mirror


def dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th of the symmetries of the square (k in 0..SYMMETRIES-1) of (B, C, S, S)."""
    x = torch.rot90(x, k % 4, dims=(-2, -1))
    return x.flip(-1) if k >= 4 else x


class ConceptNet(nn.Module):
    def __init__(self, cfg: ConceptConfig = ConceptConfig()):
        super().__init__()
        self.cfg = cfg
        layers, c = [], cfg.channels
        for i in range(cfg.blocks):
            w = cfg.width * 2**i
            layers.append(_block(c, w))
            c = w
        self.trunk = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())  # (B, c)
        self.head = nn.Linear(c, cfg.n_attrs)

    def forward(self, x: torch.Tensor, symmetric: bool = False) -> torch.Tensor:
        """Tiles (B, 1, S, S) in [-1, 1] -> concepts (B, 4) in knob units."""
        if not symmetric:
            return self.head(self.trunk(x))
        views = torch.cat([dihedral(x, k) for k in range(SYMMETRIES)])
        return self.head(self.trunk(views)).view(SYMMETRIES, len(x), -1).mean(dim=0)
