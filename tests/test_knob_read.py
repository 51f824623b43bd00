"""The truth-free read of the knobs (semknobs.explain.knob_read): known answers on tiny tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from semknobs.attributes import ATTRIBUTES
from semknobs.explain.knob_read import (
    KnobReadParams,
    from_metrics,
    from_reports,
    knob_read,
    read_metrics,
)

A = list(ATTRIBUTES)
SLOPES = np.array([[-12.0, -20.0, 4.0, 6.0], [-8.0, -16.0, 2.0, 2.0], [-10.0, -18.0, 3.0, 4.0]])


def tables(gradient_per_lot: np.ndarray, tiles_per_lot: int = 3, seed: int = 0):
    """Per-tile knob gradients whose lot means are ``gradient_per_lot`` (tile noise that
    cancels within each lot) and a meter-regression table with the first rows of :data:`SLOPES`."""
    rng = np.random.default_rng(seed)
    lots = [f"L{i}" for i in range(len(gradient_per_lot))]
    rows = []
    for lot, mean in zip(lots, gradient_per_lot):
        noise = rng.normal(size=(tiles_per_lot, len(A)))
        for g in mean + noise - noise.mean(axis=0):
            rows.append({"lot": lot, **{f"gradient_{a}": v for a, v in zip(A, g)}})
    own = SLOPES[: len(lots)]
    slopes = pd.DataFrame({"lot": lots, **{f"slope_{a}": own[:, k] for k, a in enumerate(A)}})
    return pd.DataFrame(rows), slopes


@pytest.mark.parametrize(
    ("scale", "low"), [(1.0, False), (-1.0, True), (0.0, True), (0.5, False), (0.2, True)]
)
def test_read_is_the_ratio_of_means(scale: float, low: bool) -> None:
    # edits read like the real variation: 1; its negation: -1; ignored: 0
    gradients, slopes = tables(scale * SLOPES)
    table = knob_read(gradients, slopes).set_index("attribute")
    assert table["read"].to_numpy() == pytest.approx(np.full(len(A), scale), abs=1e-9)
    assert (table["low"] == low).all()
    assert (table["lots"] == len(SLOPES)).all()
    metrics = read_metrics(table.reset_index())
    assert metrics[f"knob_gradient/read/{A[0]}"] == pytest.approx(scale, abs=1e-9)
    assert metrics[f"knob_gradient/read/low_{A[0]}"] == float(low)


def test_every_lot_counts_once() -> None:
    # a lot with many tiles weighs no more than one with few
    gradients, slopes = tables(SLOPES)
    extra, _ = tables(SLOPES[:1], tiles_per_lot=30, seed=1)
    both = pd.concat([gradients[gradients["lot"] != "L0"], extra])
    read = knob_read(both, slopes)["read"].to_numpy()
    assert read == pytest.approx(np.ones(len(A)))


def test_lots_without_slopes_are_skipped_and_none_is_low() -> None:
    # a lot the meter could not regress leaves both means, whatever its knob gradient
    gradients, slopes = tables(SLOPES)
    slopes.loc[0, [f"slope_{a}" for a in A]] = np.nan
    gradients.loc[gradients["lot"] == "L0", [f"gradient_{a}" for a in A]] = 1e3
    table = knob_read(gradients, slopes)
    assert (table["lots"] == 2).all()
    assert table["read"].to_numpy() == pytest.approx(np.ones(len(A)))
    slopes[[f"slope_{a}" for a in A]] = np.nan
    table = knob_read(gradients, slopes)
    assert table["read"].isna().all() and table["low"].all()


def test_threshold_and_bad_input() -> None:
    gradients, slopes = tables(0.5 * SLOPES)
    assert not knob_read(gradients, slopes, KnobReadParams(min_read=0.3))["low"].any()
    assert knob_read(gradients, slopes, KnobReadParams(min_read=0.6))["low"].all()
    with pytest.raises(ValueError, match="min_read"):
        KnobReadParams(min_read=float("nan"))
    with pytest.raises(ValueError, match="missing columns.*gradient_size"):
        knob_read(gradients.drop(columns="gradient_size"), slopes)
    with pytest.raises(ValueError, match="missing columns.*slope_facetness"):
        knob_read(gradients, slopes.drop(columns="slope_facetness"))
    with pytest.raises(ValueError, match="missing columns.*'lot'"):
        knob_read(gradients, slopes.drop(columns="lot"))


def test_from_reports_reads_the_explain_outputs(tmp_path) -> None:
    gradients, slopes = tables(0.5 * SLOPES)
    gradients.to_csv(tmp_path / "knob_gradient.csv", index=False)
    slopes.to_csv(tmp_path / "meter_regression.csv", index=False)
    table = from_reports(tmp_path)
    assert table["read"].to_numpy() == pytest.approx(np.full(len(A), 0.5))
    (tmp_path / "meter_regression.csv").unlink()
    with pytest.raises(FileNotFoundError, match="meter_regression.csv"):
        from_reports(tmp_path)


def test_from_metrics_gives_back_what_read_metrics_logged() -> None:
    """A bundle keeps its explain run's metrics: the read comes back from them, low flags and
    NaN included; a run that logged no read gives None."""
    table = pd.DataFrame(
        {
            "attribute": list(ATTRIBUTES),
            "read": [0.73, 1.99, float("nan"), -0.30],
            "low": [False, False, True, True],
        }
    )
    back = from_metrics(read_metrics(table))
    assert list(back) == list(ATTRIBUTES)
    for r in table.itertuples():
        np.testing.assert_equal(back[r.attribute]["read"], r.read)
        assert back[r.attribute]["low"] is r.low
    assert from_metrics({}) is None
    stored = read_metrics(table) | {"knob_gradient/read/dispersity": None}  # NaN as JSON null
    assert np.isnan(from_metrics(stored)["dispersity"]["read"])
    for key in read_metrics(table):  # a read without its flag, or a flag without its read
        assert from_metrics({k: v for k, v in read_metrics(table).items() if k != key}) is None
