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

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from semknobs.models.attgan import AttGANConfig, Discriminator, Generator, gradient_penalty
from semknobs.pixels import to_model
from semknobs.train.base import LogFn, Trainer, fingerprint, fit
from semknobs.train.device import autocast
from semknobs.train.distributed import World


@dataclass(frozen=True)
class AttGANTrainParams:
    model: AttGANConfig = field(default_factory=AttGANConfig)
    steps: int = 3000  # generator updates
    batch_size: int = 32
    lr: float = 4e-4
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
        return fingerprint(self, data_key, ignore=("checkpoint_every", "log_every"))


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


class AttGANTrainer(Trainer):
    """Holds the models, optimizers and RNG of one training run (of this rank, under DDP)."""

    name = "train_attgan"
    unit = "step"

    def __init__(self, params: AttGANTrainParams, device: torch.device, world: World | None = None):
        super().__init__(world)
        self.params = params
        self.device = device
        torch.manual_seed(params.seed)  # weight init
        self.gen = Generator(params.model).to(device)
        self.dis = Discriminator(params.model).to(device)
        betas = (params.beta1, params.beta2)
        self.opt_g = torch.optim.Adam(self.gen.parameters(), lr=params.lr, betas=betas)
        self.opt_d = torch.optim.Adam(self.dis.parameters(), lr=params.lr, betas=betas)
        self.rng = torch.Generator().manual_seed(params.seed)
        self.step = 0
        self.world.shard(params.batch_size, "train_attgan.train.batch_size")  # divisible?
        self._dis: torch.nn.Module = self.dis
        self._edit: torch.nn.Module = EditAndReconstruct(self.gen)

    def distribute(self) -> None:
        """Wrap the trained passes in DDP (after resuming: DDP copies rank 0's weights)."""
        self._dis = self.world.wrap(self.dis, self.device)
        self._edit = self.world.wrap(EditAndReconstruct(self.gen), self.device)

    # -- state -------------------------------------------------------------------------------
    def parts(self) -> dict[str, dict[str, Any]]:
        return {
            "modules": {"gen": self.gen, "dis": self.dis},
            "optimizers": {"gen": self.opt_g, "dis": self.opt_d},
        }

    @property
    def position(self) -> int:
        return self.step

    def position_meta(self) -> dict[str, int]:
        return {"step": self.step}

    def restore_position(self, meta: Mapping[str, Any]) -> None:
        self.step = int(meta["step"])

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
    device = trainer.device
    images = images.to(device)
    attrs = attrs.to(device)
    n = len(images)

    def advance() -> dict[str, float]:
        idx = torch.randint(0, n, (params.batch_size,), generator=trainer.rng).to(device)
        return trainer.train_step(to_model(images[idx], device), attrs[idx])

    fit(
        trainer,
        advance,
        total=params.steps,
        end=params.steps if stop_after is None else min(stop_after, params.steps),
        fingerprint=params.fingerprint(data_key),
        checkpoint_dir=checkpoint_dir,
        checkpoint_every=params.checkpoint_every,
        log=log,
        log_every=params.log_every,
        rate="train/steps_per_s",
        on_checkpoint=on_checkpoint,
        progress=progress,
    )
    return trainer


@dataclass(frozen=True)
class TrainAttGANStageParams:
    """The ``train_attgan`` params section."""

    train: AttGANTrainParams = field(default_factory=AttGANTrainParams)
    sample_every: int = 500  # log a sample grid every N steps
    sample_tiles: int = 6
