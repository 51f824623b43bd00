"""The oracle referee renders real interventions with the study's renderer and tiling code:
a response it knows (the meter's own porosity reading) comes out with the right sign beyond its
noise, a regressor that ignores the image has a zero gradient, and renders are reproducible."""

from __future__ import annotations

import numpy as np
import pytest

from semknobs.data.synth import SynthParams
from semknobs.data.tiles import TileParams
from semknobs.errors import ParamsError
from semknobs.evaluation.oracle import Oracle, OracleParams
from semknobs.meter import measure_tiles

STUDY, TILING = SynthParams(), TileParams(n_jobs=1)
TRUTH = np.array([[0.5, 0.3, 0.5, 0.5], [0.2, 0.6, 0.4, 0.7]])


def porosity_reading(tiles: np.ndarray) -> np.ndarray:
    return measure_tiles(tiles, progress=False)["porosity"].fillna(0).to_numpy()


def test_a_known_response_is_recovered_with_its_sign_beyond_the_noise():
    params = OracleParams(seeds=3, step=0.15, n_jobs=1)
    with Oracle(STUDY, TILING, porosity_reading, params, progress=False) as oracle:
        g = oracle.gradient(TRUTH, ids=[0, 1])
    assert g.gradient.shape == g.se.shape == (2, 4) and g.per_seed.shape == (2, 4, 3)
    first, second = g.halves()  # seeds 1 and 2-3: the split-half reliability's two halves
    np.testing.assert_allclose(first, g.per_seed[..., 0])
    np.testing.assert_allclose((first + 2 * second) / 3, g.gradient)
    assert np.all(g.gradient[:, 1] > 3 * g.se[:, 1])  # more pores -> higher porosity reading
    assert oracle.renders == 2 * 4 * 2 * 3


def test_a_regressor_that_ignores_the_image_has_zero_gradient_and_zero_effect():
    params = OracleParams(seeds=2, n_jobs=1)
    flat = lambda tiles: np.full(len(tiles), 42.0)  # noqa: E731
    with Oracle(STUDY, TILING, flat, params, progress=False) as oracle:
        g = oracle.gradient(TRUTH[:1], ids=[7])
        effect, se = oracle.effect(TRUTH[:1], TRUTH[:1] + 0.2, ids=[7])
    assert np.all(g.gradient == 0) and np.all(g.se == 0)
    assert effect[0] == 0 and se[0] == 0


def test_renders_depend_only_on_the_tile_id_not_on_the_batch_or_the_processes():
    truth = np.array([[0.0, 0.5, 0.5, 1.0], [0.5, 0.3, 0.5, 0.5]])  # at the bounds: one-sided
    mean = lambda tiles: tiles.reshape(len(tiles), -1).mean(axis=1)  # noqa: E731
    one = OracleParams(seeds=2, n_jobs=1)
    with Oracle(STUDY, TILING, mean, one, progress=False) as oracle:
        both = oracle.gradient(truth, ids=[3, 9]).gradient
        alone = oracle.gradient(truth[1:], ids=[9]).gradient
    with Oracle(STUDY, TILING, mean, OracleParams(seeds=2, n_jobs=2), progress=False) as oracle:
        pooled = oracle.gradient(truth, ids=[3, 9]).gradient
    np.testing.assert_array_equal(both[1], alone[0])
    np.testing.assert_array_equal(both, pooled)
    assert np.all(np.isfinite(both))


def test_renders_go_through_the_pipeline_tiling():
    with Oracle(STUDY, TILING, None, OracleParams(n_jobs=1), progress=False) as oracle:
        tiles = oracle.render(TRUTH, [(0,), (1,)], "test")
    assert tiles.shape == (2, 4, TILING.out_px, TILING.out_px) and tiles.dtype == np.uint8
    assert tiles.std() > 10  # real micrographs, not blank


def test_bad_oracle_settings_are_refused():
    with pytest.raises(ValueError, match="seeds"):
        OracleParams(seeds=1)
    with pytest.raises(ParamsError, match="smaller than one"):
        Oracle(STUDY, TileParams(tile_px=512, out_px=64), None, OracleParams(fields=(1, 1)))
