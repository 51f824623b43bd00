"""The attribute meter: classical image analysis that MEASURES the four concepts on a tile.

No learned weights, so it can referee the AttGAN: an edit that claims "more porous" must raise the
meter's porosity reading. Works on any greyscale tile (synthetic or real SEM) of a few dozen
pixels or more; particles must be brighter than the substrate, as in secondary-electron images.

Steps (all on the tile rescaled to its own 1st-99th percentile range, hence unchanged by global
brightness and contrast):

1. *Particles*: Gaussian smoothing, Otsu threshold, hole filling; touching particles split by a
   watershed on the distance transform (h-maxima markers), each label grown by one pixel so the
   soft edge belongs to it. A soft membership (0 on substrate, 1 on crystal) gives sub-pixel areas.
2. *size* (pixels): mean equal-area diameter of particles not cut by the tile border.
3. *dispersity*: coefficient of variation (std/mean) of those diameters.
4. *porosity*: share of the crystal face (particles eroded by ``face_erosion`` px) covered by
   pinholes, found as dark spots by a black top-hat of radius ``pore_radius`` inside particles.
5. *facetness*: polygonality of particle outlines: the sub-pixel contour's radius r(theta) around
   the centroid, Fourier-analysed; the energy of harmonics 3-8 relative to the mean radius (0 for a
   disc or an ellipse, which only has harmonic 2; larger for flat faces meeting at corners). A
   trimmed mean over particles of at least ``facet_min_area`` px. With ``facet_harmonic:
   dominant`` the largest single harmonic of 3-8 instead of their energy: a regular n-gon puts its
   corners into harmonic n, a wobbling outline spreads over all of them. Measured on the default
   study (README, "Does the facetness knob change shape?"): both read the true per-tile
   facetness alike (Spearman 0.94), and the AttGAN's facetness edits, which add outline wobble
   rather than corners, move the dominant reading by 0.27 of a true change, the energy by 0.42.
   As the concept network's target (Rule T) it did not make the editor draw corners: off.

Readings are in image units (pixels, fractions, ratios), not the experts' 1-10 scale: compare
meter readings with each other (edited vs original), or rank-correlate them with labels.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
import pandas as pd
from scipy import ndimage as ndi
from skimage import filters, measure, morphology, segmentation
from tqdm import tqdm

from semknobs.attributes import ATTRIBUTES
from semknobs.errors import DataError

_ANGLES = np.linspace(0, 2 * np.pi, 72, endpoint=False)
COUNT = "n_particles"  # the reading beside the four attributes: whole particles counted


@dataclass(frozen=True)
class MeterParams:
    smooth_sigma: float = 0.6
    split_h: float = 0.5  # watershed marker depth (px of distance) that separates two particles
    min_area: float = 4.0  # px; smaller blobs are noise
    pore_radius: int = 2
    pore_contrast: float = 0.2  # top-hat depth, in units of the tile's robust intensity range
    face_erosion: int = 2
    facet_min_area: float = 25.0
    facet_trim: float = 0.15  # share trimmed at each end before averaging polygonality
    facet_harmonic: Literal["energy", "dominant"] = "energy"  # harmonics 3-8: energy | largest
    min_particles_dispersity: int = 3


def measure_tile(tile: np.ndarray, params: MeterParams = MeterParams()) -> dict[str, float]:
    """Readings ``size``, ``porosity``, ``dispersity``, ``facetness`` and ``n_particles``.

    NaN where a reading has no support (a blank tile; fewer than three whole particles for
    dispersity; no particle large enough for facetness).
    """
    nan = dict.fromkeys(ATTRIBUTES, np.nan) | {COUNT: 0.0}
    found = _particles(tile, params)
    if found is None:
        return nan
    d = found.diameters
    readings = dict(nan)
    readings[COUNT] = float(len(d))
    readings["porosity"] = _porosity(found.smooth, found.filled, params)
    if len(d):
        readings["size"] = float(d.mean())
    if len(d) >= params.min_particles_dispersity:
        readings["dispersity"] = float(d.std() / d.mean())
    poly = np.sort([p for p in found.outlines if np.isfinite(p)])
    if len(poly):
        cut = int(len(poly) * params.facet_trim)
        readings["facetness"] = float(
            poly[cut : len(poly) - cut].mean() if len(poly) > 2 * cut else poly.mean()
        )
    return readings


def particle_diameters(tile: np.ndarray, params: MeterParams = MeterParams()) -> np.ndarray:
    """Equal-area diameters (px) of the whole particles the meter reads on a tile (``size`` is
    their mean, ``dispersity`` their coefficient of variation); empty on a blank tile."""
    found = _particles(tile, params)
    return np.zeros(0) if found is None else found.diameters


class _Particles(NamedTuple):
    smooth: np.ndarray  # the normalised, smoothed tile
    filled: np.ndarray  # crystal mask, holes filled
    diameters: np.ndarray  # (n,) px, whole particles only
    outlines: list[float]  # polygonality of those of at least facet_min_area


def _particles(tile: np.ndarray, params: MeterParams) -> _Particles | None:
    """Steps 1-2 of the module docstring; None on a blank tile."""
    z = _normalise(np.asarray(tile, dtype=float))
    smooth = filters.gaussian(z, params.smooth_sigma)
    if np.ptp(smooth) < 1e-6:
        return None
    mask = smooth > filters.threshold_otsu(smooth)
    filled = morphology.remove_small_objects(ndi.binary_fill_holes(mask), max_size=3)
    if not filled.any() or filled.all():
        return None
    soft = _soft_membership(smooth, filled)
    labels = _split_particles(filled, params.split_h)

    height, width = z.shape
    diameters, outlines = [], []
    for region in measure.regionprops(labels):
        y0, x0, y1, x1 = region.bbox
        if y0 == 0 or x0 == 0 or y1 == height or x1 == width:
            continue  # cut by the tile border: its size is unknown
        area = float(soft[tuple(region.coords.T)].sum())
        if area < params.min_area:
            continue
        diameters.append(np.sqrt(4 * area / np.pi))
        if area >= params.facet_min_area:
            own = labels[y0:y1, x0:x1] == region.label
            patch = np.where(own, soft[y0:y1, x0:x1], 0.0)
            outlines.append(_polygonality(patch, params.facet_harmonic))
    return _Particles(smooth, filled, np.asarray(diameters), outlines)


def measure_tiles(
    tiles: np.ndarray,
    params: MeterParams = MeterParams(),
    *,
    n_jobs: int = 1,
    progress: bool = True,
    chunk: int = 64,
) -> pd.DataFrame:
    """Readings for a stack of tiles (n, h, w), one row per tile, in input order."""
    tiles = np.asarray(tiles)
    if tiles.ndim != 3:
        raise ValueError(f"expected a stack of greyscale tiles (n, h, w), got shape {tiles.shape}")
    chunks = [tiles[i : i + chunk] for i in range(0, len(tiles), chunk)]
    bar = tqdm(total=len(tiles), desc="measure", unit="tile", disable=not progress)
    rows: list[dict[str, float]] = []
    if n_jobs > 1 and len(chunks) > 1:
        with ProcessPoolExecutor(max_workers=n_jobs) as pool:
            for part in pool.map(_measure_chunk, chunks, [params] * len(chunks)):
                rows.extend(part)
                bar.update(len(part))
    else:
        for c in chunks:
            rows.extend(_measure_chunk(c, params))
            bar.update(len(c))
    bar.close()
    return pd.DataFrame(rows, columns=[*ATTRIBUTES, COUNT])


def _measure_chunk(tiles: np.ndarray, params: MeterParams) -> list[dict[str, float]]:
    return [measure_tile(t, params) for t in tiles]


def _normalise(z: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(z, [1, 99])
    return (z - lo) / (hi - lo) if hi > lo else z - lo


def _soft_membership(smooth: np.ndarray, filled: np.ndarray) -> np.ndarray:
    """0 on substrate, 1 on crystal, linear in between: partial-pixel areas at the edges."""
    outside = ~ndi.binary_dilation(filled)
    inside = ndi.binary_erosion(filled)
    bg = np.median(smooth[outside]) if outside.any() else smooth.min()
    fg = np.median(smooth[inside]) if inside.any() else smooth.max()
    soft = np.clip((smooth - bg) / max(fg - bg, 1e-6), 0, 1)
    return np.maximum(soft, inside)  # pores inside a crystal still count as crystal area


def _split_particles(filled: np.ndarray, h: float, pad: int = 8) -> np.ndarray:
    # pad by edge replication so the tile border does not shrink the distance map of cut particles
    dist = ndi.distance_transform_edt(np.pad(filled, pad, mode="edge"))[pad:-pad, pad:-pad]
    markers = measure.label(morphology.h_maxima(dist, h))
    labels = segmentation.watershed(-dist, markers, mask=filled)
    return segmentation.expand_labels(labels, 1)


def _porosity(smooth: np.ndarray, filled: np.ndarray, params: MeterParams) -> float:
    face = ndi.binary_erosion(filled, morphology.disk(params.face_erosion))
    if not face.any():
        return 0.0
    tophat = morphology.closing(smooth, morphology.disk(params.pore_radius)) - smooth
    pores = (tophat > params.pore_contrast) & ndi.binary_erosion(filled, morphology.disk(1))
    return float(pores.sum() / face.sum())


def _polygonality(soft_patch: np.ndarray, harmonic: str) -> float:
    contours = measure.find_contours(np.pad(soft_patch, 2), 0.5)
    if not contours:
        return np.nan
    c = max(contours, key=len)
    dy, dx = c[:, 0] - c[:, 0].mean(), c[:, 1] - c[:, 1].mean()
    theta, radius = np.arctan2(dy, dx), np.hypot(dy, dx)
    order = np.argsort(theta)
    r = np.interp(_ANGLES, theta[order], radius[order], period=2 * np.pi)
    spectrum = np.abs(np.fft.rfft(r)) / len(r)
    corners = spectrum[3:9]
    if harmonic == "dominant":
        return float(corners.max() / spectrum[0])
    return float(np.sqrt((corners**2).sum()) / spectrum[0])


@dataclass(frozen=True)
class MeasureParams:
    """The ``measure`` stage: meter settings and worker processes."""

    n_jobs: int = 2
    meter: MeterParams = field(default_factory=MeterParams)


def read_measurements(
    path: str | Path, tiles: pd.DataFrame, columns: Sequence[str] = ATTRIBUTES
) -> pd.DataFrame:
    """The measure stage's readings (``columns``: the four attributes unless told) for the rows
    of ``tiles`` (by ``tile`` id, in their order)."""
    try:
        readings = pd.read_csv(path, dtype={"lot": str})
    except (OSError, ValueError) as exc:
        raise DataError(
            f"{path}: unreadable meter readings ({exc}); run the measure stage"
        ) from None
    missing_cols = sorted({"tile", "lot", *columns} - set(readings.columns))
    if missing_cols:
        raise DataError(f"{path}: lacks column(s) {missing_cols}")
    readings = readings.set_index("tile")
    absent = sorted(set(tiles["tile"]) - set(readings.index))
    if absent:
        lots = sorted(set(tiles.set_index("tile").loc[absent, "lot"]))
        raise DataError(
            f"{path}: no readings for {len(absent)} tile(s) of lots {lots}; rerun the measure stage"
        )
    rows = readings.loc[tiles["tile"].to_numpy()]
    wrong = rows["lot"].to_numpy() != tiles["lot"].to_numpy()
    if wrong.any():
        raise DataError(
            f"{path}: tile ids do not match the tile manifest (e.g. tile "
            f"{int(tiles['tile'].to_numpy()[wrong][0])}); rerun the measure stage"
        )
    return rows[list(columns)].reset_index(drop=True).astype(float)


def readings_and_counts(
    path: str | Path, tiles: pd.DataFrame, count: bool
) -> tuple[np.ndarray, np.ndarray | None]:
    """The measure stage's four readings (n, 4) of ``tiles`` and, with ``count``, its particle
    counts (n,) (the concept network's count read)."""
    columns = [*ATTRIBUTES, COUNT] if count else list(ATTRIBUTES)
    measured = read_measurements(path, tiles, columns).to_numpy()
    return measured[:, : len(ATTRIBUTES)], measured[:, len(ATTRIBUTES)] if count else None


def calibration(
    readings: np.ndarray, lots: np.ndarray, labels: dict[str, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Per attribute (alpha, beta) of ``label ~ alpha * lot-mean reading + beta`` over lots:
    the meter's readings in the labels' units (the concept network's targets, the explainer's
    measured changes). ``labels``: lot -> (4,) label vector."""
    names = sorted(labels)
    means = np.array([np.nanmean(readings[lots == lot], axis=0) for lot in names])
    target = np.array([labels[lot] for lot in names])
    alpha, beta = np.zeros(len(ATTRIBUTES)), np.zeros(len(ATTRIBUTES))
    for k in range(len(ATTRIBUTES)):
        ok = np.isfinite(means[:, k])
        if ok.sum() < 2 or np.ptp(means[ok, k]) == 0:
            raise ValueError(
                f"meter calibration: {ATTRIBUTES[k]} has too few lots with meter readings"
            )
        alpha[k], beta[k] = np.polyfit(means[ok, k], target[ok, k], 1)
    return alpha, beta
