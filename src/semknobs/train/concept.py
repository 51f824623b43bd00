"""Training the concept network (:mod:`semknobs.models.concept`): the AttGAN's judge of concept
change, learnt from the attribute meter, never from any ground truth.

Targets, in normalised knob units:

* the tile's own meter readings, *calibrated* to the lot labels: per attribute, a least-squares
  line from a training lot's mean reading to its label (``label ~ alpha * reading + beta``), so
  a tile's target is what its lot's label would be if the lot looked like this tile;
* the tile's lot label itself, an auxiliary target (weight ``aux_weight``).

Refreshes (MetricGAN-style): every ``refresh_every`` generator steps the AttGAN edits
``refresh_tiles`` training tiles along one knob each, the meter measures the edits, and their
calibrated readings join a fixed-size pool on which the network is fine-tuned with the real
tiles, so it also judges the off-manifold tiles the generator makes, as the meter would, and the
generator cannot satisfy it with texture the meter does not read. Readings the meter cannot give
(too few particles for a dispersity) are masked out of the loss.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from semknobs.attributes import ATTRIBUTES
from semknobs.meter import MeterParams, calibration, measure_tiles
from semknobs.models.concept import SYMMETRIES, ConceptConfig, ConceptNet, dihedral
from semknobs.pixels import to_model

K = len(ATTRIBUTES)


@dataclass(frozen=True)
class ConceptParams:
    model: ConceptConfig = field(default_factory=ConceptConfig)
    steps: int = 1200  # pre-training on the real tiles, before the generator trains
    batch_size: int = 64
    lr: float = 0.002
    aux_weight: float = 0.5  # weight of the lot label beside the tile's calibrated reading
    refresh_every: int = 500  # generator steps between refreshes on measured edits (0: never)
    refresh_tiles: int = 96  # edits measured per refresh
    refresh_steps: int = 200  # fine-tuning steps per refresh
    pool_size: int = 1024  # measured edits kept (the oldest are overwritten)


class ConceptTrainer:
    """The network, its optimizer and its pools, drawing all randomness from ``rng`` (the
    AttGAN trainer's, so that its checkpoints resume this too)."""

    def __init__(
        self,
        params: ConceptParams,
        device: torch.device,
        rng: torch.Generator,
        calib: tuple[np.ndarray, np.ndarray],
        meter: MeterParams,
        img_size: int,
    ):
        self.params = params
        self.device = device
        self.rng = rng
        self.alpha, self.beta = (torch.tensor(v, dtype=torch.float32) for v in calib)
        self.meter = meter
        self.net = ConceptNet(params.model).to(device)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=params.lr)
        self.net.eval().requires_grad_(False)  # a frozen loss between fits (and after resume)
        self.pool = EditPool(params.pool_size, img_size)

    @classmethod
    def calibrated(
        cls,
        params: ConceptParams,
        device: torch.device,
        rng: torch.Generator,
        img_size: int,
        *,
        images: torch.Tensor,
        readings: np.ndarray,
        labels: torch.Tensor,
        lots: np.ndarray,
        meter: MeterParams,
    ) -> ConceptTrainer:
        """A trainer calibrated on these real tiles (uint8), their meter readings (n, 4), lot
        labels (n, 4, knob units) and lot ids, with the tiles as its real set."""
        per_lot = {str(lot): labels[lots == lot][0].cpu().numpy() for lot in np.unique(lots)}
        trainer = cls(params, device, rng, calibration(readings, lots, per_lot), meter, img_size)
        trainer.set_real(images.cpu(), readings, labels.cpu())
        return trainer

    def calibrate(self, readings: torch.Tensor) -> torch.Tensor:
        return readings * self.alpha + self.beta

    def set_real(self, images: torch.Tensor, readings: np.ndarray, labels: torch.Tensor) -> None:
        """The real training tiles (uint8), their meter readings and lot labels (knob units)."""
        self.real_x = images
        self.real_y = self.calibrate(torch.tensor(readings, dtype=torch.float32))
        self.real_aux = labels.float().cpu()

    def fit(self, steps: int) -> float:
        """``steps`` Adam steps on real tiles (and the pool's measured edits, half of each
        batch, once it has any); returns the last loss."""
        p = self.params
        self.net.train()
        self.net.requires_grad_(True)
        loss = torch.tensor(0.0)
        for _ in range(steps):
            n_edit = p.batch_size // 2 if self.pool.count else 0
            idx = torch.randint(0, len(self.real_x), (p.batch_size - n_edit,), generator=self.rng)
            x, y = self.real_x[idx], self.real_y[idx]
            aux = self.real_aux[idx]
            if n_edit:
                j = torch.randint(0, self.pool.count, (n_edit,), generator=self.rng)
                x = torch.cat([x, self.pool.x[j]])
                y = torch.cat([y, self.pool.y[j]])
            k = int(torch.randint(0, SYMMETRIES, (1,), generator=self.rng))
            pred = self.net(dihedral(to_model(x, self.device), k))
            loss = masked_mse(pred, y.to(self.device))
            loss = loss + p.aux_weight * masked_mse(pred[: len(aux)], aux.to(self.device))
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
        self.net.eval()
        self.net.requires_grad_(False)  # frozen as the generator's loss between refreshes
        return float(loss.detach())

    @torch.no_grad()
    def refresh(self, edits_uint8: np.ndarray) -> None:
        """Measure edits with the meter, add them to the pool, fine-tune."""
        readings = measure_tiles(edits_uint8, self.meter, progress=False)
        values = readings[list(ATTRIBUTES)].to_numpy(float)
        self.pool.add(torch.tensor(edits_uint8), self.calibrate(torch.tensor(values)))
        with torch.enable_grad():
            self.fit(self.params.refresh_steps)

    def modules(self) -> dict[str, nn.Module]:
        return {"concept": self.net, "concept_pool": self.pool}


def masked_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the finite targets only."""
    ok = torch.isfinite(target)
    diff = torch.where(ok, pred - torch.nan_to_num(target), torch.zeros_like(pred))
    return diff.pow(2).sum() / ok.sum().clamp_min(1)


class EditPool(nn.Module):
    """A fixed-size ring of measured edits (uint8 tiles, calibrated readings); buffers, so a
    checkpoint holds it."""

    def __init__(self, size: int, img_size: int):
        super().__init__()
        self.register_buffer("x", torch.zeros(size, img_size, img_size, dtype=torch.uint8))
        self.register_buffer("y", torch.full((size, K), float("nan")))
        self.register_buffer("n", torch.zeros((), dtype=torch.long))  # edits ever added

    @property
    def count(self) -> int:
        return int(min(int(self.n), len(self.x)))

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        for i in range(len(x)):
            slot = int(self.n) % len(self.x)
            self.x[slot] = x[i]
            self.y[slot] = y[i].float()
            self.n += 1
