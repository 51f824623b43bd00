"""Counterfactual knob search: the paper's Eq. 2, batched.

For a tile ``I`` with attributes ``A`` find ``A'`` minimising

    lambda * ((R(G(I; A')) - p') / scale)^2  +  || I - G(I; A') ||_p

by Adam on ``A'`` (projected onto the observed attribute range widened by ``margin``), for a
whole batch of tiles at once, from several starts, keeping each tile's best.

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
  is ``A`` itself); the start with the lowest final objective wins per tile.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
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
    steps: int = 100
    lr: float = 0.05
    restarts: int = 3
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
    success: np.ndarray  # (n,) bool
    edited: np.ndarray  # (n, 1, S, S) G(I; A') in [-1, 1]

    @property
    def delta_attrs(self) -> np.ndarray:
        return self.new_attrs - self.attrs


class KnobCounterfactual:
    """Captum-shaped explainer: ``KnobCounterfactual(gen, reg).attribute(images, attrs)``.

    ``gen(x, attrs)`` maps images in [-1, 1] and attributes in [0, 1] to images; ``reg(x)``
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
    ) -> CounterfactualResult:
        """Solve Eq. 2 for every tile of the batch; rows are independent problems.

        ``ids`` (default 0..n-1) seed each row's restarts, so a tile gets the same answer alone
        or in any batch.
        """
        self.gen.eval()
        self.reg.eval()
        for p in [*self.gen.parameters(), *self.reg.parameters()]:
            p.requires_grad_(False)
        n = len(images)
        with torch.no_grad():
            recon = self.gen(images, attrs)
            baseline = self.reg(recon).float()
        anchor = recon if params.distance_to == "reconstruction" else images
        target = self._targets(baseline, params)
        scale = (target - baseline).abs().clamp_min(1e-6)
        if params.target == "value":
            scale = torch.full_like(baseline, max(self.stress_range, 1e-6))
        lo, hi = -params.margin, 1 + params.margin
        ids = list(range(n)) if ids is None else list(ids)

        best_obj = torch.full((n,), float("inf"), device=images.device)
        best = attrs.clone()
        for start in range(max(1, params.restarts)):
            init = attrs.clone()
            if start > 0:
                noise = torch.stack(
                    [_row_noise(params.seed, start, i, attrs.shape[1]) for i in ids]
                )
                noise = noise.to(attrs.device)
                init = (init + params.restart_spread * noise).clamp(lo, hi)
            var = init.clone().requires_grad_(True)
            opt = torch.optim.Adam([var], lr=params.lr)
            for _ in range(params.steps):
                objective = self._objective(images, anchor, var, target, scale, params)
                opt.zero_grad(set_to_none=True)
                objective.sum().backward()
                opt.step()
                with torch.no_grad():
                    var.clamp_(lo, hi)
            with torch.no_grad():
                final = self._objective(images, anchor, var, target, scale, params)
                better = final < best_obj
                best_obj = torch.where(better, final, best_obj)
                best[better] = var.detach()[better]

        with torch.no_grad():
            edited = self.gen(images, best)
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
            success=as_np(success),
            edited=as_np(edited),
        )

    def attribute_batched(
        self,
        images: torch.Tensor,
        attrs: torch.Tensor,
        params: CounterfactualParams,
        batch_size: int = 64,
    ) -> CounterfactualResult:
        """:meth:`attribute` over batches of ``batch_size`` rows; row ``i`` keeps id ``i``, so
        the answers do not depend on ``batch_size``."""
        parts = [
            self.attribute(
                images[i : i + batch_size],
                attrs[i : i + batch_size],
                params,
                ids=list(range(i, min(i + batch_size, len(images)))),
            )
            for i in range(0, len(images), batch_size)
        ]
        return CounterfactualResult(
            **{
                f.name: np.concatenate([getattr(p, f.name) for p in parts])
                for f in dataclasses.fields(CounterfactualResult)
            }
        )

    def _objective(self, images, anchor, attrs, target, scale, params) -> torch.Tensor:
        edited = self.gen(images, attrs)
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
