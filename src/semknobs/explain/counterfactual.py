"""Counterfactual knob search: the paper's Eq. 2, batched.

For a tile ``I`` with attributes ``A`` find ``A'`` minimising

    lambda * ((R(G(I; A')) - p') / scale)^2  +  || I - G(I; A') ||_p

by a gradient method on ``A'`` (projected onto the observed attribute range widened by
``margin``), for a whole batch of tiles at once, from several starts, keeping each tile's best.

Departures from the paper, all deliberate:

* The prediction term is divided by ``scale`` (the requested change in MPa, or the stress range
  for an absolute target) so that ``lambda`` is unit-free and one default works for any law.
* Targets are relative to the *reconstruction* baseline ``R(G(I; A))``, not ``R(I)``: the GAN's
  reconstruction error must not be mistaken for a knob's effect (the paper's stated limitation).
* The image distance is the mean absolute (p=1) or root-mean-square (p=2) pixel difference in
  [-1, 1] units, so it does not grow with tile size; by default it is measured from the
  reconstruction ``G(I; A)`` (``distance_to="reconstruction"``), so it counts only what the
  edit changes and not the GAN's reconstruction error (``"input"`` gives the paper's ``I``).
* Restarts perturb the starting attributes uniformly by up to ``restart_spread`` (the first start
  is ``A`` itself); each start keeps the best point it visited and the start with the lowest
  objective wins per tile.
* The optimiser: the paper uses Adam (``optimizer="adam"``: ``steps`` Adam steps of ``lr``).
  The default is a projected quasi-Newton method (``"bfgs"``): ``A'`` has only four numbers, so a
  4x4 BFGS inverse-Hessian per row is free, while every objective evaluation costs a pass through
  the decoder and the regressor. Each iteration evaluates one trial point per row (the same cost
  as an Adam step): accepted on sufficient decrease (Armijo), else that row halves its step
  length and tries again next iteration; the first step moves the largest knob by
  ``first_step``. On the default study's training-lot tiles one start of 60 evaluations comes
  within 1.5 % of the mean objective of 3 starts x 100 Adam steps (the old default) in 4.8x less
  time; 3 x 30 Adam steps are 24 % worse (``benchmarks/eq2_optimisers.py``; README: Benchmarks).
* Speed, not maths: the encoder runs once per tile (``A'`` enters only the decoder) and restarts
  are extra batch rows. (Stopping stalled starts early was tried and dropped: on the default
  study it cost 17-37 % of the objective for 1.4-2.5x less work; Adam on this objective has
  long plateaus before it improves again.)
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class CounterfactualParams:
    target: Literal["higher", "lower", "value"] = "higher"
    delta: float = 0.1  # a share of the stress range (delta_unit "range"), or MPa ("mpa")
    delta_unit: Literal["mpa", "range"] = "range"
    value: float | None = None  # MPa, for target "value"
    lam: float = 1.0
    p: Literal[1, 2] = 1
    optimizer: Literal["bfgs", "adam"] = "bfgs"
    steps: int = 60  # objective evaluations (Adam: steps) per start, after the first
    lr: float = 0.05  # Adam's learning rate
    first_step: float = 0.1  # bfgs: the first step's largest knob move (knob units)
    restarts: int = 1
    restart_spread: float = 0.25
    margin: float = 0.1  # A' may leave the observed [0, 1] range by this much
    distance_to: Literal["reconstruction", "input"] = "reconstruction"
    tolerance: float = 0.25  # success: |R(G(I;A')) - p'| <= tolerance * |p' - baseline|
    seed: int = 0


@dataclass
class CounterfactualResult:
    attrs: np.ndarray  # (n, 4) starting attributes A
    new_attrs: np.ndarray  # (n, 4) A'
    baseline: np.ndarray  # (n,) R(G(I; A)) in MPa
    target: np.ndarray  # (n,) p'
    achieved: np.ndarray  # (n,) R(G(I; A')) in MPa
    distance: np.ndarray  # (n,) || anchor - G(I; A') ||_p (anchor: G(I; A) or I)
    objective: np.ndarray  # (n,) the Eq. 2 objective at A' (the winning start's best)
    success: np.ndarray  # (n,) bool
    edited: np.ndarray  # (n, 1, S, S) G(I; A') in [-1, 1]
    recon: np.ndarray  # (n, 1, S, S) G(I; A) in [-1, 1]

    @property
    def delta_attrs(self) -> np.ndarray:
        return self.new_attrs - self.attrs


class KnobCounterfactual:
    """Captum-shaped explainer: ``KnobCounterfactual(gen, reg).attribute(images, attrs)``.

    ``gen(x, attrs, source)`` edits images in [-1, 1] from their own attributes ``source`` to
    ``attrs`` (both in [0, 1]); ``reg(x)``
    maps images to peak stress in MPa, shape (n,). Both are differentiable torch modules.
    """

    def __init__(self, gen: nn.Module, reg: nn.Module, *, stress_range: float = 1.0):
        self.gen = gen
        self.reg = reg
        self.stress_range = float(stress_range)

    def _targets(self, baseline: torch.Tensor, params: CounterfactualParams) -> torch.Tensor:
        step = params.delta * (self.stress_range if params.delta_unit == "range" else 1.0)
        if params.target == "higher":
            return baseline + step
        if params.target == "lower":
            return baseline - step
        if params.value is None:
            raise ValueError("target 'value' needs params.value (MPa)")
        return torch.full_like(baseline, float(params.value))

    def attribute(
        self,
        images: torch.Tensor,
        attrs: torch.Tensor,
        params: CounterfactualParams,
        ids: list[int] | None = None,
        deadline: float | None = None,
    ) -> CounterfactualResult:
        """Solve Eq. 2 for every tile of the batch; rows are independent problems.

        ``ids`` (default 0..n-1) seed each row's restarts, so a tile gets the same answer alone
        or in any batch. ``deadline`` (a ``time.monotonic()`` instant) stops the search with
        :class:`SearchDeadline` at the next step once passed.
        """
        self.gen.eval()
        self.reg.eval()
        for p in [*self.gen.parameters(), *self.reg.parameters()]:
            p.requires_grad_(False)
        n = len(images)
        with torch.no_grad():
            code = _encode(self.gen, images)  # A' does not change the encoder's output
            recon = _decode(self.gen, code, images, attrs, attrs)
            baseline = self.reg(recon).float()
        anchor = recon if params.distance_to == "reconstruction" else images
        target = self._targets(baseline, params)
        scale = (target - baseline).abs().clamp_min(1e-6)
        if params.target == "value":
            scale = torch.full_like(baseline, max(self.stress_range, 1e-6))
        ids = list(range(n)) if ids is None else list(ids)

        # Restarts are extra rows: row r * n + i is tile i's start r (start 0 is A itself).
        starts = max(1, params.restarts)
        tile_of = torch.arange(n, device=images.device).repeat(starts)
        init = attrs.repeat(starts, 1)
        if starts > 1:
            noise = [_row_noise(params.seed, r, i, attrs.shape[1]) for r in range(1, starts)
                     for i in ids]  # fmt: skip
            spread = params.restart_spread * torch.stack(noise).to(attrs.device)
            init[n:] = (init[n:] + spread).clamp(-params.margin, 1 + params.margin)
        rows_code = None if code is None else [f[tile_of] for f in code]
        rows = [t[tile_of] for t in (images, anchor, attrs, target, scale)]
        best, best_obj = OPTIMIZERS[params.optimizer](
            lambda var: self._objective(rows_code, *rows[:3], var, *rows[3:], params),
            init,
            params,
            deadline,
        )
        winner = best_obj.view(starts, n).argmin(dim=0)  # (n,) the best start per tile
        best = best.view(starts, n, -1)[winner, torch.arange(n)]
        objective = best_obj.view(starts, n)[winner, torch.arange(n)]

        with torch.no_grad():
            edited = _decode(self.gen, code, images, best, attrs)
            achieved = self.reg(edited).float()
            distance = self._distance(anchor, edited, params.p)
            success = (achieved - target).abs() <= params.tolerance * (target - baseline).abs()
        as_np = lambda t: t.detach().cpu().numpy()  # noqa: E731
        return CounterfactualResult(
            attrs=as_np(attrs),
            new_attrs=as_np(best),
            baseline=as_np(baseline),
            target=as_np(target),
            achieved=as_np(achieved),
            distance=as_np(distance),
            objective=as_np(objective),
            success=as_np(success),
            edited=as_np(edited),
            recon=as_np(recon),
        )

    def attribute_batched(
        self,
        images: torch.Tensor,
        attrs: torch.Tensor,
        params: CounterfactualParams,
        batch_size: int = 64,
        deadline: float | None = None,
    ) -> CounterfactualResult:
        """:meth:`attribute` over batches of ``batch_size`` rows; row ``i`` keeps id ``i``, so
        the answers do not depend on ``batch_size``."""
        parts = [
            self.attribute(
                images[i : i + batch_size],
                attrs[i : i + batch_size],
                params,
                ids=list(range(i, min(i + batch_size, len(images)))),
                deadline=deadline,
            )
            for i in range(0, len(images), batch_size)
        ]
        return CounterfactualResult(
            **{
                f.name: np.concatenate([getattr(p, f.name) for p in parts])
                for f in dataclasses.fields(CounterfactualResult)
            }
        )

    def _objective(
        self, code, images, anchor, source, attrs, target, scale, params
    ) -> torch.Tensor:
        edited = _decode(self.gen, code, images, attrs, source)
        pred = self.reg(edited).float()
        fit = ((pred - target) / scale) ** 2
        return params.lam * fit + self._distance(anchor, edited, params.p)

    @staticmethod
    def _distance(images: torch.Tensor, edited: torch.Tensor, p: int) -> torch.Tensor:
        diff = (images - edited).flatten(1)
        return diff.abs().mean(dim=1) if p == 1 else (diff.pow(2).mean(dim=1) + 1e-12).sqrt()


def search_params_from(
    params: Mapping[str, Any], where: str = "params.yaml"
) -> CounterfactualParams:
    """The ``explain.counterfactual`` section of a params mapping (the search defaults the
    ``explain`` stage, the registered bundle and the benchmarks share)."""
    from semknobs.config import from_mapping

    section = params.get("explain", {}).get("counterfactual")
    return from_mapping(CounterfactualParams, section, where=f"{where}: explain.counterfactual")


def _row_noise(seed: int, start: int, row: int, k: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(hash((seed, start, row)) & 0x7FFFFFFF)
    return torch.rand(k, generator=gen) * 2 - 1


class SearchDeadline(TimeoutError):
    """The search passed its deadline (a served request's time limit) and was stopped."""


def check_deadline(deadline: float | None, what: str) -> None:
    """Raise :class:`SearchDeadline` once ``time.monotonic()`` has passed ``deadline``."""
    if deadline is not None and time.monotonic() > deadline:
        raise SearchDeadline(f"{what} passed its deadline")


def _encode(gen: nn.Module, images: torch.Tensor) -> list[torch.Tensor] | None:
    """The generator's encoder maps, or None for editors without ``encode``/``decode``."""
    return gen.encode(images) if hasattr(gen, "encode") and hasattr(gen, "decode") else None


def _decode(gen, code, images, attrs, source) -> torch.Tensor:
    return gen(images, attrs, source) if code is None else gen.decode(code, attrs, source)


def _evaluate(objective, x: torch.Tensor, deadline: float | None, done: int, grad: bool = True):
    """Per-row objectives at ``x`` (detached) and, if ``grad``, their gradients (else None),
    after the deadline check."""
    check_deadline(deadline, f"the search, after {done} steps,")
    if not grad:  # the last point is only scored
        with torch.no_grad():
            return objective(x.detach()), None
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        obj = objective(x)
        return obj.detach(), torch.autograd.grad(obj.sum(), x)[0]


def _adam_rows(
    objective: Callable[[torch.Tensor], torch.Tensor],
    init: torch.Tensor,
    params: CounterfactualParams,
    deadline: float | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Projected Adam (torch's update: betas 0.9/0.999, eps 1e-8) on independent rows
    (``objective(var)`` -> one objective per row), each row keeping the best point it visited.
    Returns (best points, best objectives)."""
    lo, hi = -params.margin, 1 + params.margin
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    var, m, v = init.clone(), torch.zeros_like(init), torch.zeros_like(init)
    best, best_obj = init.clone(), torch.full((len(init),), float("inf"), device=init.device)
    for step in range(1, params.steps + 2):  # the last pass only scores the final point
        obj, grad = _evaluate(objective, var, deadline, step - 1, grad=step <= params.steps)
        better = obj < best_obj
        best[better], best_obj[better] = var[better], obj[better]
        if step > params.steps:
            break
        m = beta1 * m + (1 - beta1) * grad
        v = beta2 * v + (1 - beta2) * grad * grad
        denom = (v / (1 - beta2**step)).sqrt() + eps
        var = (var - params.lr / (1 - beta1**step) * m / denom).clamp(lo, hi)
    return best, best_obj


def _bfgs_rows(
    objective: Callable[[torch.Tensor], torch.Tensor],
    init: torch.Tensor,
    params: CounterfactualParams,
    deadline: float | None,
    armijo: float = 1e-4,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Projected BFGS on independent rows, one trial evaluation per row and iteration (see the
    module docstring); each row keeps the best point it visited. Same contract as
    :func:`_adam_rows`."""
    lo, hi = -params.margin, 1 + params.margin
    rows, k = init.shape
    eye = torch.eye(k, device=init.device).expand(rows, k, k)

    def first_guess(g: torch.Tensor) -> torch.Tensor:  # H0: the largest move is first_step
        return eye * (params.first_step / g.abs().amax(dim=1).clamp_min(1e-12))[:, None, None]

    x = init.clone()
    f, g = _evaluate(objective, x, deadline, 0)
    best, best_obj = x.clone(), f.clone()
    inv_h = first_guess(g)
    rescaled = torch.zeros(rows, dtype=torch.bool, device=init.device)
    length = torch.ones(rows, device=init.device)
    for step in range(1, params.steps + 1):
        d = -(inv_h @ g[:, :, None]).squeeze(-1)
        blocked = ((x <= lo) & (d < 0)) | ((x >= hi) & (d > 0))  # a bound in the way
        if (uphill := ((g * d * ~blocked).sum(dim=1) >= 0)).any():  # lost descent: restart H
            inv_h = torch.where(uphill[:, None, None], first_guess(g), inv_h)
            d = torch.where(uphill[:, None], -(inv_h @ g[:, :, None]).squeeze(-1), d)
            blocked = ((x <= lo) & (d < 0)) | ((x >= hi) & (d > 0))
        trial = (x + length[:, None] * d * ~blocked).clamp(lo, hi)
        f_t, g_t = _evaluate(objective, trial, deadline, step, grad=step < params.steps)
        better = f_t < best_obj
        best[better], best_obj[better] = trial[better], f_t[better]
        if g_t is None:  # the last trial is only scored
            break
        s, y = trial - x, g_t - g
        accept = f_t <= f + armijo * (g * s).sum(dim=1)  # NaN: refused
        sy = (s * y).sum(dim=1)
        update = accept & (sy > 1e-10)  # curvature condition, else keep H
        first = update & ~rescaled  # Nocedal & Wright (6.20): scale H0 before the first update
        scale = sy / (y * y).sum(dim=1).clamp_min(1e-30)
        inv_h = torch.where(first[:, None, None], eye * scale[:, None, None], inv_h)
        rescaled |= first
        rho = torch.where(update, 1 / sy.clamp_min(1e-10), torch.zeros_like(sy))[:, None, None]
        v = eye - rho * (s[:, :, None] @ y[:, None, :])
        inv_h = torch.where(
            update[:, None, None],
            v @ inv_h @ v.transpose(1, 2) + rho * (s[:, :, None] @ s[:, None, :]),
            inv_h,
        )
        x = torch.where(accept[:, None], trial, x)
        f = torch.where(accept, f_t, f)
        g = torch.where(accept[:, None], g_t, g)
        length = torch.where(accept, torch.ones_like(length), length / 2)
    return best, best_obj


OPTIMIZERS: dict[str, Callable[..., tuple[torch.Tensor, torch.Tensor]]] = {
    "adam": _adam_rows,
    "bfgs": _bfgs_rows,
}
