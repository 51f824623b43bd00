"""Training the AttGAN: a realism critic, a generator with reconstruction, and a concept loss.

Losses (He et al. 2019, with two critics to choose from):

* critic ``wgan-gp``: D(fake) - D(real) + lambda_gp * GP + lambda_att_d * BCE(att(real), a);
  critic ``r1``: softplus(D(fake)) + softplus(-D(real)) + lambda_att_d * BCE(att(real), a), with
  a lazy R1 penalty (gamma / 2 * |grad D(real)|^2 every ``r1_every`` steps, scaled by it) -- one
  critic update per generator step buys about twice the generator steps for the same CPU time;
  with ``model.dis_projection`` (r1 only) the critic scores D(real, a) and D(fake, b): a tile
  against its attributes (:mod:`semknobs.models.attgan`; off by default);
* generator: adversarial + lambda_att_g * BCE(att(fake), b) + lambda_rec * |G(x, a) - x|_1
  + lambda_concept * |C(G(x, b)) - C(G(x, a)) - (b - a)|^2
  + lambda_count * |C_n(G(x, b)) - C_n(G(x, a)) - w . (b - a)|^2
  + lambda_regressor * |(F(G(x, a)) - F(x)) / s|^2
  + lambda_texture * |(T(G(x, b)) - T(G(x, a))) / s_T - W (b - a)|^2,

with ``a`` the tile's (lot) attributes, ``b`` the target attributes of the edit and ``C`` the
frozen concept network (:mod:`semknobs.train.concept`, refreshed on meter-measured edits during
training). The concept loss asks for what an explanation needs: the change the edit makes, as
the meter would read it, equals the requested change on every knob (so the others stay put),
measured against the reconstruction so that C's per-tile bias cancels. The loss moves both the
edit and the reconstruction (``concept_rec_grad``); reading the reconstruction as a fixed
reference instead halves C's backward pass but, measured (README, "AttGAN step time"), lets the
reconstruction drift from what the regressor reads in the tile. With the concept loss on, the
critic's attribute head can be switched off (``lambda_att_d = lambda_att_g = 0``): realism only.
``C_n`` is C's optional fifth read, the log particle count, and ``w`` how it changes per knob
unit across the real training tiles (:func:`semknobs.train.concept.count_slope`; off by default).

``F`` is the frozen regressor's pooled features (what its head reads) and ``s`` their spread
over the real training tiles: the reconstruction must look to the regressor like the tile it
reconstructs (the reconstruction shift). Only the reconstruction has a regressor target: what
the regressor says of an edit is the explanation, so no loss asks anything of it. A departure
from the paper, and off by default: measured on the default study it removes the shift (9.7 ->
3.9 % of the stress range at 0.5) but the knob gradient follows the regressor's real response
less well (oracle cosine 0.71 -> 0.46): the decoder learns to carry what the regressor reads
from the encoder, whatever the knobs say (README, "Regressor-feature reconstruction").

``T`` is a handful of texture statistics (grey-level mean and spread, band-pass energy at a few
scales; :mod:`semknobs.train.texture`), ``s_T`` their spread over the real training tiles and
``W`` how they change per knob unit across the real training lots (a least-squares fit of lot
means on lot labels): the edit must move what the meter does not read the way real lots differ.
A departure from the paper.

Target attributes (a documented choice for *continuous* control): ``b`` starts as the labels of
other tiles in the batch (a shuffle, so realistic attribute combinations), then each attribute is
independently replaced, with probability ``resample_prob``, by a uniform draw over [0, 1]. The
uniform draws cover the whole range, also between and beyond the 24-ish training lots, and break
the correlations between attributes that the few lots happen to have. A share ``one_knob_share``
of the rows instead turns one knob: ``b = a + delta e_k`` (``|delta| <= one_knob_delta``), the
edit that explanations (sweeps, the knob gradient) ask for.

Weight averaging (``ema_decay > 0``): an exponential moving average of the generator's weights
and batch-norm statistics (timm's ``ModelEmaV2`` scheme, warmed up as ``min(decay, (1 + t) /
(10 + t))``) is kept beside the trained one and is the generator the model folder holds: the
average of the last few hundred steps rather than wherever the adversarial game stopped
(Yazici et al. 2019, "The unusual effectiveness of averaging in GAN training"). The concept
network's refreshes edit with the trained generator, whose edits the concept loss shapes.

Learning-rate decay (``lr_decay_share > 0``): both learning rates stay at ``lr``, then fall
linearly over the last ``lr_decay_share`` of the steps toward 0 at ``steps`` (the last update
runs at ``lr / (share * steps)``; StarGAN's and pix2pix's schedule):
the adversarial game's step size shrinks as the run ends, so the generator settles rather than
stopping wherever its last steps left it. It is a function of the step, so a resumed run sets
the same rates.

Resume: a checkpoint (weights, optimizer moments, RNG state, step) every ``checkpoint_every``
steps; rerunning with the same params continues from it. All randomness (batches, targets, GP
interpolation) comes from one seeded ``torch.Generator`` saved in the checkpoint, so on CPU a
resumed run ends with exactly the weights of an uninterrupted one.

Several processes (torchrun, :mod:`semknobs.train.distributed`): each rank draws the global batch
and its random numbers, keeps its share of the rows, and DDP averages the gradients of the critic
and of the generator's edit-and-reconstruct pass.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from semknobs.meter import MeterParams
from semknobs.models.attgan import (
    Discriminator,
    Generator,
    gradient_penalty,
    r1_penalty,
)
from semknobs.models.concept import SYMMETRIES, dihedral
from semknobs.models.regressor import PeakStressRegressor, pooled_features
from semknobs.pixels import to_model, to_uint8
from semknobs.train.attgan_params import AttGANTrainParams
from semknobs.train.base import LogFn, Trainer, fit
from semknobs.train.concept import ConceptTrainer
from semknobs.train.device import autocast
from semknobs.train.distributed import World
from semknobs.train.texture import TextureTarget


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
        return self.gen.decode(feats, b, a), self.gen.decode(feats, a, a)


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
        self.concept: ConceptTrainer | None = None
        self.concept_ready = True
        self.regressor: PeakStressRegressor | None = None
        self.feature_scale: torch.Tensor | None = None
        self.texture: TextureTarget | None = None
        self.gen_ema: Generator | None = None
        if params.ema_decay > 0:
            self.gen_ema = copy.deepcopy(self.gen).eval().requires_grad_(False)

    @property
    def generator(self) -> Generator:
        """The generator to use and keep: the weight average when on, else the trained one."""
        return self.gen if self.gen_ema is None else self.gen_ema

    @torch.no_grad()
    def update_ema(self) -> None:
        if self.gen_ema is None:
            return
        decay = min(self.params.ema_decay, (1 + self.step) / (10 + self.step))
        live = self.gen.state_dict()
        for name, value in self.gen_ema.state_dict().items():
            if value.dtype.is_floating_point:
                value.mul_(decay).add_(live[name].detach(), alpha=1 - decay)
            else:  # batch counters
                value.copy_(live[name])

    def distribute(self) -> None:
        """Wrap the trained passes in DDP (after resuming: DDP copies rank 0's weights)."""
        self._dis = self.world.wrap(self.dis, self.device)
        self._edit = self.world.wrap(EditAndReconstruct(self.gen), self.device)

    def attach_concept(
        self,
        images: torch.Tensor,
        readings: np.ndarray,
        labels: torch.Tensor,
        lots: np.ndarray,
        meter: MeterParams,
        counts: np.ndarray | None = None,
    ) -> None:
        """The concept network for the concept loss, calibrated on these training tiles (uint8),
        their meter readings (n, 4), lot labels (n, 4, knob units) and lot ids; with
        ``lambda_count > 0`` it also reads the meter's particle ``counts`` (n,)."""
        if self.params.lambda_count > 0 and counts is None:
            raise ValueError("lambda_count > 0 needs the tiles' particle counts (the meter's)")
        self.concept = ConceptTrainer.calibrated(
            self.params.concept, self.device, self.rng, self.params.model.img_size,
            images=images, readings=readings, labels=labels, lots=lots, meter=meter,
            counts=counts if self.params.lambda_count > 0 else None,
        )  # fmt: skip
        self.concept_ready = False

    def attach_regressor(self, reg: PeakStressRegressor, images: torch.Tensor) -> None:
        """The frozen regressor of the reconstruction's feature loss; ``images`` (uint8, the
        real training tiles) set each feature's scale (its spread over them)."""
        reg = reg.to(self.device).eval().requires_grad_(False)
        spread = pooled_features(reg, images).to(self.device).std(dim=0)
        self.regressor = reg
        self.feature_scale = spread.clamp_min(0.1 * float(spread.mean()))  # no dead features

    def attach_texture(self, images: torch.Tensor, labels: torch.Tensor, lots: np.ndarray) -> None:
        """The texture targets, fit on these real training tiles (uint8), their lot labels (knob
        units) and lot ids."""
        p = self.params
        target = TextureTarget.fit(
            images, labels, lots, p.texture_levels, regions=p.texture_regions
        )
        self.texture = target.to(self.device)

    # -- state -------------------------------------------------------------------------------
    def parts(self) -> dict[str, dict[str, Any]]:
        modules = {"gen": self.gen, "dis": self.dis}
        if self.gen_ema is not None:
            modules["gen_ema"] = self.gen_ema
        optimizers = {"gen": self.opt_g, "dis": self.opt_d}
        if self.concept is not None:
            modules |= self.concept.modules()
            optimizers["concept"] = self.concept.opt
        return {"modules": modules, "optimizers": optimizers}

    @property
    def position(self) -> int:
        return self.step

    def position_meta(self) -> dict[str, int]:
        return {"step": self.step}

    def restore_position(self, meta: Mapping[str, Any]) -> None:
        self.step = int(meta["step"])
        self.concept_ready = True  # a checkpoint holds the trained concept network

    # -- one update --------------------------------------------------------------------------
    def targets(self, a: torch.Tensor) -> torch.Tensor:
        p = self.params
        b = a[torch.randperm(len(a), generator=self.rng)]
        swap = torch.rand(b.shape, generator=self.rng) < p.resample_prob
        uniform = torch.rand(b.shape, generator=self.rng)
        b = torch.where(swap, uniform, b.cpu())
        if p.one_knob_share > 0:  # some rows turn one knob of their own attributes
            one = torch.rand(len(a), generator=self.rng) < p.one_knob_share
            knob = torch.randint(0, a.shape[1], (len(a),), generator=self.rng)
            delta = (torch.rand(len(a), generator=self.rng) * 2 - 1) * p.one_knob_delta
            turned = a.cpu().clone()
            turned[torch.arange(len(a)), knob] += delta
            b = torch.where(one[:, None], turned.clamp(0, 1), b)
        return b.to(a.device)

    def _critic_loss(
        self, x: torch.Tensor, fake: torch.Tensor, a: torch.Tensor, b: torch.Tensor, alpha
    ):
        """The critic's loss on one real batch (labels ``a``) and its edits (targets ``b``), one
        pass for both (instance norm is per sample); returns (loss, logged terms)."""
        p = self.params
        with autocast(self.device):
            score, att = self._dis(torch.cat([x, fake.float()]), torch.cat([a, b]))
        score_real, score_fake = score.float().chunk(2)
        att_d = F.binary_cross_entropy_with_logits(att[: len(x)].float(), a)
        if p.critic == "wgan-gp":
            wasserstein = score_real.mean() - score_fake.mean()
            gp = gradient_penalty(self._dis, x, fake.float(), alpha=alpha)
            loss = -wasserstein + p.lambda_gp * gp + p.lambda_att_d * att_d
            return loss, {"train/wasserstein": wasserstein, "train/gp": gp, "train/att_d": att_d}
        loss = F.softplus(score_fake).mean() + F.softplus(-score_real).mean()
        terms = {"train/d_real": score_real.mean(), "train/d_fake": score_fake.mean()}
        if self.step % p.r1_every == 0:  # lazy R1, scaled by its interval
            r1 = r1_penalty(self._dis, x, a)
            loss = loss + 0.5 * p.r1_gamma * p.r1_every * r1
            terms["train/r1"] = r1
        return loss + p.lambda_att_d * att_d, terms | {"train/att_d": att_d}

    def concept_terms(
        self, fake: torch.Tensor, rec: torch.Tensor, wanted: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """``concept``: |C(fake) - C(rec) - wanted|^2, mean over rows and knobs, each knob's
        column weighted by ``concept_knob_weight`` and, where the edit leaves the knob alone,
        by ``concept_off_weight`` times ``concept_off_knob_weight``; with a count read,
        ``count``: |C_n(fake) - C_n(rec) - wanted . w|^2, mean over rows. Without
        ``concept_rec_grad`` the reconstruction's reading is a fixed reference (no gradient; C
        is frozen in eval mode, so reading the two apart gives the same values): the loss moves
        the edit only."""
        if self.params.concept_rec_grad:
            both = self.concept.net(torch.cat([fake, rec]))
            read_fake, read_rec = both[: len(fake)], both[len(fake) :]
        else:
            read_fake = self.concept.net(fake)
            with torch.no_grad():
                read_rec = self.concept.net(rec)
        change = read_fake - read_rec
        miss = (change[:, : wanted.shape[1]] - wanted).pow(2)
        p = self.params
        if p.concept_off_weight != 1.0 or any(w != 1.0 for w in p.concept_off_knob_weight):
            off = miss.new_tensor(p.concept_off_knob_weight) * p.concept_off_weight
            miss = miss * torch.where(wanted == 0, off, 1.0)
        if any(w != 1.0 for w in p.concept_knob_weight):
            miss = miss * miss.new_tensor(p.concept_knob_weight)
        terms = {"concept": miss.mean()}
        if self.concept.count_slope is not None:
            count_wanted = wanted @ self.concept.count_slope.to(wanted)
            terms["count"] = (change[:, wanted.shape[1]] - count_wanted).pow(2).mean()
        return terms

    def learning_rate(self) -> float:
        """Both optimizers' rate at this step: ``lr``, then falling linearly over the last
        ``lr_decay_share`` of the steps toward 0 at ``steps``."""
        p = self.params
        start = p.steps * (1 - p.lr_decay_share)
        if p.lr_decay_share == 0 or self.step < start:
            return p.lr
        return p.lr * (p.steps - self.step) / (p.steps - start)

    def train_step(self, x_all: torch.Tensor, a_all: torch.Tensor) -> dict[str, float]:
        """One generator update after ``n_critic`` critic updates on the same real batch.

        ``x_all``, ``a_all``: the global batch; this rank trains on its rows of it.
        """
        p = self.params
        if p.lr_decay_share > 0:
            rate = self.learning_rate()
            for group in (*self.opt_g.param_groups, *self.opt_d.param_groups):
                group["lr"] = rate
        rows = self.world.shard(len(x_all))
        x, a = x_all[rows], a_all[rows]
        self.gen.train()
        self.dis.train()
        self.dis.requires_grad_(True)
        logged: dict[str, torch.Tensor] = {}
        for _ in range(p.n_critic):
            b = self.targets(a_all)[rows]
            with torch.no_grad(), autocast(self.device):
                fake = self.gen(x, b, a)
            alpha = None
            if p.critic == "wgan-gp":
                alpha = torch.rand(len(x_all), 1, 1, 1, generator=self.rng)[rows].to(x.device)
            loss_d, logged = self._critic_loss(x, fake, a, b, alpha)
            self.opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            self.opt_d.step()

        b = self.targets(a_all)[rows]
        self.dis.requires_grad_(False)  # the generator step needs no critic weight gradients
        with autocast(self.device):
            fake, rec = self._edit(x, a, b)
            score_fake, att_fake = self.dis(fake, b)
            score_fake = score_fake.float()
            adv_g = -score_fake.mean() if p.critic == "wgan-gp" else F.softplus(-score_fake).mean()
            att_g = F.binary_cross_entropy_with_logits(att_fake.float(), b)
            rec_l1 = F.l1_loss(rec.float(), x)
        loss_g = adv_g + p.lambda_att_g * att_g + p.lambda_rec * rec_l1
        terms = {"train/adv_g": adv_g, "train/att_g": att_g, "train/rec_l1": rec_l1}
        if self.concept is not None and p.lambda_concept > 0:
            k = int(torch.randint(0, SYMMETRIES, (1,), generator=self.rng))  # C is symmetric
            read = self.concept_terms(dihedral(fake.float(), k), dihedral(rec.float(), k), b - a)
            loss_g = loss_g + p.lambda_concept * read["concept"]
            terms["train/concept"] = read["concept"]
            if "count" in read:
                loss_g = loss_g + p.lambda_count * read["count"]
                terms["train/count"] = read["count"]
        if self.texture is not None and p.lambda_texture > 0:
            texture = self.texture.loss(fake.float(), rec.float(), b - a)
            loss_g = loss_g + p.lambda_texture * texture
            terms["train/texture"] = texture
        if self.regressor is not None and p.lambda_regressor > 0:
            with torch.no_grad():
                seen = self.regressor.features(x)
            rebuilt = self.regressor.features(rec.float())
            features = ((rebuilt - seen) / self.feature_scale).pow(2).mean()
            loss_g = loss_g + p.lambda_regressor * features
            terms["train/regressor_features"] = features
            with torch.no_grad():  # the reconstruction shift as the regressor reads it, MPa
                terms["train/recon_shift_mpa"] = (
                    self.regressor.mpa_from_features(rebuilt)
                    - self.regressor.mpa_from_features(seen)
                ).mean()
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        self.opt_g.step()
        self.dis.requires_grad_(True)
        self.step += 1
        self.update_ema()
        out = {"train/loss_d": loss_d, "train/loss_g": loss_g, **logged, **terms}
        metrics = {k: float(v.detach()) for k, v in out.items()}
        if p.lr_decay_share > 0:
            metrics["train/lr"] = self.opt_g.param_groups[0]["lr"]
        return metrics

    def refresh_concept(self, images: torch.Tensor, attrs: torch.Tensor) -> None:
        """Edit ``refresh_tiles`` training tiles along one knob each; the meter measures them
        and the concept network learns from them (see :mod:`semknobs.train.concept`)."""
        cp = self.params.concept
        idx = torch.randint(0, len(images), (cp.refresh_tiles,), generator=self.rng)
        a = attrs[idx].cpu()
        source = a.to(self.device)
        knob = torch.randint(0, a.shape[1], (len(a),), generator=self.rng)
        b = a.clone()
        b[torch.arange(len(a)), knob] = torch.rand(len(a), generator=self.rng)
        self.gen.eval()
        with torch.no_grad():
            x = to_model(images[idx], self.device)
            edits = to_uint8(self.gen(x, b.to(self.device), source))
        self.gen.train()
        self.concept.refresh(edits)
        # each rank edited with its own batch-norm statistics: rank 0's network is the judge
        for module in self.concept.modules().values():
            self.world.sync_from_main(module, self.device)


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
    readings: np.ndarray | None = None,
    lots: np.ndarray | None = None,
    meter: MeterParams | None = None,
    regressor: PeakStressRegressor | None = None,
    counts: np.ndarray | None = None,
) -> AttGANTrainer:
    """Train (or resume) on uint8 ``images`` (n, s, s) with ``attrs`` (n, 4) in [0, 1].

    With the concept loss (``lambda_concept > 0``): ``readings`` (n, 4), the attribute meter's
    readings of the tiles, ``lots`` (n,) their lot ids and ``meter`` the meter's settings; with
    ``lambda_count > 0`` also ``counts`` (n,), the meter's particle counts of the tiles. With
    the regressor-feature loss (``lambda_regressor > 0``): ``regressor``, the trained regressor.

    ``stop_after`` ends the run early at that step (tests use it to simulate an interruption).
    Under DDP (``world`` of several ranks) only rank 0 logs, shows progress and checkpoints.
    """
    world = world or World()
    trainer = AttGANTrainer(params, world.device(params.device), world)
    device = trainer.device
    images = images.to(device)
    attrs = attrs.to(device)
    n = len(images)

    if params.lambda_concept > 0:
        if readings is None or lots is None or meter is None:
            raise ValueError("lambda_concept > 0 needs the tiles' meter readings, lots and meter")
        trainer.attach_concept(
            images.cpu(), readings, attrs.cpu(), np.asarray(lots), meter, counts=counts
        )
    if params.lambda_regressor > 0:
        if regressor is None:
            raise ValueError("lambda_regressor > 0 needs the trained regressor (its features)")
        trainer.attach_regressor(regressor, images.cpu())
    if params.lambda_texture > 0:
        if lots is None:
            raise ValueError("lambda_texture > 0 needs the tiles' lot ids")
        trainer.attach_texture(images.cpu(), attrs.cpu(), np.asarray(lots))
    refresh = params.concept.refresh_every if trainer.concept is not None else 0

    def advance() -> dict[str, float]:
        if not trainer.concept_ready:  # pre-train the concept network on the real tiles
            trainer.concept.fit(params.concept.steps)
            trainer.concept_ready = True
        idx = torch.randint(0, n, (params.batch_size,), generator=trainer.rng).to(device)
        metrics = trainer.train_step(to_model(images[idx], device), attrs[idx])
        if refresh and trainer.step % refresh == 0 and trainer.step < params.steps:
            trainer.refresh_concept(images, attrs)
        return metrics

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
