"""The lot knob gradient that ``semknobs explain`` and the served explainer report, on known
answers: a linear editor and regressor give the exact gradient with a zero-width interval; the
gain correction divides out a lot's gain relative to the study's (within its clip), leaves weak
knobs alone and says so; the negation gives the negation; a constant gives zero."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from semknobs.attributes import ATTRIBUTES, AttributeScaler
from semknobs.explain.gradient import KnobGradientParams
from semknobs.explain.lot_gradient import (
    GradientSettings,
    lot_gradient,
    summarise_lot,
)
from semknobs.explain.measured import CorrectedParams
from semknobs.explain.natural import lot_slopes

from .conftest import MISSES, SHARES, crystal_metrics, region_miss_metrics

K = len(ATTRIBUTES)
W = torch.tensor([0.2, -0.4, 0.1, 0.3])  # the editor adds W . A to every pixel
C = 10.0  # the regressor: C * mean pixel, so dR/dA = C * W exactly


class PlaneEditor(nn.Module):
    def forward(self, x: torch.Tensor, attrs: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        return x + (attrs @ W)[:, None, None, None]


class MeanPixel(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return C * x.mean(dim=(1, 2, 3))


def _settings(**corrected) -> GradientSettings:
    return GradientSettings(
        KnobGradientParams(smoothing=0.0),
        CorrectedParams(bootstrap=200, **corrected),
        study_gain=(1.0, 0.6, 0.2, 1.0),
    )


def test_a_linear_editor_gives_the_exact_gradient_per_lot():
    torch.manual_seed(0)
    images = torch.rand(6, 1, 8, 8) * 2 - 1
    attrs = torch.full((6, K), 0.5)
    out = lot_gradient(
        PlaneEditor(), MeanPixel(), images, attrs, ["a", "a", "a", "b", "b", "b"], _settings()
    )
    assert list(out.tiles["lot"]) == ["a"] * 3 + ["b"] * 3
    for j, a in enumerate(ATTRIBUTES):
        np.testing.assert_allclose(out.tiles[f"gradient_{a}"], C * W[j].item(), rtol=1e-5)
    assert set(out.lots["lot"]) == {"a", "b"} and len(out.lots) == 2 * K
    np.testing.assert_allclose(out.lots["gradient"], np.tile(C * W.numpy(), 2), rtol=1e-5)
    # identical tiles: a zero-width interval; no meter: nothing measured or corrected, and said
    np.testing.assert_allclose(out.lots["gradient_high"] - out.lots["gradient_low"], 0, atol=1e-5)
    assert out.lots["gain"].isna().all() and (out.lots["gain_factor"] == 1).all()
    assert out.lots["corrected_flag"].all()
    assert out.lots["note"].str.contains("no meter").all()
    served = out.served_columns()
    assert len(served) == 6 and served["lot_gain_corrected_size"].iloc[0] == pytest.approx(2.0)
    with pytest.raises(ValueError, match="lot names"):
        lot_gradient(PlaneEditor(), MeanPixel(), images, attrs, ["a"], _settings())


class SquaredMean(nn.Module):
    """R = C x mean pixel^2: the knob gradient 2 C mean(G) W differs from tile to tile."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return C * x.mean(dim=(1, 2, 3)) ** 2


def test_each_row_gets_its_own_lots_values():
    """Interleaved lots with different gradients: every served row carries its lot's mean."""
    torch.manual_seed(1)
    images = torch.rand(9, 1, 8, 8) * 2 - 1
    lots = ["a", "b", "c"] * 3
    out = lot_gradient(
        PlaneEditor(), SquaredMean(), images, torch.full((9, K), 0.5), lots, _settings()
    )
    served = out.served_columns()
    for a in ATTRIBUTES:
        means = out.tiles.groupby("lot")[f"gradient_{a}"].mean()
        np.testing.assert_allclose(served[f"lot_gain_corrected_{a}"], means.loc[lots], rtol=1e-6)
        assert means.nunique() == 3  # the lots do differ, so a mix-up would show
    assert list(out.lots["lot"].unique()) == ["a", "b", "c"]


def _jacobian(lot_gain: np.ndarray, n: int, noise: float = 0.01) -> np.ndarray:
    rng = np.random.default_rng(1)
    jac = np.zeros((n, K, K))
    jac[:, range(K), range(K)] = lot_gain + rng.normal(0, noise, (n, K))
    return jac


def test_gain_correction_of_one_lot_against_the_study_gains():
    """Study gains (1, 0.6, 0.2, 1); this lot's (0.5, 0.3, 0.2, 0.1): size and porosity were
    moved half as far as in the study, so their response is doubled; dispersity's study gain is
    below gain_min (left alone, and the note says why); facetness's lot gain is below the clip
    (x0.25 of the study's), so its factor is capped at 4."""
    rng = np.random.default_rng(0)
    grad = np.array([2.0, -3.0, 1.0, 0.5]) + rng.normal(0, 0.1, (8, K))
    jac = _jacobian(np.array([0.5, 0.3, 0.2, 0.1]), 8)
    rows = summarise_lot("L1", grad, jac, _settings()).set_index("attribute")
    np.testing.assert_allclose(rows["gain_factor"], [2.0, 2.0, 1.0, 4.0], rtol=0.05)
    np.testing.assert_allclose(rows["gain_corrected"], grad.mean(0) * rows["gain_factor"])
    assert rows.loc["size", "gain_corrected_low"] < rows.loc["size", "gain_corrected"]
    assert "gain_min" in rows.loc["dispersity", "note"]
    assert "capped" in rows.loc["facetness", "note"] and not rows.loc["size", "note"]
    # J diagonal: J^-T g = g / gain with the lot's mean J; a small condition number
    expected = grad.mean(0) / np.diagonal(jac, axis1=1, axis2=2).mean(0)
    np.testing.assert_allclose(rows["corrected"], expected, rtol=1e-9)
    assert rows["condition"].iloc[0] == pytest.approx(5.0, rel=0.1)
    assert not rows.loc["size", "corrected_flag"]
    # the negation gives the negation; a constant zero response gives zero
    neg = summarise_lot("L1", -grad, jac, _settings()).set_index("attribute")
    np.testing.assert_allclose(neg["gain_corrected"], -rows["gain_corrected"])
    zero = summarise_lot("L1", np.zeros_like(grad), jac, _settings())
    assert (zero["gain_corrected"] == 0).all() and zero["note"].str.contains("spans zero").all()


def test_label_units_few_tiles_and_bad_settings():
    scaler = AttributeScaler((0.0, 0.0, 0.0, 0.0), (10.0, 4.0, 2.0, 1.0))
    grad = np.ones((4, K))
    rows = summarise_lot("L", grad, _jacobian(np.ones(K), 4), _settings(), scaler=scaler)
    # lot gains 1: porosity (study 0.6) scaled by 0.6, dispersity (study 0.2) left alone
    np.testing.assert_allclose(rows["per_label_unit"], [0.1, 0.15, 0.5, 1.0], rtol=0.05)
    # two tiles: no interval, no gain correction (one tile's gain is too noisy), all flagged
    two = summarise_lot("L", grad[:2], _jacobian(np.ones(K), 2), _settings(), scaler=scaler)
    np.testing.assert_allclose(two["per_label_unit"], [0.1, 0.25, 0.5, 1.0])
    assert two["corrected_flag"].all() and two["gradient_low"].isna().all()
    assert two["note"].str.contains("no interval").all()
    assert two["note"].str.contains("gains not measured").all()
    one = summarise_lot("L", grad[:1], _jacobian(np.ones(K), 1), _settings())
    assert one["gradient_low"].isna().all() and one["note"].str.contains("spans zero").sum() == 0
    no_study = summarise_lot("L", grad, _jacobian(np.ones(K), 4), GradientSettings(study_gain=None))
    assert (no_study["gain_factor"] == 1).all()
    assert no_study["note"].str.contains("no study gains").all()
    for bad in [(1.0, 2.0), (1.0, float("nan"), 1.0, 1.0)]:
        with pytest.raises(ValueError, match="study_gain"):
            GradientSettings(study_gain=bad)


class Stress(nn.Module):
    """A regressor with ``predict_mpa``: 40 + 10 x mean pixel."""

    def __init__(self):
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(1))  # predict() looks up the device

    def predict_mpa(self, x: torch.Tensor) -> torch.Tensor:
        return 40.0 + 10.0 * x.mean(dim=(1, 2, 3))


def test_semknobs_explain_with_a_meter_reports_gains_and_the_meter_regression(tiny_study, tmp_path):
    """A bundle with a meter: the scan's knob gradient comes with measured gains, and the meter
    regression (no AttGAN) is fitted on the scan's own tiles and drawn beside it."""
    from semknobs.explain.agreement import agreed_signs
    from semknobs.explain.bundle import KnobExplainer
    from semknobs.explain.counterfactual import CounterfactualParams
    from semknobs.explain.files import explain_paths
    from semknobs.explain.knob_read import read_metrics
    from semknobs.explain.measured import MeterCalibration
    from semknobs.explain.natural import MeterRegressionParams

    scan = sorted(tiny_study["raw"].glob("*/*"))[0]
    read = pd.DataFrame(
        {"attribute": list(ATTRIBUTES), "read": [0.7, 2.0, 2.8, -0.3], "low": [0, 0, 0, 1]}
    ).astype({"low": bool})
    explainer = KnobExplainer(
        PlaneEditor(),
        Stress(),
        scaler=AttributeScaler((0.0,) * K, (10.0,) * K),
        stress_range=20.0,
        defaults=CounterfactualParams(steps=3),
        tile={"tile_px": 128, "out_px": 64, "info_bar_px": "auto", "percentiles": [0.5, 99.5]},
        meter=MeterCalibration((1.0,) * K, (0.0,) * K),
        gradient=_settings(),
        natural=MeterRegressionParams(min_tiles=K + 2),
        metrics=read_metrics(read) | region_miss_metrics() | crystal_metrics(),  # a bundle's
    )
    (summary,) = explain_paths([scan], explainer=explainer, out_dir=tmp_path, progress=False)
    assert summary["knob_read"] == {
        r.attribute: {"read": r.read, "low": r.low} for r in read.itertuples()
    }
    assert summary["edit_texture"] == {
        a: {"region_miss": m, "unlike_lots": m > 1} for a, m in zip(ATTRIBUTES, MISSES)
    }
    assert summary["crystal_read"] == {
        a: {"crystal_share": s, "background_read": s < 0.5} for a, s in zip(ATTRIBUTES, SHARES)
    }
    assert (
        json.loads((tmp_path / f"{scan.stem}.json").read_text())["knob_read"]
        == (summary["knob_read"])
    )
    gradient, natural = summary["knob_gradient"], summary["meter_regression"]
    assert natural["tiles"] == summary["tiles"] >= K + 2
    for j, a in enumerate(ATTRIBUTES):
        assert gradient[a]["gradient"] == pytest.approx(C * W[j].item(), rel=1e-4)
        assert gradient[a]["gain"] is not None  # the meter read the edits (a plane: ~no change)
        low, slope, high = (natural[a][k] for k in ("low", "slope", "high"))
        assert low <= slope <= high
    assert (tmp_path / f"{scan.stem}_gradient.png").stat().st_size > 0
    # the sign both give, where they agree (the gain-corrected gradient and the slope)
    expected = {}
    for a in ATTRIBUTES:
        g, m = np.sign(gradient[a]["gain_corrected"]), np.sign(natural[a]["slope"])
        expected[a] = {1.0: "+", -1.0: "-"}[g] if g == m and g != 0 else "undetermined"
    assert summary["agreed_signs"] == expected
    # served: the same tiles in one request, named as one lot -> the same meter regression
    from semknobs.explain.files import read_tiles
    from semknobs.serving.explainer_model import ExplainerModel
    from semknobs.serving.tile_codec import tiles_frame

    model = ExplainerModel()
    model.explainer, model.deadline_s = explainer, 60.0
    tiles, _ = read_tiles(scan, explainer)
    rows = model.predict(None, tiles_frame(tiles).assign(lot="S1"), {"steps": 3})
    assert len(rows) == summary["tiles"] and (rows["lot"] == "S1").all()
    for a in ATTRIBUTES:
        np.testing.assert_allclose(rows[f"lot_meter_regression_slope_{a}"], natural[a]["slope"])
        words = rows[f"lot_agreed_sign_{a}"].map({1.0: "+", -1.0: "-", 0.0: "undetermined"})
        assert (words == expected[a]).all()
        np.testing.assert_allclose(rows[f"gradient_{a}"], C * W[ATTRIBUTES.index(a)].item(),
                                   rtol=1e-4)  # fmt: skip
        assert (rows[f"knob_read_{a}"] == summary["knob_read"][a]["read"]).all()
        assert (rows[f"knob_read_low_{a}"] == float(summary["knob_read"][a]["low"])).all()
        edit = summary["edit_texture"][a]
        assert (rows[f"region_miss_{a}"] == edit["region_miss"]).all()
        assert (rows[f"region_unlike_{a}"] == float(edit["unlike_lots"])).all()
        kept = summary["crystal_read"][a]
        assert (rows[f"crystal_share_{a}"] == kept["crystal_share"]).all()
        assert (rows[f"crystal_background_{a}"] == float(kept["background_read"])).all()
    bare = model.predict(None, tiles_frame(tiles), {"steps": 3, "gradient": False})
    assert (bare["knob_read_facetness"] == -0.3).all()  # stored: no gradient work needed
    assert (bare["region_unlike_size"] == 1.0).all() and (bare["region_miss_size"] == 3.1).all()
    assert (bare["crystal_background_size"] == 1.0).all()
    assert (bare["crystal_background_porosity"] == 0.0).all()
    # two interleaved lots in one request: each row gets its own lot's fit, as fitted directly
    twice = np.concatenate([tiles, tiles[::-1]])
    names = np.array(["P", "Q"] * len(tiles))
    rows = model.predict(None, tiles_frame(twice).assign(lot=names), {"steps": 3})
    direct = lot_slopes(
        rows["prediction_mpa"], explainer.meter.read(twice), names, explainer.natural
    ).table.set_index("lot")
    for a in ATTRIBUTES:
        np.testing.assert_allclose(
            rows[f"lot_meter_regression_slope_{a}"], direct.loc[names, f"slope_{a}"], rtol=1e-6
        )
    assert direct["slope_size"].nunique() == 2
    for a in ATTRIBUTES:  # each row carries its own lot's agreed sign
        expected_sign = agreed_signs(
            rows[f"lot_gain_corrected_{a}"].to_numpy(), rows[f"lot_meter_regression_slope_{a}"]
        )
        np.testing.assert_array_equal(rows[f"lot_agreed_sign_{a}"], expected_sign)
    # the pooled lot is named as given; --one-lot without the gradient is refused
    *_, lot = explain_paths(
        [scan, scan], explainer=explainer, out_dir=tmp_path / "pooled", progress=False,
        one_lot="L03.v2",
    )  # fmt: skip
    assert lot["tiles"] == 2 * summary["tiles"]
    assert (tmp_path / "pooled" / "L03.v2_lot.json").exists()
    with pytest.raises(ValueError, match="no-gradient"):
        explain_paths([scan], explainer=explainer, out_dir=tmp_path / "x", gradient=False,
                      one_lot="L", progress=False)  # fmt: skip
    with pytest.raises(ValueError, match="no tiles"):
        explainer.knob_gradient(np.zeros((0, 64, 64), np.uint8))
