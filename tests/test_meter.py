import numpy as np
import pytest
from skimage.draw import disk, polygon

from semknobs.attributes import ATTRIBUTES
from semknobs.data.tiles import load_tiles
from semknobs.meter import (
    MeterParams,
    _polygonality,
    measure_tile,
    measure_tiles,
    particle_diameters,
)


def _canvas(
    shapes: str, diameter: float = 11.0, pores_per_particle: int = 0, n: int = 4, seed: int = 0
):
    """An n x n grid of bright particles on a dark substrate with mild noise."""
    rng = np.random.default_rng(seed)
    size = 16 * n
    img = np.full((size, size), 40.0)
    for i in range(n):
        for j in range(n):
            cy, cx = 8 + 16 * i + rng.uniform(-1, 1), 8 + 16 * j + rng.uniform(-1, 1)
            if shapes == "disc":
                rr, cc = disk((cy, cx), diameter / 2, shape=img.shape)
            else:  # square of the same area, random rotation
                half = np.sqrt(np.pi) * diameter / 4
                t = rng.uniform(0, np.pi / 2)
                corners = np.array([[-1, -1], [-1, 1], [1, 1], [1, -1]]) * half
                rot = corners @ np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
                rr, cc = polygon(cy + rot[:, 0], cx + rot[:, 1], shape=img.shape)
            img[rr, cc] = 200.0
            for _ in range(pores_per_particle):
                py, px = int(cy + rng.integers(-2, 2)), int(cx + rng.integers(-2, 2))
                img[py : py + 2, px : px + 2] = 60.0
    return np.clip(img + rng.normal(0, 3, img.shape), 0, 255).astype(np.uint8)


def test_known_discs():
    r = measure_tile(_canvas("disc", diameter=11.0))
    assert r["size"] == pytest.approx(11.0, rel=0.1)
    assert r["dispersity"] < 0.05
    assert r["porosity"] < 0.01
    assert r["n_particles"] >= 8  # border particles are excluded, interior ones counted


def test_squares_read_more_faceted_than_discs_of_the_same_area():
    discs, squares = measure_tile(_canvas("disc")), measure_tile(_canvas("square"))
    assert squares["facetness"] > 2 * discs["facetness"]
    assert squares["size"] == pytest.approx(discs["size"], rel=0.1)


def _outline(radius) -> np.ndarray:
    """A 61 x 61 soft patch: the region inside r(theta) = radius(theta) around the centre."""
    y, x = np.mgrid[-30:31, -30:31].astype(float)
    return (np.hypot(y, x) <= radius(np.arctan2(y, x))).astype(float)


def test_the_dominant_harmonic_reads_polygons_and_not_wobble():
    rng = np.random.default_rng(0)
    phases = rng.uniform(0, 2 * np.pi, 6)
    shapes = {
        "disc": lambda t: np.full_like(t, 20.0),
        # a square's radius: the distance to its nearest side along theta
        "square": lambda t: 18.0 / np.maximum(np.abs(np.cos(t)), np.abs(np.sin(t))),
        # harmonics 3-8, each 3 % of the radius, random phases: an outline that wobbles
        "wobble": lambda t: (
            20.0 * (1 + 0.03 * sum(np.cos(n * t + p) for n, p in zip(range(3, 9), phases)))
        ),
    }
    read = {
        (name, h): _polygonality(_outline(r), h)
        for name, r in shapes.items()
        for h in ("energy", "dominant")
    }
    assert read["disc", "energy"] < 0.01 and read["disc", "dominant"] < 0.01
    assert read["square", "dominant"] > 0.9 * read["square", "energy"]  # harmonic 4 (and 8)
    assert read["wobble", "dominant"] < 0.6 * read["wobble", "energy"]  # ~1/sqrt(6) of it
    assert read["wobble", "energy"] > 2 * read["disc", "energy"]  # the energy reads wobble


def test_squares_read_more_faceted_than_discs_under_the_dominant_harmonic():
    params = MeterParams(facet_harmonic="dominant")
    discs = measure_tile(_canvas("disc"), params)["facetness"]
    assert measure_tile(_canvas("square"), params)["facetness"] > 2 * discs


def test_pores_raise_porosity():
    readings = [measure_tile(_canvas("disc", pores_per_particle=k))["porosity"] for k in (0, 1, 2)]
    assert readings[0] < readings[1] < readings[2]


def test_mixed_sizes_raise_dispersity():
    a = _canvas("disc", diameter=11.0)
    b = a.copy()
    b[:, 32:] = _canvas("disc", diameter=6.0, seed=1)[:, 32:]
    assert measure_tile(b)["dispersity"] > measure_tile(a)["dispersity"] + 0.1


def test_the_particle_diameters_are_what_size_and_dispersity_summarise():
    """Known answer: the mixed tile has whole discs of ~11 px and ~6 px."""
    mixed = _canvas("disc", diameter=11.0)
    mixed[:, 32:] = _canvas("disc", diameter=6.0, seed=1)[:, 32:]
    d, r = particle_diameters(mixed), measure_tile(mixed)
    assert len(d) == r["n_particles"]
    assert d.mean() == pytest.approx(r["size"]) and d.std() / d.mean() == pytest.approx(
        r["dispersity"]
    )
    assert d.min() == pytest.approx(6.0, rel=0.2) and d.max() == pytest.approx(11.0, rel=0.1)
    assert len(particle_diameters(np.full((64, 64), 100, np.uint8))) == 0


def test_blank_tile_reads_nan():
    r = measure_tile(np.full((64, 64), 100, np.uint8))
    assert all(np.isnan(r[a]) for a in ATTRIBUTES) and r["n_particles"] == 0


def test_scale_of_the_pixel_values_does_not_matter(tiny_study):
    tiles, _ = load_tiles(tiny_study["tiles"])
    eight = measure_tiles(tiles[:8], progress=False)
    sixteen = measure_tiles(tiles[:8].astype(np.uint16) * 257, progress=False)
    np.testing.assert_allclose(eight.to_numpy(), sixteen.to_numpy(), rtol=1e-9)


# Stated tolerance: global brightness/contrast changes that do not clip move each reading by at
# most 1% (median over tiles) and 5% (95th percentile) of that reading's 5-95% spread.
@pytest.mark.parametrize("gain, offset", [(0.6, 60), (0.8, 0), (0.5, 100), (0.7, 30)])
def test_readings_hold_under_brightness_and_contrast(tiny_study, gain, offset):
    tiles, _ = load_tiles(tiny_study["tiles"])
    base = measure_tiles(tiles, progress=False)[list(ATTRIBUTES)]
    changed = np.clip(np.round(gain * tiles.astype(float) + offset), 0, 255).astype(np.uint8)
    moved = measure_tiles(changed, progress=False)[list(ATTRIBUTES)]
    spread = base.quantile(0.95) - base.quantile(0.05)
    rel = (moved - base).abs() / spread
    assert (rel.median() <= 0.01).all(), rel.median()
    assert (rel.quantile(0.95) <= 0.05).all(), rel.quantile(0.95)
