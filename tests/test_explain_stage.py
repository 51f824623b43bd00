"""The explain stage end to end on the tiny study with small untrained-but-real models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from semknobs.attributes import ATTRIBUTES
from semknobs.config import to_mapping
from semknobs.data.dataset import fit_scaler
from semknobs.data.split import SplitParams, make_splits, write_splits
from semknobs.data.tiles import load_tiles
from semknobs.meter import MeterParams, measure_tiles
from semknobs.model_folder import save_model_dir
from semknobs.models.attgan import AttGANConfig, Generator

from .conftest import MISSES, ROOT, region_miss_metrics, save_tiny_regressor


@pytest.fixture
def models(tiny_study, tmp_path):
    lots = pd.read_csv(tiny_study["lots"])
    splits = make_splits(lots, SplitParams(n_folds=2, test_lots=2))
    write_splits(tmp_path / "splits.json", splits)
    scaler = fit_scaler(tiny_study["lots"], splits.train)
    torch.manual_seed(0)
    cfg = AttGANConfig(enc_dim=8, dec_dim=8, dis_dim=8, dis_fc_dim=16)
    save_model_dir(
        tmp_path / "attgan",
        kind="attgan",
        weights={"generator": Generator(cfg)},
        config={"model": to_mapping(cfg), "scaler": scaler.to_dict(), "img_size": 64},
    )
    save_tiny_regressor(tmp_path / "regressor", scaler.to_dict(), seed=None)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["explain"].update(
        tiles_per_lot=2,
        sweep_points=3,
        pair_points=3,
        tradeoff_tiles=3,
        ig_steps=4,
        lambdas=[1.0, 10.0],
    )
    params["explain"]["counterfactual"].update(steps=5, restarts=2)
    params["explain"]["referee"].update(tiles_per_lot=3, bootstrap=50)
    params["explain"]["meter_regression"].update(min_tiles=6)  # the tiny lots have few tiles
    params["explain"]["referee"]["oracle"].update(seeds=2, n_jobs=1)
    params["synthesize"].update(n_lots=6, scans_per_lot=1, fields_y=2, fields_x=3, n_jobs=1)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    tiles, manifest = load_tiles(tiny_study["tiles"])  # the measure stage's readings
    readings = measure_tiles(tiles, MeterParams(), n_jobs=1)
    manifest[["tile", "lot", "scan", "row", "col"]].join(readings).to_csv(
        tmp_path / "measurements.csv", index=False
    )
    return tmp_path


def _attgan_metrics(root: Path, text: str | None = None) -> Path:
    """evaluate_attgan's metrics file with the region misses (or ``text``)."""
    path = root / "attgan.json"
    metrics = {"test/psnr": 23.0, **region_miss_metrics()}
    path.write_text(json.dumps(metrics) if text is None else text)
    return path


def test_an_unreadable_attgan_metrics_file_is_named_before_any_work(
    run_stage, tiny_study, models, capsys
):
    bad = _attgan_metrics(models, "{not json")
    argv = [
        "--attgan-dir", models / "attgan", "--regressor-dir", models / "regressor",
        "--tiles-dir", tiny_study["tiles"], "--lots", tiny_study["lots"],
        "--splits", models / "splits.json", "--attgan-metrics", bad,
        "--metrics", models / "explain.json", "--reports", models / "reports",
    ]  # fmt: skip
    assert run_stage("explain", *argv) == 2
    assert "attgan.json: unreadable" in capsys.readouterr().err
    assert not (models / "explain.json").exists() and not (models / "reports").exists()


def test_explain_stage_writes_metrics_tables_and_figures(run_stage, tiny_study, models):
    root = models
    status = run_stage(
        "explain",
        "--attgan-dir",
        root / "attgan",
        "--regressor-dir",
        root / "regressor",
        "--tiles-dir",
        tiny_study["tiles"],
        "--lots",
        tiny_study["lots"],
        "--splits",
        root / "splits.json",
        "--truth-dir",
        tiny_study["truth"],
        "--measurements",
        root / "measurements.csv",
        "--attgan-metrics",
        _attgan_metrics(root),
        "--metrics",
        root / "explain.json",
        "--reports",
        root / "reports",
    )
    assert status == 0
    metrics = json.loads((root / "explain.json").read_text())
    for key in (
        "recon/shift_mean_mpa",
        "recon/shift_pct_range",
        "counterfactual/success_rate",
        "counterfactual/validity_model",
        "counterfactual/validity_law",
        "regressor/rl/cosine_median",
        "oracle/se_size",
        "saliency/gradcam_similarity_after_randomisation",
    ):
        assert key in metrics, key
    explainers = ("knob_gradient", "knob_gradient_lot", "knob_gradient_gain")
    explainers += ("knob_gradient_tile_gain", "knob_gradient_crystal")
    explainers += ("counterfactual", "sensitivity")
    for explainer in (*explainers, "correlation", "linear_model"):
        for fid in ("er", "el"):
            for metric in ("cosine_median", "centred_cosine", "sign_size", "rho_facetness"):
                assert f"{explainer}/{fid}/{metric}" in metrics, (explainer, fid, metric)
            for metric in ("lot_centred_cosine",):  # NaN here: 2 test lots are too few
                assert f"{explainer}/{fid}/{metric}" in metrics, (explainer, fid, metric)
    for a in ATTRIBUTES:  # the knob gradient without the edits' background part, truth-free
        assert 0 <= metrics[f"knob_gradient_crystal/whole/sign_{a}"] <= 1
        assert metrics[f"knob_gradient_crystal/whole/share_{a}"] is not None
    assert not any(k.startswith("fidelity") for k in metrics)  # the old, weak keys are gone
    # only the held-out lots are scored: 2 test lots x 3 tiles
    assert metrics["referee/n_lots"] == 2 and metrics["referee/n_tiles"] == 6
    assert metrics["knob_gradient/er/lot_centred_cosine"] is None  # NaN, written as null
    assert "oracle/lot_centred_cosine_ceiling" in metrics
    # the meter read the edits; whether this tiny editor moves every reading depends on float
    # rounding of its training (a singular J on some CPUs: then not scored and every knob flagged)
    jacobian = pd.read_csv(root / "reports" / "measured_jacobian.csv", index_col="measured")
    assert (jacobian.to_numpy() != 0).any()
    if not np.isfinite(metrics["corrected_gradient/condition"]):
        assert all(metrics[f"corrected_gradient/flag_{a}"] == 1.0 for a in ATTRIBUTES)
    natural = pd.read_csv(root / "reports" / "meter_regression.csv")
    assert len(natural) == 6 and (natural["tiles"] >= 6).all()  # every lot, all its tiles
    assert np.isfinite(metrics["meter_regression/er/cosine_median"])
    # the signs the knob gradient and the meter regression agree on: every lot, and scored
    agreed = pd.read_csv(root / "reports" / "agreed_signs.csv")
    assert len(agreed) == 6 * len(ATTRIBUTES) and set(agreed["agreed_sign"]) <= {-1, 0, 1}
    both = np.sign(agreed["knob_gradient_gain"]) == np.sign(agreed["meter_regression"])
    assert (agreed["agreed_sign"] != 0).eq(both).all()
    assert metrics["agreed_signs/lots/coverage"] == pytest.approx(both.mean())
    by_lot = agreed.set_index(["lot", "attribute"])
    for row in natural.itertuples():  # the slopes are each lot's own meter regression
        for a in ATTRIBUTES:
            assert by_lot.loc[(row.lot, a), "meter_regression"] == pytest.approx(
                getattr(row, f"slope_{a}"), rel=1e-5
            )
    # the truth-free read: each knob's lot-averaged knob gradient over its mean meter slope
    read = pd.read_csv(root / "reports" / "knob_read.csv").set_index("attribute")
    per_tile = pd.read_csv(root / "reports" / "knob_gradient.csv")
    for a in ATTRIBUTES:
        expected = (
            per_tile.groupby("lot")[f"gradient_{a}"].mean().mean() / natural[f"slope_{a}"].mean()
        )
        assert read.loc[a, "read"] == pytest.approx(expected, rel=1e-5)
        assert metrics[f"knob_gradient/read/{a}"] == pytest.approx(expected, rel=1e-5)
        assert metrics[f"knob_gradient/read/low_{a}"] == float(expected < 0.3)
    # beside it, the editor's region misses as evaluate_attgan logged them; not stage metrics
    np.testing.assert_allclose(read["region_miss"], MISSES)
    assert read["unlike_lots"].tolist() == [True, False, False, True]
    for a in ATTRIBUTES:  # and the crystal read, as the stage's metrics carry it
        share = metrics[f"knob_gradient_crystal/whole/share_{a}"]
        assert read.loc[a, "crystal_share"] == pytest.approx(share, rel=1e-5)
        assert read.loc[a, "background_read"] == (share < 0.5)
    assert not any("region_miss" in key for key in metrics)
    gains = pd.read_csv(root / "reports" / "knob_gradient.csv").groupby("lot").first()
    for lot, row in gains.iterrows():  # ... and the knob gradient each lot's gain-corrected one
        for a in ATTRIBUTES:
            assert by_lot.loc[(lot, a), "knob_gradient_gain"] == pytest.approx(
                row[f"gain_gradient_{a}"], rel=1e-5
            )
    # the held-out score, recomputed by hand from the referee's per-tile table: one entry per lot
    scored = pd.read_csv(root / "reports" / "referee_tiles.csv")
    by = scored.groupby("lot")
    cols = lambda kind: [f"{kind}_{a}" for a in ATTRIBUTES]  # noqa: E731
    oracle = by[cols("oracle")].mean().to_numpy()
    se = np.sqrt((scored[cols("oracle_se")] ** 2).groupby(scored["lot"]).sum().to_numpy())
    known = np.abs(oracle) > 2 * se / by.size().to_numpy()[:, None]
    kgg = np.sign(by[cols("knob_gradient_gain")].first().to_numpy())
    mr = np.sign(by[cols("meter_regression")].first().to_numpy())
    agree = (kgg == mr) & known
    assert metrics["agreed_signs/er/entries"] == known.sum() <= 2 * len(ATTRIBUTES)
    if known.any():
        assert metrics["agreed_signs/er/coverage"] == pytest.approx(agree.sum() / known.sum())
    assert 0 <= metrics["agreed_signs/er/coverage"] <= 1
    assert "agreed_signs/er/errors_flagged" in metrics
    assert {f"agreed_signs/er/sign_{a}" for a in ATTRIBUTES} <= set(metrics)
    # a constant explainer scores 0 across tiles, whatever its plain cosine
    assert metrics["correlation/er/centred_cosine"] == 0.0
    assert metrics["linear_model/er/centred_cosine"] == 0.0
    assert metrics["saliency/gradcam_map_px"] > 2  # GradCAM maps finer than 2x2
    reports = root / "reports"
    table = pd.read_csv(reports / "counterfactual.csv")
    assert len(table) == 4 * 2 + 2 * 3  # 2 tiles per training lot, 3 per test lot
    assert {"higher_delta_size", "lower_success"} <= set(table.columns)
    for name in (
        "figure3.png",
        "sensitivity_curves.png",
        "lot_deltas.png",
        "tradeoff.png",
        "saliency.png",
        "sweep_strip.png",
        "sensitivity_size_porosity.png",
        "plots/sensitivity_size.csv",
        "fidelity.png",
        "fidelity.csv",
        "knob_gradient_vs_oracle.png",
        "referee_tiles.csv",
        "validity.csv",
        "knob_gradient.csv",
        "knob_checks.png",
    ):
        assert (reports / name).exists(), name
    assert np.isfinite(metrics["knob_gradient/er/cosine_median"])
    knob = pd.read_csv(reports / "knob_gradient.csv", dtype={"lot": str})
    lot_cols = [f"lot_gradient_{a}" for a in ATTRIBUTES]
    means = knob.groupby("lot")[[f"gradient_{a}" for a in ATTRIBUTES]].transform("mean")
    np.testing.assert_allclose(knob[lot_cols].to_numpy(), means.to_numpy(), rtol=1e-4, atol=1e-6)
    gain = knob[[f"gain_gradient_{a}" for a in ATTRIBUTES]]  # one value per lot, same signs
    assert (gain.groupby(knob["lot"]).nunique() == 1).all(axis=None)
    assert (np.sign(gain.to_numpy()) == np.sign(knob[lot_cols].to_numpy())).all()
    fid = pd.read_csv(reports / "fidelity.csv")
    finite = fid.dropna(subset=["low", "high"])
    assert len(finite) > 0 and (finite["low"] <= finite["high"]).all()
