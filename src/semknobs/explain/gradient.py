"""The knob gradient: the exact local attribution of a tile in knob units.

``KnobGradient(gen, reg).attribute(images, attrs)`` returns ``d R(G(I; A)) / d A`` at each tile's
own attributes ``A``, in MPa per unit of normalised knob, by one backward pass through the
AttGAN and the regressor. It answers "which way, and how strongly, does each knob move this
tile's predicted stress right here", which is what forward sensitivity estimates with finite
sweeps and what Eq. 2's counterfactual folds into one edit.

The generator edits each tile from its own attributes (``gen(x, A', A)``); one conditioned on
the change (``condition: change``, STGAN) sees ``A' - A``, so the gradient is taken at the zero
change and ``A`` only sets where the knobs' [0, 1] bounds clamp the smoothing draws below.

Not in the paper, which explains with sweeps and Eq. 2 only; it is the derivative those two
approximate, so it is the natural thing to score against the oracle's ``dR/dt``.

``smoothing > 0`` averages the gradient over ``samples`` knob settings ``A + N(0, smoothing^2)``
(clamped to [0, 1]; SmoothGrad, Smilkov et al. 2017, in knob space instead of pixel space): the
derivative of the edits' response smoothed over a neighbourhood of knob settings, which a finite
sweep also measures, instead of the generator's local wiggles at exactly ``A``. The draws come
from a generator seeded with ``seed``, so the result is deterministic and each tile's draws do
not depend on the batch. ``baseline`` stays ``R(G(I; A))`` at ``A`` itself. Chosen for the
default on the synthetic study's training lots (``benchmarks/knob_gradient_variants.py``).

``symmetric`` also turns the tile: draw ``j`` takes the gradient on the ``j mod 8``-th symmetry
of the square of the tile (rotations by 90 degrees, mirror images), so with 16 draws every view
is seen twice, at the same cost (without smoothing: the mean over the 8 views, 8 passes). The
AttGAN is not exactly equivariant, so one view's gradient carries that view's own generator
wiggles; micrographs of powders and sintered parts have no preferred direction, so each view is
the same material and the regressor (trained with flips and rotations) reads it the same way.
Leave it off for images with a direction (rolling texture, detector shadowing, a tilt axis).

``attribute(..., keep=...)`` reads only the edit's part inside a per-pixel weight: with
:func:`~semknobs.train.texture.outside_background` (the tile's own crystal mask), the stage's
``knob_gradient_crystal`` and :func:`crystal_read`, a truth-free check of whether the regressor
reads a knob in the crystals or in the edit's background. Not in the paper.

:func:`lot_mean` gives every tile its lot's knob gradient: the mean over the lot's explained
tiles, which is the gradient of the lot's prediction (the mean of its tiles' predictions) with
respect to the lot's knobs. It answers the question asked of a lot ("which knob changes raise
this lot's predicted stress") and averages away each tile's own editing noise, at the price of
any difference between tiles of one lot. Not in the paper; chosen on the training lots by a rule
written before the comparison (README, "The explanations").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from semknobs.attributes import ATTRIBUTES
from semknobs.explain.counterfactual import check_deadline
from semknobs.explain.edit_texture import CRYSTAL, crystal_share_key
from semknobs.models.concept import SYMMETRIES, dihedral


@dataclass
class KnobAttribution:
    attrs: np.ndarray  # (n, 4) the knob settings A where the gradient is taken
    gradient: np.ndarray  # (n, 4) d R(G(I; A)) / d A, MPa per knob unit
    baseline: np.ndarray  # (n,) R(G(I; A)), MPa


MAX_SAMPLES = 1024
Kept = tuple[torch.Tensor, torch.Tensor]  # (keep, G(I; A)) of one batch in one view


@dataclass(frozen=True)
class KnobGradientParams:
    smoothing: float = 0.3  # sd of the knob-space noise (0: the plain gradient at A)
    samples: int = 16  # draws averaged when smoothing > 0
    seed: int = 0
    symmetric: bool = False  # draw j reads the tile's (j mod 8)-th dihedral view

    def __post_init__(self) -> None:
        if not 0 <= self.smoothing <= 1:
            raise ValueError(f"knob_gradient.smoothing must be in [0, 1], got {self.smoothing}")
        if not 1 <= self.samples <= MAX_SAMPLES:  # each draw is a backward pass per tile
            raise ValueError(
                f"knob_gradient.samples must be in [1, {MAX_SAMPLES}], got {self.samples}"
            )


class KnobGradient:
    """Captum-shaped: ``gen(x, attrs, source)`` edits images in [-1, 1] from their own
    attributes ``source`` to ``attrs``; ``reg(x)`` gives MPa (n,).

    Both models run in eval mode (batch norm with running statistics), so the gradient of the
    batch sum is every row's own gradient.
    """

    def __init__(self, gen: nn.Module, reg: nn.Module, params: KnobGradientParams | None = None):
        self.gen = gen
        self.reg = reg
        self.params = params or KnobGradientParams()

    def _gradient(
        self, x: torch.Tensor, at: torch.Tensor, source: torch.Tensor, kept: Kept | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        var = at.detach().clone().requires_grad_(True)
        edit = self.gen(x, var, source)
        if kept is not None:  # outside ``keep`` the regressor sees the unedited reconstruction
            keep, still = kept
            edit = keep * edit + (1 - keep) * still
        pred = self.reg(edit).float()
        (grad,) = torch.autograd.grad(pred.sum(), var)
        return grad.detach(), pred.detach()

    def _kept(self, x: torch.Tensor, a: torch.Tensor, keep: torch.Tensor) -> Kept:
        with torch.no_grad():
            return keep, self.gen(x, a, a)

    def _draw(
        self,
        x: torch.Tensor,
        a: torch.Tensor,
        eps: torch.Tensor,
        j: int,
        views: dict[int, Kept] | None,
        deadline: float | None,
    ) -> torch.Tensor:
        """``views``: the batch's ``keep`` and unedited reconstruction per view, filled as the
        views come (each is the same for every draw of that view)."""
        check_deadline(deadline, "the knob gradient")
        v = j % SYMMETRIES if self.params.symmetric else 0
        if self.params.symmetric:
            x = dihedral(x, v)
        if views is not None and v not in views:
            views[v] = self._kept(x, a, dihedral(views[0][0], v))
        return self._gradient(x, (a + eps).clamp(0, 1), a, None if views is None else views[v])[0]

    def attribute(
        self,
        images: torch.Tensor,
        attrs: torch.Tensor,
        batch_size: int = 64,
        deadline: float | None = None,
        keep: torch.Tensor | None = None,
    ) -> KnobAttribution:
        """``deadline`` (a ``time.monotonic()`` instant) is checked before every pass.

        ``keep`` (n, 1, S, S) in [0, 1]: where the edit counts. The regressor reads
        ``keep * G(I; A') + (1 - keep) * G(I; A)``, so the gradient is the read of the edit's part
        inside ``keep`` only (:func:`~semknobs.train.texture.outside_background`: without its
        background part); ``baseline`` is unchanged, ``R(G(I; A))``."""
        p = self.params
        if keep is not None and keep.shape != (len(images), 1, *images.shape[2:]):
            raise ValueError(
                f"knob gradient: keep has shape {tuple(keep.shape)}, the images "
                f"{tuple(images.shape)}; it must be (n, 1, H, W) like them"
            )
        self.gen.eval()
        self.reg.eval()
        # one (samples, n, 4) draw for all tiles, so a tile's draws do not depend on batching
        rng = torch.Generator().manual_seed(p.seed)
        draws = p.samples if p.smoothing > 0 else SYMMETRIES * p.symmetric
        noise = torch.randn((draws, *attrs.shape), generator=rng).to(attrs.device) * p.smoothing
        grads, base = [], []
        for i in range(0, len(images), batch_size):
            x, a = images[i : i + batch_size], attrs[i : i + batch_size]
            check_deadline(deadline, "the knob gradient")
            views = None if keep is None else {0: self._kept(x, a, keep[i : i + batch_size])}
            grad, pred = self._gradient(x, a, a, None if views is None else views[0])
            if draws:
                grad = torch.stack(
                    [
                        self._draw(x, a, eps[i : i + batch_size], j, views, deadline)
                        for j, eps in enumerate(noise)
                    ]
                ).mean(dim=0)
            grads.append(grad)
            base.append(pred)
        return KnobAttribution(
            attrs=attrs.detach().cpu().numpy(),
            gradient=torch.cat(grads).cpu().numpy(),
            baseline=torch.cat(base).cpu().numpy(),
        )


def crystal_read(whole: np.ndarray, crystal: np.ndarray) -> dict[str, float]:
    """Per attribute, how much of the knob gradient ``whole`` (n, 4) the same gradient without
    the edit's background part (``crystal``, ``keep`` = :func:`outside_background`) keeps:
    ``knob_gradient_crystal/whole/sign_<a>``, the share of tiles where the two agree in sign;
    ``.../share_<a>``, ``sum(crystal * sign(whole)) / sum(|whole|)`` (1: the read lives in the
    crystals and their outlines; 0: in the background; below 0: the crystals read the other
    way). Truth-free: on the synthetic study the committed size edit's read sat in a darkened
    background that real size changes do not have (``benchmarks/size_background_rules.md``)."""
    if whole.shape != crystal.shape or whole.ndim != 2 or whole.shape[1] != len(ATTRIBUTES):
        raise ValueError(f"crystal_read: shapes {whole.shape} and {crystal.shape}, need (n, 4)")
    out = {}
    for k, a in enumerate(ATTRIBUTES):
        sign = np.sign(whole[:, k])
        scale = float(np.abs(whole[:, k]).sum())
        out[f"{CRYSTAL}/sign_{a}"] = float(np.mean(np.sign(crystal[:, k]) == sign))
        out[crystal_share_key(a)] = (
            float((crystal[:, k] * sign).sum()) / scale if scale > 0 else float("nan")
        )
    return out


def lot_mean(gradient: np.ndarray, lots: np.ndarray | pd.Series) -> np.ndarray:
    """(n, 4) per-tile gradients and the tiles' lot ids (n,) -> (n, 4), each row its lot's mean."""
    lots = np.asarray(lots)
    if lots.shape != (len(gradient),):
        raise ValueError(f"lot_mean: {len(gradient)} gradients but lot ids of shape {lots.shape}")
    return pd.DataFrame(gradient).groupby(lots).transform("mean").to_numpy()
