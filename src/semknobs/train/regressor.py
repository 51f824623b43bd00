"""Training the peak-stress regressor on SEM tiles (every tile carries its lot's stress).

Loss: MSE on the standardised target ((stress - mean) / std, statistics of the training tiles,
stored in the model). AdamW; the learning rate warms up linearly over the first epoch and then
follows a cosine to zero at ``epochs`` -- a pure function of the step, so no scheduler state has
to be checkpointed.

Augmentations (label-preserving for top-down SEM micrographs of a powder):

* ``flips`` and ``rot90``: the eight symmetries of the square. A micrograph has no preferred
  orientation of its particles, so these never change the material; they do change the side the
  SE detector shades from and the scan-line direction, which are instrument artefacts the model
  should not rely on.
* ``intensity``: a mild *affine* brightness/contrast jitter (contrast x (1 +- j) about the tile
  mean, brightness +- j of the [-1, 1] range, then clipped). The tile stage already maps each scan
  to 8 bits by its own robust percentiles, so what remains is small drift of detector gain and
  offset between scans; an affine change keeps pores darker than the faces they sit on (the
  porosity cue) and keeps the ordering of grey levels. Off by default and left to the tuner.
  Not used: gamma or histogram changes (they alter pore-to-face contrast non-uniformly), blur
  (erases the 2-px pores), additive noise (looks like pores), scaling or crops that resample
  (particle size is a target-relevant concept measured in pixels).

Resume: a checkpoint (weights incl. batch-norm statistics, AdamW moments, RNG state, epoch) is
written after every epoch under a temporary name and renamed; rerunning with the same params and
data continues from it. All randomness of training -- batch order, augmentations and the dropout
masks (the global torch RNG is re-seeded from the run's generator at the start of every epoch) --
comes from one seeded ``torch.Generator`` saved in the checkpoint, so on CPU a resumed run ends
with exactly the weights of an uninterrupted one.

Several processes (torchrun, :mod:`semknobs.train.distributed`): each rank draws the global
batch order and augmentations, trains on its share of every batch, and DDP averages gradients;
dropout masks are seeded per rank.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from semknobs.models.regressor import PeakStressRegressor, RegressorConfig
from semknobs.pixels import to_model
from semknobs.train.base import LogFn, Trainer, fingerprint, fit
from semknobs.train.device import autocast
from semknobs.train.distributed import World


@dataclass(frozen=True)
class AugmentParams:
    flips: bool = True
    rot90: bool = True
    intensity: float = 0.0  # max relative brightness/contrast jitter; 0 = off

    def __post_init__(self) -> None:
        if not 0.0 <= self.intensity < 0.5:
            raise ValueError(f"intensity: expected a value in [0, 0.5), got {self.intensity}")


@dataclass(frozen=True)
class RegressorTrainParams:
    model: RegressorConfig = field(default_factory=RegressorConfig)
    augment: AugmentParams = field(default_factory=AugmentParams)
    epochs: int = 16
    batch_size: int = 64
    lr: float = 4e-3
    weight_decay: float = 1e-4
    seed: int = 0
    device: str = "auto"  # CUDA when present (bf16 autocast), else CPU
    threads: int = 1  # torch threads on the CPU (0: torch's default); see README "Profiles"
    eval_batch_size: int = 256

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs: expected at least 1, got {self.epochs}")
        if self.batch_size < 2:
            raise ValueError(f"batch_size: expected at least 2 (batch norm), got {self.batch_size}")
        if not self.lr > 0 or self.weight_decay < 0:
            raise ValueError("lr must be positive and weight_decay non-negative")
        if self.threads < 0:
            raise ValueError(f"threads: expected 0 (default) or more, got {self.threads}")

    def fingerprint(self, data_key: str = "") -> str:
        """Identifies the run a checkpoint belongs to (params that change the result + data)."""
        return fingerprint(self, data_key, ignore=("eval_batch_size", "device"))


def set_threads(threads: int) -> None:
    """Intra-op threads on the CPU for this process (0: leave torch's default).

    One per process is the CPU profile's default: on a shared 2-core machine, two OpenMP threads
    competing with another job were measured ~30x slower than one (spinning barriers), and
    tuning gets its parallelism from worker processes instead. Stage scripts and tuning workers
    set it for their whole process; library calls use :func:`torch_threads`.
    """
    if threads > 0 and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """:func:`set_threads` for the block only; the caller's setting is restored afterwards."""
    before = torch.get_num_threads()
    set_threads(threads)
    try:
        yield
    finally:
        set_threads(before)


def lr_at(step: int, *, steps_per_epoch: int, epochs: int, lr: float) -> float:
    """Linear warm-up over the first epoch, then cosine to zero at the last step."""
    warm = steps_per_epoch
    total = steps_per_epoch * epochs
    if step < warm:
        return lr * (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    return 0.5 * lr * (1 + math.cos(math.pi * min(progress, 1.0)))


def draw_augment(n: int, rng: torch.Generator) -> torch.Tensor:
    """The random numbers of :func:`augment` for ``n`` tiles: (n, 4) = flip, quarter turns,
    contrast and brightness jitter in [-1, 1]. Slicing its rows gives a share of a batch."""
    flip = (torch.rand(n, generator=rng) < 0.5).float()
    turns = torch.randint(0, 4, (n,), generator=rng).float()
    jitter = torch.rand(n, 2, generator=rng) * 2 - 1
    return torch.cat([flip[:, None], turns[:, None], jitter], dim=1)


def augment(
    x: torch.Tensor,
    params: AugmentParams,
    rng: torch.Generator | None = None,
    *,
    draw: torch.Tensor | None = None,
) -> torch.Tensor:
    """Random symmetries (and intensity jitter) of a batch (n, 1, S, S) in [-1, 1].

    The random numbers (``draw``, else drawn from ``rng``) are drawn whatever the flags say, so
    the batch order of a run does not depend on which augmentations are on.
    """
    if draw is None:
        draw = draw_augment(len(x), rng)
    draw = draw.to(x.device)
    flip, turns, jitter = draw[:, 0] > 0.5, draw[:, 1].long(), draw[:, 2:]
    if params.flips:
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    if params.rot90:
        out = x.clone()
        for k in (1, 2, 3):
            sel = turns == k
            if sel.any():
                out[sel] = torch.rot90(x[sel], k, dims=(-2, -1))
        x = out
    if params.intensity > 0:
        contrast = 1 + params.intensity * jitter[:, 0, None, None, None]
        brightness = params.intensity * jitter[:, 1, None, None, None]
        mean = x.mean(dim=(-2, -1), keepdim=True)
        x = ((x - mean) * contrast + mean + brightness).clamp(-1, 1)
    return x


class RegressorTrainer(Trainer):
    """Model, optimizer, RNG and position (epoch, step) of one training run."""

    name = "train_regressor"
    unit = "epoch"

    def __init__(
        self,
        params: RegressorTrainParams,
        device: torch.device,
        target_mean: float,
        target_std: float,
        world: World | None = None,
    ):
        super().__init__(world)
        self.params = params
        self.device = device
        torch.manual_seed(params.seed)  # weight init
        self.model = PeakStressRegressor(params.model, target_mean, target_std)
        # channels-last: ~1.3x faster training on the CPU (measured), no effect on the results
        self.model.to(device, memory_format=torch.channels_last)
        self.opt = torch.optim.AdamW(
            self.model.parameters(), lr=params.lr, weight_decay=params.weight_decay
        )
        self.rng = torch.Generator().manual_seed(params.seed)
        self.epoch = 0
        self.step = 0
        self._model: torch.nn.Module = self.model  # what training calls: in DDP when distributed

    def distribute(self) -> None:
        """Wrap the model in DDP (after resuming: DDP copies rank 0's weights to every rank)."""
        self._model = self.world.wrap(self.model, self.device)

    # -- state -------------------------------------------------------------------------------
    def parts(self) -> dict[str, dict[str, Any]]:
        return {"modules": {"model": self.model}, "optimizers": {"model": self.opt}}

    @property
    def position(self) -> int:
        return self.epoch

    def position_meta(self) -> dict[str, int]:
        return {"epoch": self.epoch, "step": self.step}

    def restore_position(self, meta: Mapping[str, Any]) -> None:
        self.epoch, self.step = int(meta["epoch"]), int(meta["step"])

    # -- training ----------------------------------------------------------------------------
    def steps_per_epoch(self, n: int) -> int:
        return max(1, n // self.params.batch_size)  # the incomplete last batch is dropped

    def train_epoch(self, images: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
        """One pass over uint8 ``images`` (n, S, S) with standardised ``target`` (n,)."""
        p = self.params
        n = len(images)
        per_epoch = self.steps_per_epoch(n)
        # dropout draws from the global RNG: seed it from ours so resumed runs repeat it (and
        # differently on every rank)
        seed = int(torch.randint(0, 2**62, (1,), generator=self.rng))
        torch.manual_seed(seed + self.world.rank)
        order = torch.randperm(n, generator=self.rng)
        bs = min(p.batch_size, n)
        rows = self.world.shard(bs, "train_regressor.train.batch_size")
        self.model.train()
        losses = []
        for b in range(per_epoch):
            idx = order[b * bs : (b + 1) * bs][rows].to(images.device)
            draw = draw_augment(bs, self.rng)[rows]
            x = augment(to_model(images[idx], images.device), p.augment, draw=draw)
            x = x.contiguous(memory_format=torch.channels_last)
            lr = lr_at(self.step, steps_per_epoch=per_epoch, epochs=p.epochs, lr=p.lr)
            for group in self.opt.param_groups:
                group["lr"] = lr
            with autocast(self.device):
                pred = self._model(x)
            loss = F.mse_loss(pred.float(), target[idx])
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            self.step += 1
            losses.append(float(loss.detach()))
        self.epoch += 1
        loss = self.world.mean(float(np.mean(losses)), self.device)
        return {"train/loss": loss, "train/lr": lr}


def target_stats(stress: np.ndarray) -> tuple[float, float]:
    """Mean and std (MPa) of the training tiles' targets; std floored for a constant target."""
    stress = np.asarray(stress, dtype=np.float64)
    return float(stress.mean()), float(max(stress.std(), 1e-6))


def make_trainer(
    params: RegressorTrainParams, stress: np.ndarray, world: World | None = None
) -> RegressorTrainer:
    world = world or World()
    mean, std = target_stats(stress)
    return RegressorTrainer(params, world.device(params.device), mean, std, world)


def train_regressor(
    *,
    params: RegressorTrainParams,
    images: np.ndarray,
    stress: np.ndarray,
    checkpoint_dir: Path | None = None,
    data_key: str = "",
    log: LogFn | None = None,
    stop_after: int | None = None,
    progress: bool = True,
    world: World | None = None,
) -> RegressorTrainer:
    """Train (or resume) on uint8 ``images`` (n, S, S) with per-tile ``stress`` (n,) in MPa.

    A checkpoint goes to ``checkpoint_dir`` after every epoch; a matching one (same params and
    ``data_key``) is resumed from. ``stop_after`` ends the run after that many epochs (tests use
    it to simulate an interruption). ``log(metrics, epoch)`` receives the per-epoch metrics.
    Under DDP (``world`` of several ranks) only rank 0 logs, shows progress and checkpoints.
    """
    world = world or World()
    if not world.is_main:
        log, progress = None, False
    with torch_threads(params.threads):
        trainer = make_trainer(params, stress, world)
        return _train(trainer, images, stress, checkpoint_dir, data_key, log, stop_after, progress)


def _train(
    trainer: RegressorTrainer,
    images: np.ndarray,
    stress: np.ndarray,
    checkpoint_dir: Path | None,
    data_key: str,
    log: LogFn | None,
    stop_after: int | None,
    progress: bool,
) -> RegressorTrainer:
    params = trainer.params
    x = torch.from_numpy(np.ascontiguousarray(images)).to(trainer.device)
    y = trainer.model.standardise(torch.as_tensor(stress, dtype=torch.float32)).to(trainer.device)

    def advance() -> dict[str, float]:
        started = time.perf_counter()
        metrics = trainer.train_epoch(x, y)
        metrics["train/tiles_per_s"] = len(x) / max(time.perf_counter() - started, 1e-9)
        return metrics

    fit(
        trainer,
        advance,
        total=params.epochs,
        end=params.epochs if stop_after is None else min(stop_after, params.epochs),
        fingerprint=params.fingerprint(data_key),
        checkpoint_dir=checkpoint_dir,
        log=log,
        progress=progress,
        postfix=lambda m: {"loss": f"{m['train/loss']:.3f}"},
    )
    return trainer


@dataclass(frozen=True)
class BaselineParams:
    """The classical baseline: a random forest on the attribute meter's per-tile readings."""

    n_estimators: int = 300
    min_samples_leaf: int = 5
    max_features: float = 1.0
    seed: int = 0


@dataclass(frozen=True)
class TrainRegressorStageParams:
    """The ``train_regressor`` params section."""

    train: RegressorTrainParams = field(default_factory=RegressorTrainParams)
    baseline: BaselineParams = field(default_factory=BaselineParams)
