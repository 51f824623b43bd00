"""Texture statistics the meter does not read, and how real lots say the knobs move them.

The attribute meter rescales every tile to its own intensity range and reads particles, pores and
outlines, so a concept loss built on it leaves the rest of the image free. Measured on the
default study without this loss (README, "Texture the meter does not read"): the size knob
brightened tiles by 2.7 spreads per knob unit where real lots of larger particles darken by 2.0,
and left the fine bands almost unchanged where real lots lose ~2.9 spreads; the meter read bigger
particles, the regressor (which reads the whole image) barely saw a change.

``texture_stats(x)``: per tile, the mean and standard deviation of the grey levels and the mean
absolute band of a Laplacian pyramid (``levels`` octaves: 1, 2, 4, ... px): how much of the image
lives at each scale, from pores and edges to particles. Differentiable and cheap.

``region_stats(x)`` (``texture_regions``): the same kind of statistics per region of the tile:
crystal interiors, outlines (a ring of ``RING_PX`` either side) and background, by an Otsu
threshold of each tile's own smoothed grey levels (not differentiable; the statistics are, through
the pixels). Measured on the default study (README, "Texture by region"; Rule S): the regressor
reads a real facetness change almost wholly at the outlines and a side-by-side editor's
backward facetness edit in the interiors; with this term the interiors' statistics reached the
lots' fit and that read did not move, while the size knob stopped working (a size edit moves
the mask). On the committed design, all regions or the background's alone (Rule W), it took
the size edit's background content away and the size knob with it. Off by default;
:func:`region_agreement` reports the same statistics of any editor.

``TextureTarget``: what real lots say. Over the training lots, a multivariate least-squares fit
of each statistic's lot mean on the lot labels (knob units), ``T ~ W a + c``; an edit of a tile
from knobs ``a`` to ``b`` should then move its statistics by ``W (b - a)``, as differing lots do.
Changes are compared in units of each statistic's spread over the real tiles. Nothing here reads
a ground truth: the labels and tiles are what a lab hands over.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu

from semknobs.attributes import ATTRIBUTES
from semknobs.explain.edit_texture import region_miss_key
from semknobs.pixels import to_model

MIN_TEXTURE_LOTS = len(ATTRIBUTES) + 2  # a fit of 4 slopes and an intercept, one spare lot
_TAPS = (1 / 16, 4 / 16, 6 / 16, 4 / 16, 1 / 16)  # binomial, sigma ~1 px
RING_PX = 2  # half-width of the outline region
REGIONS = ("interior", "outline", "background")
REGION_STATS = ("grey", "band_1px", "abs_band_1px", "band_2px", "abs_band_2px")
Regions = bool | tuple[str, ...] | list[str]  # True: all of REGIONS; False or empty: none


def region_list(regions: Regions) -> tuple[str, ...]:
    """``texture_regions`` as the regions it names, in :data:`REGIONS` order."""
    if isinstance(regions, bool):
        return REGIONS if regions else ()
    named = set(regions)
    if not named <= set(REGIONS) or len(named) != len(regions):
        raise ValueError(
            f"texture_regions must be true, false or a list naming each of {list(REGIONS)} at "
            f"most once, got {list(regions)}"
        )
    return tuple(r for r in REGIONS if r in named)


def _taps_along(x: torch.Tensor, dim: int) -> torch.Tensor:
    """The 5-tap binomial along ``dim`` (-1: columns, -2: rows), reflected at the border."""
    side = x.shape[dim]
    padded = F.pad(x, (2, 2, 0, 0) if dim == -1 else (0, 0, 2, 2), mode="reflect")
    return sum(w * padded.narrow(dim, i, side) for i, w in enumerate(_TAPS))


def _blur(x: torch.Tensor) -> torch.Tensor:
    """Separable binomial blur of (B, 1, S, S), reflected at the border.

    Five shifted, weighted slices per axis rather than ``conv2d`` with a 1-channel 5-tap kernel:
    the same sums, ~3.6x cheaper forward and backward on a CPU (64-px batches; README, AttGAN
    step time).
    """
    return _taps_along(_taps_along(x, -1), -2)


def stat_names(levels: int, regions: Regions = False) -> list[str]:
    names = ["mean", "std", *(f"band_{2**i}px" for i in range(levels))]
    return names + [f"{r}_{s}" for r in region_list(regions) for s in REGION_STATS]


def texture_stats(x: torch.Tensor, levels: int) -> torch.Tensor:
    """Tiles (B, 1, S, S) in [-1, 1] -> (B, 2 + levels) statistics (:func:`stat_names`): the
    grey-level mean and spread, then a Laplacian pyramid's mean absolute band at 1, 2, 4, ... px."""
    flat = x.flatten(1)
    out = [flat.mean(dim=1), flat.std(dim=1)]
    for _ in range(levels):
        blurred = _blur(x)
        out.append((x - blurred).abs().flatten(1).mean(dim=1))  # (B,)
        x = F.avg_pool2d(blurred, 2)
    return torch.stack(out, dim=1)


def region_masks(x: torch.Tensor) -> torch.Tensor:
    """Tiles (B, 1, S, S) -> (B, 3, S, S) hard masks of :data:`REGIONS` (they partition the tile):
    crystals are the tile's Gaussian-smoothed (sigma 1 px) grey levels above their Otsu
    threshold, holes filled; a blank tile is all background."""
    smooth = ndi.gaussian_filter(x.detach().float().cpu().numpy()[:, 0], (0, 1, 1))
    out = np.zeros((len(smooth), len(REGIONS), *smooth.shape[1:]), dtype=np.float32)
    for i, tile in enumerate(smooth):
        crystal = np.zeros(tile.shape, bool)
        if np.ptp(tile) > 1e-6:
            crystal = ndi.binary_fill_holes(tile > threshold_otsu(tile))
        inner = ndi.binary_erosion(crystal, iterations=RING_PX)
        outer = ndi.binary_dilation(crystal, iterations=RING_PX)
        out[i] = inner, outer & ~inner, ~outer
    return torch.from_numpy(out).to(x.device)


def soft_regions(x: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    """:func:`region_masks` softened by a Gaussian of ``sigma`` px and renormalised (float64): the
    three weights still sum to 1 at every pixel, so the parts of a change they cut add up to it
    and have no hard seam for the regressor to read."""
    hard = region_masks(x).double().cpu().numpy()
    soft = ndi.gaussian_filter(hard, (0, 0, sigma, sigma), mode="reflect")
    return torch.from_numpy(soft / soft.sum(axis=1, keepdims=True)).to(x.device)


def outside_background(x: torch.Tensor) -> torch.Tensor:
    """Tiles (B, 1, S, S) -> (B, 1, S, S) float32: each pixel's weight outside the background of
    the tile's own crystal mask (:func:`soft_regions`), for the knob gradient without the edit's
    background part (:mod:`semknobs.explain.gradient`). Reads the tile only, no truth."""
    background = soft_regions(x)[:, REGIONS.index("background")]
    return (1 - background).float().unsqueeze(1)


def region_stats(x: torch.Tensor, regions: Regions = True) -> torch.Tensor:
    """Tiles (B, 1, S, S) in [-1, 1] -> (B, 5 R): per region of :func:`region_masks` named by
    ``regions`` (all three by default), the mean grey level, the mean signed and absolute 1 px
    band, and the same of the 2 px band (half resolution, the mask average-pooled)."""
    keep = [REGIONS.index(r) for r in region_list(regions)]
    masks = region_masks(x)[:, keep]  # (B, R, S, S)
    half = F.avg_pool2d(masks, 2)
    blurred = _blur(x)
    coarse = F.avg_pool2d(blurred, 2)
    fine, mid = x - blurred, coarse - _blur(coarse)

    def mean_in(v: torch.Tensor, m: torch.Tensor) -> torch.Tensor:  # (B, 1, s, s) -> (B, R)
        return (v * m).flatten(2).sum(2) / m.flatten(2).sum(2).clamp_min(1.0)

    cols = [mean_in(x, masks), mean_in(fine, masks), mean_in(fine.abs(), masks)]
    cols += [mean_in(mid, half), mean_in(mid.abs(), half)]
    return torch.stack(cols, dim=2).flatten(1)  # region-major, as stat_names


def tile_stats(x: torch.Tensor, levels: int, regions: Regions = False) -> torch.Tensor:
    """:func:`texture_stats`, then :func:`region_stats` of the regions ``regions`` names."""
    stats = texture_stats(x, levels)
    return torch.cat([stats, region_stats(x, regions)], dim=1) if region_list(regions) else stats


@dataclass
class TextureTarget:
    """``weight`` (T, 4): change of each statistic per knob unit across real lots; ``scale``
    (T,): each statistic's spread over the real tiles; ``regions``: :func:`region_stats` of those
    regions too (:func:`region_list`)."""

    levels: int
    weight: torch.Tensor
    scale: torch.Tensor
    regions: Regions = False

    @classmethod
    def fit(
        cls,
        images: torch.Tensor | np.ndarray,
        labels: torch.Tensor | np.ndarray,
        lots: np.ndarray,
        levels: int,
        batch_size: int = 256,
        regions: Regions = False,
    ) -> TextureTarget:
        """From real tiles (uint8 (n, S, S)), their lot labels (n, 4, knob units) and lot ids."""
        lots = np.asarray(lots)
        names = np.unique(lots)
        if len(names) < MIN_TEXTURE_LOTS:
            raise ValueError(
                f"texture targets: {len(names)} training lots cannot fit "
                f"{len(ATTRIBUTES)} slopes and an intercept (need at least {MIN_TEXTURE_LOTS})"
            )
        with torch.no_grad():
            stats = torch.cat(
                [
                    tile_stats(to_model(images[i : i + batch_size]), levels, regions)
                    for i in range(0, len(images), batch_size)
                ]
            ).double()
        labels = torch.as_tensor(np.asarray(labels), dtype=torch.float64)
        rows = [np.flatnonzero(lots == lot) for lot in names]
        y = torch.stack([stats[r].mean(dim=0) for r in rows])  # (lots, T)
        a = torch.stack([labels[r[0]] for r in rows])  # (lots, 4)
        design = torch.cat([a, torch.ones(len(a), 1, dtype=a.dtype)], dim=1)
        coef = torch.linalg.lstsq(design, y).solution  # (5, T)
        scale = stats.std(dim=0).clamp_min(1e-3)  # under ~1/8 grey level: no spread
        return cls(levels, coef[:-1].T.float(), scale.float(), region_list(regions))

    def to(self, device: torch.device) -> TextureTarget:
        return TextureTarget(
            self.levels, self.weight.to(device), self.scale.to(device), self.regions
        )

    @property
    def names(self) -> list[str]:
        return stat_names(self.levels, self.regions)

    def stats(self, x: torch.Tensor) -> torch.Tensor:
        return tile_stats(x, self.levels, self.regions)

    def wanted(self, change: torch.Tensor) -> torch.Tensor:
        """Knob changes (B, 4) -> the statistics' changes real lots show (B, T), in spreads."""
        return change @ self.weight.T / self.scale

    def loss(
        self, edit: torch.Tensor, reference: torch.Tensor, change: torch.Tensor
    ) -> torch.Tensor:
        """Mean squared miss of ``stats(edit) - stats(reference)`` against :meth:`wanted`; with
        ``regions``, the whole-tile statistics' mean plus the region statistics' mean (the first
        term as without regions; the second weighs each statistic more when fewer regions are
        named)."""
        moved = (self.stats(edit) - self.stats(reference)) / self.scale
        miss = (moved - self.wanted(change)).pow(2)
        if not self.regions:
            return miss.mean()
        whole = len(stat_names(self.levels))
        return miss[:, :whole].mean() + miss[:, whole:].mean()


def texture_agreement(
    gen: torch.nn.Module,
    images: torch.Tensor,
    attrs: torch.Tensor,
    target: TextureTarget,
    step: float = 0.25,
    batch_size: int = 64,
) -> tuple[dict[str, float], pd.DataFrame]:
    """How the knobs move the statistics of these tiles (model range, (n, 1, S, S)) at their
    knobs ``attrs`` (n, 4), against how real lots differ: per knob, the mean change per knob
    unit of ``G(x; a + step e_k)`` against ``G(x; a - step e_k)`` (clamped to [0, 1]), in
    spreads, beside ``W e_k`` in spreads.

    Metrics ``texture/cosine_<a>`` (direction) and ``texture/miss_<a>`` = |edit - lots| / |lots|
    (0: as real lots differ; 1: as far off as an edit that changes nothing).
    """
    gen.eval()
    names = target.names
    metrics, rows = {}, []
    lots_say = (target.weight / target.scale[:, None]).T.cpu()  # (4, T) spreads per knob unit
    for k, attribute in enumerate(ATTRIBUTES):
        moved = []
        with torch.no_grad():
            for i in range(0, len(images), batch_size):
                x, a = images[i : i + batch_size], attrs[i : i + batch_size]
                up, down = a.clone(), a.clone()
                up[:, k] = (up[:, k] + step).clamp(0, 1)
                down[:, k] = (down[:, k] - step).clamp(0, 1)
                span = (up[:, k] - down[:, k]).clamp_min(1e-6)[:, None]
                diff = target.stats(gen(x, up, a)) - target.stats(gen(x, down, a))
                moved.append(diff / span / target.scale)
        edit = torch.cat(moved).mean(dim=0).cpu()
        real = lots_say[k]
        cos = float(edit @ real / (edit.norm() * real.norm()).clamp_min(1e-12))
        metrics[f"texture/cosine_{attribute}"] = cos
        metrics[f"texture/miss_{attribute}"] = float((edit - real).norm() / real.norm())
        rows += [
            dict(knob=attribute, statistic=name, edit=float(e), lots=float(r))
            for name, e, r in zip(names, edit, real, strict=True)
        ]
    metrics["texture/mean_miss"] = float(
        np.mean([metrics[f"texture/miss_{a}"] for a in ATTRIBUTES])
    )
    return metrics, pd.DataFrame(rows)


def region_agreement(
    gen: torch.nn.Module, images: torch.Tensor, attrs: torch.Tensor, target: TextureTarget
) -> tuple[dict[str, float], pd.DataFrame]:
    """:func:`texture_agreement` on the region statistics of ``target`` (fit with regions) only:
    ``texture/region_miss_<a>`` = |edit - lots| / |lots| over them, and their table. Truth-free:
    where in the tile a knob moves the grey levels and bands, against the training lots (the
    committed size knob darkens the background ~15x as much as the lots do and adds the fine
    background content the regressor reads as its size change: README, "Where the regressor
    reads the size edit")."""
    _, table = texture_agreement(gen, images, attrs, target)
    table = table[table["statistic"].str.startswith(REGIONS)].reset_index(drop=True)
    metrics = {}
    for a in ATTRIBUTES:
        part = table[table["knob"] == a]
        lots = np.linalg.norm(part["lots"])
        metrics[region_miss_key(a)] = float(
            np.linalg.norm(part["edit"] - part["lots"]) / max(lots, 1e-12)
        )
    return metrics, table
