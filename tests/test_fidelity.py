"""Fidelity metrics with known answers: a perfect explainer scores 1, its negation -1, a
constant one 0 on the across-tile and centred metrics (although it passes the plain cosine)."""

from __future__ import annotations

import numpy as np
import pytest

from semknobs.attributes import ATTRIBUTES
from semknobs.data.law import StressLaw
from semknobs.evaluation import fidelity

ACROSS = ["centred_cosine", "lot_centred_cosine", *(f"rho_{a}" for a in ATTRIBUTES)]


@pytest.fixture(scope="module")
def reference():
    """The default law's gradient at 60 tiles of 6 lots (lot values + tile scatter)."""
    rng = np.random.default_rng(0)
    lots = rng.uniform(0.05, 0.95, (6, 4))
    truth = np.clip(np.repeat(lots, 10, axis=0) + 0.04 * rng.standard_normal((60, 4)), 0, 1)
    return StressLaw().gradient(truth), np.repeat(np.arange(6), 10)


def test_perfect_explainer_scores_one(reference):
    g, lots = reference
    s = fidelity.scores(3.0 * g, g, groups=lots)
    assert all(s[m] == pytest.approx(1.0) for m in ["cosine_median", *ACROSS])
    assert all(s[f"sign_{a}"] == 1.0 for a in ATTRIBUTES)


def test_negated_explainer_scores_minus_one(reference):
    g, lots = reference
    s = fidelity.scores(-g, g, groups=lots)
    assert all(s[m] == pytest.approx(-1.0) for m in ["cosine_median", *ACROSS])
    assert all(s[f"sign_{a}"] == 0.0 for a in ATTRIBUTES)


def test_constant_explainer_scores_zero_across_tiles_but_passes_the_plain_cosine(reference):
    g, lots = reference
    constant = g.mean(axis=0)  # the study-mean gradient: the best a constant vector can do
    s = fidelity.scores(constant, g, groups=lots)
    assert s["cosine_median"] > 0.9  # why the plain cosine alone is no metric
    assert all(s[m] == 0.0 for m in ACROSS)


def test_a_noisy_explainer_lands_in_between(reference):
    g, _ = reference
    noisy = g + np.random.default_rng(1).normal(0, 1, g.shape) * g.std(axis=0)
    s = fidelity.scores(noisy, g)
    assert 0.2 < s["centred_cosine"] < 0.95 and 0.2 < s["rho_size"] < 0.95


def test_lot_level_follows_the_lot_means_and_needs_three_lots(reference):
    g, lots = reference
    lot_means = np.stack([g[lots == k].mean(axis=0) for k in range(6)])
    s = fidelity.scores(lot_means[lots], g, groups=lots)  # no tile detail
    assert s["lot_centred_cosine"] == pytest.approx(1.0)
    assert s["centred_cosine"] < 0.999  # the within-lot part is missed at tile level
    rotated = lot_means[np.roll(np.arange(6), 1)][lots]  # each lot told another lot's answer
    assert fidelity.scores(rotated, g, groups=lots)["lot_centred_cosine"] < 0.5
    assert np.isnan(fidelity.scores(g, g)["lot_centred_cosine"])  # no lots given
    two = lots < 2
    assert np.isnan(fidelity.lot_centred_cosine(g[two], g[two], lots[two]))


def test_sign_accuracy_counts_only_known_references():
    ref = np.array([[1.0, -1.0, 0.0, 2.0], [1.0, -2.0, 0.0, -2.0], [2.0, -1.0, 0.0, 2.0]])
    expl = np.array([[1.0, 1.0, 5.0, 1.0], [1.0, -1.0, -5.0, 1.0], [1.0, -1.0, 5.0, 1.0]])
    s = fidelity.scores(expl, ref)
    assert s["sign_size"] == 1.0
    assert s["sign_porosity"] == pytest.approx(2 / 3)
    assert np.isnan(s["sign_dispersity"])  # the reference has no sign: not scored
    known = np.ones_like(ref, dtype=bool)
    known[2, 3] = False
    assert fidelity.scores(expl, ref, known)["sign_facetness"] == 0.5
    assert np.isnan(s["rho_dispersity"])  # a constant reference has no ranking to follow


def test_intervals_cover_the_point_and_are_degenerate_for_a_perfect_explainer(reference):
    g, lots = reference
    perfect = fidelity.scores_with_ci(g, g, lots, n_boot=200).set_index("metric")
    assert np.allclose(perfect.loc["centred_cosine", ["low", "high"]], 1.0)
    noisy = g + np.random.default_rng(2).normal(0, 1, g.shape) * g.std(axis=0)
    table = fidelity.scores_with_ci(noisy, g, lots, n_boot=300).set_index("metric")
    assert np.allclose(perfect.loc["lot_centred_cosine", ["low", "high"]], 1.0)
    for m in ["cosine_median", "centred_cosine", "lot_centred_cosine", "rho_size"]:
        low, value, high = table.loc[m, ["low", "value", "high"]]
        assert low <= value <= high and high - low > 0.01, m


def test_split_half_per_attribute_rho_finds_structure_only_where_the_halves_share_it(reference):
    g, lots = reference
    rng = np.random.default_rng(1)
    first, second = g + 0.01 * rng.standard_normal(g.shape), g + 0.01 * rng.standard_normal(g.shape)
    first[:, 2], second[:, 2] = rng.standard_normal((2, len(g)))  # dispersity: noise only
    s = fidelity.split_half(first, second, lots)
    assert s["split_half_rho_size"] > 0.9 and s["split_half_rho_porosity"] > 0.9
    assert abs(s["split_half_rho_dispersity"]) < 0.3
    assert s["split_half_rho_facetness"] > 0.9


def test_rank_correlation_edge_cases():
    x = np.arange(5.0)
    assert fidelity.rank_correlation(x, x) == pytest.approx(1.0)
    assert fidelity.rank_correlation(np.ones(5), x) == 0.0
    assert np.isnan(fidelity.rank_correlation(x, np.ones(5)))
    assert np.isnan(fidelity.rank_correlation(x[:2], x[:2]))


def test_sign_agreement_known_answers(reference):
    """Two explainers' common signs: two perfect ones 1 / 1, two negated ones coverage 1 /
    accuracy 0 / no error flagged, a perfect and a negated one commit nowhere and flag every
    error; undetermined entries lower the coverage, not the accuracy."""
    g, _ = reference
    known = np.abs(g) > 0
    perfect = fidelity.sign_agreement(2 * g, g, g, known)
    assert perfect["coverage"] == 1.0 and perfect["sign_accuracy"] == 1.0
    assert np.isnan(perfect["errors_flagged"])  # nothing is wrong
    negated = fidelity.sign_agreement(-g, -3 * g, g, known)
    assert negated["coverage"] == 1.0 and negated["sign_accuracy"] == 0.0
    assert negated["errors_flagged"] == 0.0
    split = fidelity.sign_agreement(g, -g, g, known)
    assert split["coverage"] == 0.0 and np.isnan(split["sign_accuracy"])
    assert split["errors_flagged"] == 1.0
    # the second is wrong on every other tile: those are undetermined, the rest are right
    second = g.copy()
    second[::2] *= -1
    s = fidelity.sign_agreement(g, second, g, known)
    assert s["coverage"] == pytest.approx(0.5, abs=0.05) and s["sign_accuracy"] == 1.0
    assert s["errors_flagged"] == 1.0
    assert all(s[f"sign_{a}"] == 1.0 for a in ATTRIBUTES)
    # a constant with the right signs is as accurate, and flags nothing: 0 of its errors
    ref = np.array([[1.0, -1.0, 1.0, 1.0], [1.0, -1.0, -1.0, 1.0]])
    constant = np.array([[2.0, -1.0, 1.0, 3.0]] * 2)
    c = fidelity.sign_agreement(constant, constant, ref, np.ones_like(ref, bool))
    assert (c["coverage"], c["sign_accuracy"], c["errors_flagged"]) == (1.0, 7 / 8, 0.0)
    # a missing value is undetermined, not a wrong sign
    missing = second.copy()
    missing[:] = np.nan
    m = fidelity.sign_agreement(g, missing, g, known)
    assert m["coverage"] == 0.0 and np.isnan(m["errors_flagged"])
    # one wrong, the other missing: undetermined, and it is the wrong one's error that is flagged
    wrong_and_missing = fidelity.sign_agreement(-g, np.full_like(g, np.nan), g, known)
    assert wrong_and_missing["coverage"] == 0.0 and wrong_and_missing["errors_flagged"] == 1.0
    with pytest.raises(ValueError, match="must all be"):
        fidelity.sign_agreement(g, g, g[:, :3], known[:, :3])
    unknown = fidelity.sign_agreement(-g, -g, g, np.zeros_like(known))
    assert np.isnan(unknown["coverage"]) and np.isnan(unknown["sign_accuracy"])
