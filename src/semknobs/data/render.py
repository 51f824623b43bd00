"""Procedural top-down SEM micrographs of crystal particles driven by four knobs.

A scan is a grid of square *fields*; each field has its own true attributes (its lot's values plus
scatter) and its own particles, whose centres lie inside it (particles may overhang neighbours, as
in a real powder). The knobs act on the image as a materials scientist would see them:

* size       mean particle diameter, ``diameter_px[0] -> diameter_px[1]`` raw pixels;
* porosity   density of dark pinprick pores on the crystal faces (none at 0);
* dispersity lognormal spread of the diameters, sigma ``dispersity_sigma[0] -> [1]``;
* facetness  shape and relief: 0 is a rounded grain with a smooth dome, 1 a sharp polygonal crystal
             with a flat top face and planar bevels; in between, a polygon with rounded corners.

SEM look: secondary-electron yield rising with surface tilt, a directional (Everhart–Thornley)
component, bright edges, shadows on the substrate, a small beam blur, Poisson-like detector noise,
scan-line jitter and per-scan brightness/contrast. Pixel values are floats, roughly in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.special import ndtri


@dataclass(frozen=True)
class RenderParams:
    diameter_px: tuple[float, float] = (12.0, 24.0)
    dispersity_sigma: tuple[float, float] = (0.04, 0.5)
    coverage: float = 0.45
    separation: float = 1.1  # min centre distance / (r1 + r2): < 1 lets particles touch
    pore_radius_px: tuple[float, float] = (2.0, 3.0)
    pore_density: float = 0.008  # pores per px^2 of crystal face at porosity 1
    facet_sides: tuple[int, ...] = (4, 5)
    aspect_max: float = 1.3
    noise: float = 0.035
    blur_px: float = 0.7

    def __post_init__(self) -> None:
        if not 4 <= self.diameter_px[0] < self.diameter_px[1]:
            raise ValueError("render.diameter_px must be increasing and >= 4 px")
        if not 0 < self.coverage < 0.9:
            raise ValueError("render.coverage must be in (0, 0.9)")
        if min(self.facet_sides) < 3:
            raise ValueError("render.facet_sides must be >= 3")


@dataclass(frozen=True)
class Particle:
    y: float
    x: float
    diameter: float
    sides: int
    angle: float
    aspect: float
    facetness: float
    porosity: float
    albedo: float
    field: int


def sample_particles(
    fields: np.ndarray, field_px: int, params: RenderParams, rng: np.random.Generator
) -> list[Particle]:
    """Particles for a scan whose fields (shape (ny, nx, 4)) hold true attributes."""
    ny, nx, _ = fields.shape
    placed_yx: list[tuple[float, float]] = []
    placed_r: list[float] = []
    particles: list[Particle] = []
    for iy in range(ny):
        for ix in range(nx):
            size, porosity, dispersity, facetness = fields[iy, ix]
            mean_d = params.diameter_px[0] + size * (params.diameter_px[1] - params.diameter_px[0])
            sigma = params.dispersity_sigma[0] + dispersity * np.diff(params.dispersity_sigma)[0]
            # mean of the lognormal is mean_d; E[d^2] = mean_d^2 exp(sigma^2)
            mean_area = np.pi / 4 * mean_d**2 * np.exp(sigma**2)
            n = max(1, round(params.coverage * field_px**2 / mean_area))
            # stratified quantiles: each field realises its size distribution faithfully
            z = ndtri((rng.permutation(n) + rng.random(n)) / n)
            d = mean_d * np.exp(sigma * z - sigma**2 / 2)
            d = np.clip(d, max(6.0, 0.3 * mean_d), 2.6 * mean_d)
            for diameter in np.sort(d)[::-1]:
                for _ in range(30):  # rejection: little overlap, like a spread-out powder
                    y = (iy + rng.random()) * field_px
                    x = (ix + rng.random()) * field_px
                    if not placed_r or _clear(
                        y, x, diameter / 2, placed_yx, placed_r, params.separation
                    ):
                        break
                else:
                    continue
                placed_yx.append((y, x))
                placed_r.append(diameter / 2)
                particles.append(
                    Particle(
                        y=y,
                        x=x,
                        diameter=float(diameter),
                        sides=int(rng.choice(params.facet_sides)),
                        angle=float(rng.uniform(0, 2 * np.pi)),
                        aspect=float(rng.uniform(1.0, params.aspect_max)),
                        facetness=float(facetness),
                        porosity=float(porosity),
                        albedo=float(rng.uniform(0.85, 1.15)),
                        field=iy * nx + ix,
                    )
                )
    order = rng.permutation(len(particles))  # drawing order: who overlaps whom
    return [particles[i] for i in order]


def _clear(y: float, x: float, r: float, yx: list, radii: list, separation: float) -> bool:
    centres = np.asarray(yx)
    dist = np.hypot(centres[:, 0] - y, centres[:, 1] - x)
    return bool(np.all(dist > separation * (np.asarray(radii) + r)))


def render_scan(
    fields: np.ndarray, field_px: int, params: RenderParams, rng: np.random.Generator
) -> np.ndarray:
    """A float image of shape (ny * field_px, nx * field_px) for the given field attributes."""
    ny, nx, _ = fields.shape
    h, w = ny * field_px, nx * field_px
    substrate = 0.10 + 0.025 * ndimage.gaussian_filter(rng.standard_normal((h, w)), 6) * 6
    image = substrate.copy()
    cover = np.zeros((h, w))
    # systematic sampling of pore counts: a field's total is its expectation +- 1, not Poisson
    pore_phase = rng.random(ny * nx)
    for particle in sample_particles(fields, field_px, params, rng):
        _draw(image, cover, particle, params, rng, pore_phase)
    # shadow cast on the substrate, away from the detector (upper left)
    shadow = ndimage.gaussian_filter(ndimage.shift(cover, (2.5, 2.5), order=1), 2.0)
    image -= 0.6 * shadow * (1 - cover) * substrate
    image = ndimage.gaussian_filter(image, params.blur_px)
    image += params.noise * np.sqrt(np.clip(image, 0, None) + 0.02) * rng.standard_normal((h, w))
    image += 0.006 * rng.standard_normal((h, 1))  # scan-line jitter
    return image


def _draw(
    image: np.ndarray,
    cover: np.ndarray,
    p: Particle,
    params: RenderParams,
    rng: np.random.Generator,
    pore_phase: np.ndarray,
) -> None:
    n, f = p.sides, p.facetness
    t = np.tan(np.pi / n)
    area_unit = n * f**2 * t + 2 * n * f * t * (1 - f) + np.pi * (1 - f) ** 2  # inradius 1
    r_in = p.diameter / 2 * np.sqrt(np.pi / area_unit)
    reach = r_in / np.cos(np.pi / n) * np.sqrt(p.aspect) + 3
    y0, y1 = max(0, int(p.y - reach)), min(image.shape[0], int(p.y + reach) + 2)
    x0, x1 = max(0, int(p.x - reach)), min(image.shape[1], int(p.x + reach) + 2)
    if y0 >= y1 or x0 >= x1:
        return
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(float)
    dy, dx = yy - p.y, xx - p.x
    c, s = np.cos(p.angle), np.sin(p.angle)
    u = (c * dx + s * dy) / np.sqrt(p.aspect)
    v = (-s * dx + c * dy) * np.sqrt(p.aspect)
    sdf = _rounded_polygon_sdf(u, v, n, inradius=r_in, rounding=(1 - f) * r_in)
    alpha = np.clip(0.5 - sdf, 0, 1)
    if not alpha.any():
        return
    depth = np.clip(-sdf / r_in, 0, 1)
    bevel = np.minimum(depth / 0.4, 1.0)  # flat top face, planar side facets
    dome = np.sqrt(1 - (1 - depth) ** 2)
    height = 0.8 * r_in * (f * bevel + (1 - f) * dome)
    gy, gx = np.gradient(height)
    slope2 = gx**2 + gy**2
    inv_cos = np.sqrt(1 + slope2)
    toward_detector = (-gx - gy) / np.sqrt(2) / inv_cos
    shade = p.albedo * (0.42 + 0.22 * np.minimum(inv_cos - 1, 2.0)) + 0.16 * toward_detector
    shade += 0.22 * np.exp(np.minimum(sdf, 0) / 1.2) * (sdf <= 0.5)  # edge brightening
    _add_pores(shade, sdf, p, params, rng, pore_phase)
    region = image[y0:y1, x0:x1]
    region *= 1 - alpha
    region += alpha * shade
    np.maximum(cover[y0:y1, x0:x1], alpha, out=cover[y0:y1, x0:x1])


def _add_pores(
    shade: np.ndarray,
    sdf: np.ndarray,
    p: Particle,
    params: RenderParams,
    rng: np.random.Generator,
    pore_phase: np.ndarray,
) -> None:
    if p.porosity <= 0:
        return
    r_lo, r_hi = params.pore_radius_px
    face = np.argwhere(sdf < -(r_hi + 0.5))
    if len(face) == 0:
        return
    before = pore_phase[p.field]
    pore_phase[p.field] += p.porosity * params.pore_density * len(face)
    n = int(np.floor(pore_phase[p.field]) - np.floor(before))
    if n == 0:
        return
    centres = face[rng.integers(0, len(face), n)] + rng.uniform(-0.5, 0.5, (n, 2))
    radii = rng.uniform(r_lo, r_hi, n)
    yy, xx = np.indices(shade.shape, dtype=float)
    pit = np.zeros_like(shade)
    for (cy, cx), r in zip(centres, radii):
        lo_y, hi_y = int(max(0, cy - r - 2)), int(min(shade.shape[0], cy + r + 3))
        lo_x, hi_x = int(max(0, cx - r - 2)), int(min(shade.shape[1], cx + r + 3))
        d = np.hypot(yy[lo_y:hi_y, lo_x:hi_x] - cy, xx[lo_y:hi_y, lo_x:hi_x] - cx)
        np.maximum(
            pit[lo_y:hi_y, lo_x:hi_x], np.clip(r + 0.5 - d, 0, 1), out=pit[lo_y:hi_y, lo_x:hi_x]
        )
    shade *= 1 - 0.8 * pit


def _rounded_polygon_sdf(
    u: np.ndarray, v: np.ndarray, sides: int, inradius: float, rounding: float
) -> np.ndarray:
    """Exact signed distance to a regular polygon (inradius ``inradius - rounding``, one edge
    normal along +u) grown by a disc of radius ``rounding``: a circle when rounding == inradius."""
    half = np.pi / sides
    core = inradius - rounding
    r = np.hypot(u, v)
    theta = np.mod(np.arctan2(v, u) + half, 2 * half) - half
    px = r * np.cos(theta) - core
    py = np.abs(r * np.sin(theta))
    py = py - np.clip(py, 0, core * np.tan(half))
    return np.hypot(px, py) * np.sign(px) - rounding
