"""The referee on the tiny study's real truth and renderer: explanations are mapped into true
units correctly (the law's own gradient, handed over in knob units, scores a perfect `el`), a
constant explainer scores 0 across tiles, and counterfactual validity follows the law."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from semknobs.attributes import ATTRIBUTES
from semknobs.data.tiles import TileParams
from semknobs.data.truth import read_truth
from semknobs.evaluation.oracle import Oracle, OracleParams
from semknobs.evaluation.referee import (
    Counterfactuals,
    RefereeParams,
    _agreement,
    label_fit,
    referee,
    true_attributes,
)

from .conftest import tiny_synth_params


@pytest.fixture(scope="module")
def judged(tiny_study):
    truth = read_truth(tiny_study["truth"])
    manifest = pd.read_csv(tiny_study["tiles"] / "manifest.csv", dtype={"lot": str})
    tiles = manifest.groupby("lot").head(2).reset_index(drop=True)  # 12 tiles of 6 lots
    labels = pd.read_csv(tiny_study["lots"], dtype={"lot": str})
    low, high = labels[list(ATTRIBUTES)].min(), labels[list(ATTRIBUTES)].max()
    labels[list(ATTRIBUTES)] = (labels[list(ATTRIBUTES)] - low) / (high - low)
    slopes, _ = label_fit(truth.lots, labels)
    true = true_attributes(truth, tiles)
    law = truth.law.gradient(true)
    n = len(tiles)
    start = labels.set_index("lot").loc[tiles["lot"], list(ATTRIBUTES)].to_numpy()
    up = law / np.linalg.norm(law, axis=1, keepdims=True)  # steepest ascent of the law
    counterfactuals = [
        Counterfactuals("higher", start, start + 0.2 * up * slopes, np.ones(n, bool)),
        Counterfactuals("lower", start, start - 0.2 * up * slopes, np.r_[np.ones(n - 1), 0] > 0),
    ]
    study = tiny_synth_params()
    flat = lambda x: np.full(len(x), 50.0)  # noqa: E731  a regressor that ignores the image
    params = RefereeParams(oracle=OracleParams(seeds=2, n_jobs=1), bootstrap=100)
    with Oracle(study, TileParams(n_jobs=1), flat, params.oracle, progress=False) as oracle:
        out = referee(
            truth=truth,
            tiles=tiles,
            labels=labels,
            gradients={"perfect": law / slopes, "fixed": np.ones((n, 4))},
            directions={"steepest": 0.2 * up * slopes},
            counterfactuals=counterfactuals,
            oracle=oracle,
            params=params,
        )
    return out, n


def test_the_law_handed_over_in_knob_units_scores_a_perfect_el(judged):
    out, _ = judged
    m = out.metrics
    assert m["perfect/el/cosine_median"] == pytest.approx(1.0)
    assert m["perfect/el/centred_cosine"] == pytest.approx(1.0)
    assert m["perfect/el/lot_centred_cosine"] == pytest.approx(1.0)  # 6 lots
    assert m["perfect/el/sign_size"] == 1.0 and m["perfect/el/rho_porosity"] == pytest.approx(1.0)
    assert m["steepest/el/cosine_median"] > 0.95  # a displacement maps by 1/s, not by s


def test_a_constant_explainer_scores_zero_across_tiles(judged):
    m = judged[0].metrics
    assert m["fixed/el/centred_cosine"] == 0.0
    assert m["fixed/el/lot_centred_cosine"] == 0.0
    assert all(m[f"fixed/el/rho_{a}"] == 0.0 for a in ATTRIBUTES)


def test_validity_counts_converged_searches_only_and_follows_the_law(judged):
    out, n = judged
    m = out.metrics
    assert m["counterfactual/validity_n"] == 2 * n - 1
    assert m["counterfactual/validity_law"] == 1.0  # steepest ascent/descent of the law
    assert m["counterfactual/validity_model"] == 0.0  # the flat regressor never moves
    assert len(out.tables["validity"]) == 2 * n - 1


def test_the_regressor_ceiling_and_oracle_noise_are_reported(judged):
    m, tables = judged[0].metrics, judged[0].tables
    assert m["regressor/rl/cosine_median"] == 0.0  # a flat regressor follows no law
    assert m["oracle/renders"] > 0 and m["referee/n_lots"] == 6
    fid = tables["fidelity"]
    assert {"explainer", "fidelity", "metric", "value", "low", "high"} <= set(fid.columns)
    assert {"oracle_size", "oracle_se_size", "law_size", "perfect_size"} <= set(
        tables["referee_tiles"].columns
    )
    assert set(judged[0].figures) == {"fidelity.png", "knob_gradient_vs_oracle.png"}


def test_the_referee_refuses_tiles_the_truth_does_not_cover(tiny_study):
    from semknobs.errors import DataError

    truth = read_truth(tiny_study["truth"])
    other = pd.DataFrame({"lot": ["X"], "scan": ["s"], "y0": [0], "x0": [0], "tile_px": [128]})
    with pytest.raises(DataError, match="does not cover"):
        true_attributes(truth, other)


def test_agreed_signs_are_scored_once_per_lot_against_the_lots_oracle():
    """Interleaved, unsorted lots: each lot's values meet its own tiles' oracle mean; a lot
    without meter-regression slopes is undetermined, not dropped."""
    lots = np.array(["B", "A", "C", "B", "A", "C"])
    g_r = np.array([[-4.0, 2, 1, 1], [3, 2, 1, 1], [5, 5, 5, 5], [-2, 2, 1, 1], [1, 2, 1, 1],
                    [5, 5, 5, 5]])  # fmt: skip
    se = np.full_like(g_r, 0.1)
    kgg = np.where(lots[:, None] == "B", -1.0, 1.0) * np.ones((6, 4))  # lot values, every tile
    mr = kgg.copy()
    mr[lots == "A", 3] = -1.0  # A: facetness disputed
    mr[lots == "C"] = np.nan  # C: no meter regression
    slopes = np.array([2.0, 1.0, 1.0, 0.5])  # positive: signs unchanged
    m = _agreement((kgg, mr), slopes, g_r, se, lots)
    assert m["agreed_signs/er/entries"] == 12.0  # 3 lots x 4, every oracle sign known
    # A: size + porosity + dispersity + right, facetness undetermined; B: size - right,
    # porosity - wrong (oracle +), dispersity - wrong, facetness - wrong; C: undetermined
    assert m["agreed_signs/er/coverage"] == pytest.approx(7 / 12)
    assert m["agreed_signs/er/sign_accuracy"] == pytest.approx(4 / 7)
    assert m["agreed_signs/er/coverage_size"] == pytest.approx(2 / 3)
    # wrong signs: A facetness (MR), B porosity/dispersity/facetness (both) -> 1 of 4 flagged
    assert m["agreed_signs/er/errors_flagged"] == pytest.approx(1 / 4)
