"""Training the AttGAN: WGAN-GP critic with an attribute head, generator with reconstruction.

Losses (He et al. 2019, WGAN-GP variant):

* critic:    D(fake) - D(real) + lambda_gp * GP + lambda_att_d * BCE(att(real), a)
* generator: -D(fake) + lambda_att_g * BCE(att(fake), b) + lambda_rec * |G(x, a) - x|_1

with ``a`` the tile's (lot) attributes and ``b`` the target attributes of the edit.

Target attributes (a documented choice for *continuous* control): ``b`` starts as the labels of
other tiles in the batch (a shuffle, so realistic attribute combinations), then each attribute is
independently replaced, with probability ``resample_prob``, by a uniform draw over [0, 1]. The
uniform draws cover the whole range, also between and beyond the 24-ish training lots, and break
the correlations between attributes that the few lots happen to have.

Resume: a checkpoint (weights, optimizer moments, RNG state, step) every ``checkpoint_every``
steps; rerunning with the same params continues from it. All randomness (batches, targets, GP
interpolation) comes from one seeded ``torch.Generator`` saved in the checkpoint, so on CPU a
resumed run ends with exactly the weights of an uninterrupted one.

Several processes (torchrun, :mod:`semknobs.train.distributed`): each rank draws the global batch
and its random numbers, keeps its share of the rows, and DDP averages the gradients of the critic
and of the generator's edit-and-reconstruct pass.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from semknobs.config import to_mapping
from semknobs.models.attgan import AttGANConfig, Discriminator, Generator, gradient_penalty
from semknobs.train.checkpoint import load_checkpoint, read_meta, save_checkpoint
from semknobs.train.device import autocast
from semknobs.train.distributed import World

LogFn = Callable[[dict[str, float], int], None]


@dataclass(frozen=True)
class AttGANTrainParams:
    model: AttGANConfig = field(default_factory=AttGANConfig)
    steps: int = 2000  # generator updates
    batch_size: int = 32
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    n_critic: int = 2  # critic updates per generator update
    lambda_rec: float = 100.0
    lambda_att_g: float = 10.0
    lambda_att_d: float = 1.0
    lambda_gp: float = 10.0
    resample_prob: float = 0.5
    seed: int = 0
    device: str = "auto"
    checkpoint_every: int = 200
    log_every: int = 10

    def fingerprint(self, data_key: str = "") -> str:
        """Identifies the run a checkpoint belongs to (params that change the result + data)."""
        keep = {
            k: v for k, v in to_mapping(self).items() if k not in ("checkpoint_every", "log_every")
        }
        blob = json.dumps(keep, sort_keys=True) + data_key
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


class EditAndReconstruct(torch.nn.Module):
    """The generator's training pass as one module call, so that DDP can see it.

    (B, 1, S, S) tiles, attributes ``a`` and targets ``b`` (B, A) -> (edit to b, reconstruction).
    """

    def __init__(self, gen: Generator):
        super().__init__()
        self.gen = gen

    def forward(
        self, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.gen.encode(x)
        return self.gen.decode(feats, b), self.gen.decode(feats, a)


@dataclass
class AttGANTrainer:
    """Holds the models, optimizers and RNG of one training run (of this rank, under DDP)."""

    params: AttGANTrainParams
    device: torch.device
    world: World = field(default_factory=World)
    gen: Generator = field(init=False)
    dis: Discriminator = field(init=False)

    def __post_init__(self) -> None:
        torch.manual_seed(self.params.seed)  # weight init
        self.gen = Generator(self.params.model).to(self.device)
        self.dis = Discriminator(self.params.model).to(self.device)
        betas = (self.params.beta1, self.params.beta2)
        self.opt_g = torch.optim.Adam(self.gen.parameters(), lr=self.params.lr, betas=betas)
        self.opt_d = torch.optim.Adam(self.dis.parameters(), lr=self.params.lr, betas=betas)
        self.rng = torch.Generator().manual_seed(self.params.seed)
        self.step = 0
        # training seconds over all runs that led here; None after resuming a checkpoint that
        # did not record them (then the total is unknown, not the last run's share)
        self.train_seconds: float | None = 0.0
        self.replica_gap = 0.0  # under DDP: max |weight - rank 0's| at the end (0.0: in sync)
        self.world.shard(self.params.batch_size, "train_attgan.train.batch_size")  # divisible?
        self._dis: torch.nn.Module = self.dis
        self._edit: torch.nn.Module = EditAndReconstruct(self.gen)

    def distribute(self) -> None:
        """Wrap the trained passes in DDP (after resuming: DDP copies rank 0's weights)."""
        self._dis = self.world.wrap(self.dis, self.device)
        self._edit = self.world.wrap(EditAndReconstruct(self.gen), self.device)

    # -- state -------------------------------------------------------------------------------
    def _parts(self) -> dict[str, Any]:
        return {
            "modules": {"gen": self.gen, "dis": self.dis},
            "optimizers": {"gen": self.opt_g, "dis": self.opt_d},
            "rng": self.rng,
        }

    def save(self, path: Path, fingerprint: str) -> None:
        meta = {"step": self.step, "fingerprint": fingerprint, "train_seconds": self.train_seconds}
        save_checkpoint(path, **self._parts(), meta=meta)

    def try_resume(self, path: Path, fingerprint: str) -> bool:
        meta = read_meta(path)
        if meta is None or meta.get("fingerprint") != fingerprint:
            return False
        meta = load_checkpoint(path, **self._parts())
        self.step = int(meta["step"])
        self.train_seconds = meta.get("train_seconds")
        return True

    def add_time(self, seconds: float) -> None:
        if self.train_seconds is not None:
            self.train_seconds += seconds

    # -- one update --------------------------------------------------------------------------
    def targets(self, a: torch.Tensor) -> torch.Tensor:
        b = a[torch.randperm(len(a), generator=self.rng)]
        swap = torch.rand(b.shape, generator=self.rng) < self.params.resample_prob
        uniform = torch.rand(b.shape, generator=self.rng)
        return torch.where(swap, uniform, b.cpu()).to(a.device)

    def train_step(self, x_all: torch.Tensor, a_all: torch.Tensor) -> dict[str, float]:
        """One generator update after ``n_critic`` critic updates on the same real batch.

        ``x_all``, ``a_all``: the global batch; this rank trains on its rows of it.
        """
        p = self.params
        rows = self.world.shard(len(x_all))
        x, a = x_all[rows], a_all[rows]
        self.gen.train()
        self.dis.train()
        for _ in range(p.n_critic):
            b = self.targets(a_all)[rows]
            with torch.no_grad(), autocast(self.device):
                fake = self.gen(x, b)
            with autocast(self.device):
                score_real, att_real = self._dis(x)
                score_fake, _ = self._dis(fake.float())
                wasserstein = score_real.float().mean() - score_fake.float().mean()
                att_d = F.binary_cross_entropy_with_logits(att_real.float(), a)
            alpha = torch.rand(len(x_all), 1, 1, 1, generator=self.rng)[rows].to(x.device)
            gp = gradient_penalty(self._dis, x, fake.float(), alpha=alpha)
            loss_d = -wasserstein + p.lambda_gp * gp + p.lambda_att_d * att_d
            self.opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            self.opt_d.step()

        b = self.targets(a_all)[rows]
        with autocast(self.device):
            fake, rec = self._edit(x, a, b)
            # the plain critic: its gradients here are discarded, so DDP need not reduce them
            score_fake, att_fake = self.dis(fake)
            adv_g = -score_fake.float().mean()
            att_g = F.binary_cross_entropy_with_logits(att_fake.float(), b)
            rec_l1 = F.l1_loss(rec.float(), x)
        loss_g = adv_g + p.lambda_att_g * att_g + p.lambda_rec * rec_l1
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        self.opt_g.step()
        self.step += 1
        return {
            "train/loss_d": float(loss_d.detach()),
            "train/wasserstein": float(wasserstein.detach()),
            "train/gp": float(gp.detach()),
            "train/att_d": float(att_d.detach()),
            "train/loss_g": float(loss_g.detach()),
            "train/adv_g": float(adv_g.detach()),
            "train/att_g": float(att_g.detach()),
            "train/rec_l1": float(rec_l1.detach()),
        }


def train_attgan(
    *,
    params: AttGANTrainParams,
    images: torch.Tensor,
    attrs: torch.Tensor,
    checkpoint_dir: Path | None = None,
    data_key: str = "",
    log: LogFn | None = None,
    on_checkpoint: Callable[[AttGANTrainer], None] | None = None,
    stop_after: int | None = None,
    progress: bool = True,
    world: World | None = None,
) -> AttGANTrainer:
    """Train (or resume) on uint8 ``images`` (n, s, s) with ``attrs`` (n, 4) in [0, 1].

    ``stop_after`` ends the run early at that step (tests use it to simulate an interruption).
    Under DDP (``world`` of several ranks) only rank 0 logs, shows progress and checkpoints.
    """
    world = world or World()
    trainer = AttGANTrainer(params, world.device(params.device), world)
    fingerprint = params.fingerprint(data_key)
    resumed = checkpoint_dir is not None and trainer.try_resume(checkpoint_dir, fingerprint)
    if resumed and world.is_main:
        print(f"train_attgan: resuming from {checkpoint_dir} at step {trainer.step}")
    trainer.distribute()
    if not world.is_main:
        log, on_checkpoint, checkpoint_dir, progress = None, None, None, False
    device = trainer.device
    images = images.to(device)
    attrs = attrs.to(device)
    n = len(images)
    end = params.steps if stop_after is None else min(stop_after, params.steps)
    window: dict[str, list[float]] = {}
    bar = tqdm(
        total=params.steps,
        initial=trainer.step,
        desc="train_attgan",
        unit="step",
        disable=not progress,
    )
    started = mark = time.perf_counter()
    first_step = trainer.step
    while trainer.step < end:
        idx = torch.randint(0, n, (params.batch_size,), generator=trainer.rng).to(device)
        x = images[idx].float().div(127.5).sub(1).unsqueeze(1)
        losses = trainer.train_step(x, attrs[idx])
        bar.update(1)
        for key, value in losses.items():
            window.setdefault(key, []).append(value)
        if log is not None and (trainer.step % params.log_every == 0 or trainer.step == end):
            metrics = {k: sum(v) / len(v) for k, v in window.items()}
            elapsed = time.perf_counter() - started
            metrics["train/steps_per_s"] = (trainer.step - first_step) / max(elapsed, 1e-9)
            log(metrics, trainer.step)
            window.clear()
        if checkpoint_dir is not None and (
            trainer.step % params.checkpoint_every == 0 or trainer.step == end
        ):
            trainer.add_time(time.perf_counter() - mark)
            mark = time.perf_counter()
            trainer.save(checkpoint_dir, fingerprint)
            if on_checkpoint is not None:
                on_checkpoint(trainer)
    trainer.add_time(time.perf_counter() - mark)
    bar.close()
    trainer.replica_gap = max(
        world.replica_gap(trainer.gen, device), world.replica_gap(trainer.dis, device)
    )
    return trainer


@contextlib.contextmanager
def evaluation(*modules: torch.nn.Module):
    """Eval mode and no grad for the block; training mode restored after."""
    modes = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for m, mode in zip(modules, modes):
            m.train(mode)


@dataclass(frozen=True)
class TrainAttGANStageParams:
    """The ``train_attgan`` params section."""

    train: AttGANTrainParams = field(default_factory=AttGANTrainParams)
    sample_every: int = 500  # log a sample grid every N steps
    sample_tiles: int = 6
