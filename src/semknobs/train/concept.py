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

Adversarial training (``adv_eps > 0``; off by default): every batch is fitted at the worst
perturbation within ``adv_eps`` per pixel that ``adv_steps`` projected gradient-sign steps find
(Madry et al., 2018), so that small texture cannot move the readings and the generator must make
the change itself. Measured before the runs (README, "A robust concept network"): at 0.03 the
network reads held-out tiles as well (facetness 0.90 against 0.92 by correlation with the
meter) and reads the editors' facetness edits at 0.23-0.37 of a true change where a standard one
reads 0.41-0.59, lowest for the edit the regressor reads backwards. In training (Rule U, train
seed 1) it turned a backward facetness knob around and broke the size knob for the regressor;
at half the radius (Rule V-a) it kept most of the first and half of the size read but leaked
the size edit into the measured porosity; attacking the facetness read only (``adv_attributes``,
Rule V-b) kept neither. Off until that is repaired.

The particle count (``count_slope`` given; off by default): a fifth read, ``log(1 + n)`` of the
meter's count of whole particles, learnt like the others on real tiles and measured edits. It
is not a knob: the generator is asked for the count change that real tiles show with the edited
labels, ``(b - a) . w``, where ``w`` (:func:`count_slope`) is the least-squares slope of
``log(1 + n)`` on the lot labels over the training tiles (README, "A particle-count read").
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import nn

from semknobs.attributes import ATTRIBUTES
from semknobs.meter import COUNT, MeterParams, calibration, measure_tiles
from semknobs.models.concept import SYMMETRIES, ConceptConfig, ConceptNet, dihedral
from semknobs.pixels import to_model

K = len(ATTRIBUTES)
MIN_COUNT_LOTS = K + 1  # the count slope fits four label slopes and an intercept


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
    adv_eps: float = 0.0  # > 0: adversarial training, L-inf radius in model range (0 = off)
    adv_steps: int = 3  # projected gradient steps of each batch's perturbation
    # the reads fitted at the perturbation; the others (and a particle count) on the clean batch.
    # All four (the default): the whole loss, a count included, is attacked and fitted there.
    adv_attributes: tuple[str, ...] = ATTRIBUTES

    def __post_init__(self) -> None:
        if not 0 <= self.adv_eps <= 1:
            raise ValueError(f"concept.adv_eps must be in [0, 1] (model range), got {self.adv_eps}")
        if self.adv_eps > 0 and self.adv_steps < 1:
            raise ValueError(
                f"concept.adv_steps must be >= 1 with adv_eps > 0, got {self.adv_steps}"
            )
        named = set(self.adv_attributes)
        if not named <= set(ATTRIBUTES) or not 0 < len(named) == len(self.adv_attributes):
            raise ValueError(
                f"concept.adv_attributes must name each of {list(ATTRIBUTES)} at most once and "
                f"at least one, got {list(self.adv_attributes)}"
            )

    def adv_columns(self, n_reads: int) -> torch.Tensor | None:
        """(n_reads,) bool: the reads attacked and fitted at the perturbation; None: all."""
        if set(self.adv_attributes) == set(ATTRIBUTES):
            return None
        return torch.tensor(
            [a in self.adv_attributes for a in ATTRIBUTES] + [False] * (n_reads - K)
        )


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
        count_slope: np.ndarray | None = None,
    ):
        self.params = params
        self.device = device
        self.rng = rng
        self.alpha, self.beta = (torch.tensor(v, dtype=torch.float32) for v in calib)
        self.meter = meter
        self.count_slope = None if count_slope is None else torch.tensor(count_slope).float()
        config = net_config(params, count=count_slope is not None)
        self.net = ConceptNet(config).to(device)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=params.lr)
        self.net.eval().requires_grad_(False)  # a frozen loss between fits (and after resume)
        self.pool = EditPool(params.pool_size, img_size, config.n_attrs)

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
        counts: np.ndarray | None = None,
    ) -> ConceptTrainer:
        """A trainer calibrated on these real tiles (uint8), their meter readings (n, 4), lot
        labels (n, 4, knob units) and lot ids, with the tiles as its real set; with the meter's
        particle ``counts`` (n,) it also reads the count."""
        per_lot = {str(lot): labels[lots == lot][0].cpu().numpy() for lot in np.unique(lots)}
        calib = calibration(readings, lots, per_lot)
        slope = None if counts is None else count_slope(labels.cpu().numpy(), counts)
        trainer = cls(params, device, rng, calib, meter, img_size, slope)
        trainer.set_real(images.cpu(), readings, labels.cpu(), counts)
        return trainer

    def calibrate(self, readings: torch.Tensor) -> torch.Tensor:
        return readings * self.alpha + self.beta

    def targets(self, readings: torch.Tensor, counts: np.ndarray | None) -> torch.Tensor:
        """C's targets: calibrated readings (n, 4), and ``log(1 + count)`` when it reads it."""
        y = self.calibrate(readings)
        if self.count_slope is None:
            return y
        if counts is None:
            raise ValueError("this concept network reads the particle count: give the counts")
        return torch.cat([y, torch.tensor(np.log1p(counts), dtype=y.dtype)[:, None]], dim=1)

    def set_real(
        self,
        images: torch.Tensor,
        readings: np.ndarray,
        labels: torch.Tensor,
        counts: np.ndarray | None = None,
    ) -> None:
        """The real training tiles (uint8), their meter readings, lot labels (knob units) and,
        when C reads it, particle counts."""
        self.real_x = images
        self.real_y = self.targets(torch.tensor(readings, dtype=torch.float32), counts)
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
            x = dihedral(to_model(x, self.device), k)
            y, aux = y.to(self.device), aux.to(self.device)
            pred = self.adversarial(x, y, aux) if p.adv_eps > 0 else self.net(x)
            loss = self.loss(pred, y, aux)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
        self.net.eval()
        self.net.requires_grad_(False)  # frozen as the generator's loss between refreshes
        return float(loss.detach())

    def loss(
        self,
        pred: torch.Tensor,
        y: torch.Tensor,
        aux: torch.Tensor,
        columns: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The targets' error, plus the lot labels' on the first ``len(aux)`` (real) rows; over
        the reads ``columns`` (bool mask) only, when given."""
        label_pred = pred[: len(aux), :K]
        if columns is not None:
            pred, y = pred[:, columns], y[:, columns]
            label_pred, aux = label_pred[:, columns[:K]], aux[:, columns[:K]]
        return masked_mse(pred, y) + self.params.aux_weight * masked_mse(label_pred, aux)

    def adversarial(self, x: torch.Tensor, y: torch.Tensor, aux: torch.Tensor) -> torch.Tensor:
        """The network's reads of ``x`` to fit: the ``adv_attributes`` reads at their worst
        perturbation, the others at the clean batch."""
        columns = self.params.adv_columns(y.shape[1])
        pred = self.net(self.perturbed(x, y, aux, columns))
        return pred if columns is None else torch.where(columns.to(x.device), pred, self.net(x))

    def perturbed(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        aux: torch.Tensor,
        columns: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``x`` (model range) at the worst perturbation of at most ``adv_eps`` per pixel for the
        reads ``columns`` (None: all) that ``adv_steps`` signed gradient steps of 0.8 ``adv_eps``
        find from a random start."""
        eps = self.params.adv_eps
        delta = (torch.rand(x.shape, generator=self.rng).to(x.device) * 2 - 1) * eps
        for _ in range(self.params.adv_steps):
            delta.requires_grad_(True)
            loss = self.loss(self.net(x + delta), y, aux, columns)
            (grad,) = torch.autograd.grad(loss, delta)
            delta = (delta.detach() + 0.8 * eps * grad.sign()).clamp(-eps, eps)
        return (x + delta).clamp(-1, 1)

    @torch.no_grad()
    def refresh(self, edits_uint8: np.ndarray) -> None:
        """Measure edits with the meter, add them to the pool, fine-tune."""
        readings = measure_tiles(edits_uint8, self.meter, progress=False)
        values = readings[list(ATTRIBUTES)].to_numpy(float)
        counts = readings[COUNT].to_numpy(float)
        self.pool.add(torch.tensor(edits_uint8), self.targets(torch.tensor(values), counts))
        with torch.enable_grad():
            self.fit(self.params.refresh_steps)

    def modules(self) -> dict[str, nn.Module]:
        return {"concept": self.net, "concept_pool": self.pool}


def net_config(params: ConceptParams, count: bool) -> ConceptConfig:
    """The concept network's shape: the four knobs, and the particle count when it reads it."""
    return replace(params.model, n_attrs=K + int(count))


def count_slope(labels: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """(4,) least-squares slope of ``log(1 + n)`` on the labels (knob units), with an intercept,
    over tiles: how the particle count of real tiles changes per knob unit across the lots."""
    labels, counts = np.asarray(labels, dtype=float), np.asarray(counts, dtype=float)
    if counts.shape != (len(labels),) or not (np.isfinite(counts) & (counts >= 0)).all():
        raise ValueError(f"particle counts must be {len(labels)} finite numbers >= 0")
    design = np.column_stack([labels, np.ones(len(labels))])
    if np.linalg.matrix_rank(design) < design.shape[1]:
        raise ValueError("the particle-count slope needs lots whose labels vary on every knob")
    coef, *_ = np.linalg.lstsq(design, np.log1p(counts), rcond=None)
    return coef[:K]


def masked_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the finite targets only."""
    ok = torch.isfinite(target)
    diff = torch.where(ok, pred - torch.nan_to_num(target), torch.zeros_like(pred))
    return diff.pow(2).sum() / ok.sum().clamp_min(1)


class EditPool(nn.Module):
    """A fixed-size ring of measured edits (uint8 tiles, C's targets: calibrated readings and,
    with a count read, ``log(1 + count)``); buffers, so a checkpoint holds it."""

    def __init__(self, size: int, img_size: int, reads: int = K):
        super().__init__()
        self.register_buffer("x", torch.zeros(size, img_size, img_size, dtype=torch.uint8))
        self.register_buffer("y", torch.full((size, reads), float("nan")))
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
