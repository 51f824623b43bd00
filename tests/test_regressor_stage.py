"""The train_regressor stage for real on the tiny study: metrics with baselines, reports, a
logged model that loads in a fresh process and reproduces the logged predictions (registering
and aliases are the register stage's, see test_lifecycle.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
import yaml

from semknobs.attributes import ATTRIBUTES
from semknobs.data.split import SplitParams, make_splits, write_splits
from semknobs.data.tiles import load_tiles
from semknobs.errors import DataError
from semknobs.evaluation.regressor import regression_metrics, rf_baseline
from semknobs.meter import COUNT, MeterParams, measure_tiles, read_measurements
from semknobs.train.regressor import BaselineParams

from .conftest import ROOT

SECTION = {
    "train": {
        "epochs": 3,
        "batch_size": 8,
        "lr": 0.003,
        "device": "cpu",
        "threads": 1,
        "model": {"preset": "tiny"},
    },
    "baseline": {"n_estimators": 20, "min_samples_leaf": 2},
}

# Runs in a fresh interpreter: the logged model (models:/<model id>), through registry and pyfunc.
FRESH = textwrap.dedent(
    """
    import sys
    import mlflow
    import numpy as np
    import pandas as pd
    from semknobs.serving import regressor_model
    from semknobs.models.regressor import predict

    tiles_path, out, uri, run_id = sys.argv[1:]
    model, config = regressor_model.load(uri)  # checks the folder's kind
    csv = mlflow.artifacts.download_artifacts(
        run_id=run_id, artifact_path="reports/test_predictions.csv"
    )
    logged = pd.read_csv(csv)
    tiles = np.load(tiles_path)
    direct = predict(model, tiles)
    served = mlflow.pyfunc.load_model(uri).predict(tiles)
    np.savez(out, direct=direct, served=served, logged=logged["pred"].to_numpy(),
             training=model.training, mean=config.target.mean)
    """
)


@pytest.fixture
def stage_inputs(tiny_study, tmp_path):
    lots = pd.read_csv(tiny_study["lots"])
    splits = make_splits(lots, SplitParams(n_folds=2, test_lots=2))
    write_splits(tmp_path / "splits.json", splits)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["train_regressor"] = SECTION
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    (tmp_path / "tuned.yaml").write_text("# header\n{}\n")
    tiles, manifest = load_tiles(tiny_study["tiles"])
    readings = measure_tiles(tiles, MeterParams(), n_jobs=1)
    table = manifest[["tile", "lot", "scan", "row", "col"]].join(readings)
    table.to_csv(tmp_path / "measurements.csv", index=False)
    return tmp_path


def _argv(study, root):
    return [
        "--tuned", root / "tuned.yaml",
        "--tiles-dir", study["tiles"],
        "--lots", study["lots"],
        "--splits", root / "splits.json",
        "--measurements", root / "measurements.csv",
        "--checkpoint-dir", root / "ck",
        "--model-dir", root / "model",
        "--metrics", root / "regressor.json",
        "--reports", root / "reports",
    ]  # fmt: skip


@pytest.mark.slow
def test_stage_registers_a_model_that_reproduces_its_test_predictions(
    tiny_study, stage_inputs, run_stage, mlflow_tmp
):
    root = stage_inputs
    assert run_stage("train_regressor", *_argv(tiny_study, root)) == 0

    metrics = json.loads((root / "regressor.json").read_text())
    for prefix in ("test", "baseline_mean", "baseline_rf"):
        for key in ("tile_rmse", "tile_mape", "lot_rmse", "lot_mape", "lot_r2"):
            assert f"{prefix}/{key}" in metrics, f"{prefix}/{key}"
    assert metrics["train/epochs"] == 3
    report = pd.read_csv(root / "reports" / "test_predictions.csv")
    splits = json.loads((root / "splits.json").read_text())
    assert sorted(report["lot"].unique()) == sorted(splits["test"])
    assert {"tile", "true", "pred", "pred_rf", "pred_mean"} <= set(report.columns)
    assert (root / "reports" / "pred_vs_true.png").exists()
    config = json.loads((root / "model" / "config.json").read_text())
    assert config["kind"] == "regressor" and config["model"]["preset"] == "tiny"
    assert set(config["train_lots"]).isdisjoint(splits["test"])
    assert {"mean", "std"} == set(config["target"]) and set(config["scaler"]) == {
        "size",
        "porosity",
        "dispersity",
        "facetness",
    }
    # the metrics file agrees with the per-tile report
    again = regression_metrics("test", report["lot"], report["true"], report["pred"])
    assert again["test/lot_rmse"] == pytest.approx(metrics["test/lot_rmse"], rel=1e-5)

    tiles, manifest = load_tiles(tiny_study["tiles"])
    order = manifest.set_index("tile").index.get_indexer(report["tile"])
    np.save(root / "test_tiles.npy", tiles[order])
    from semknobs import registry, tracking

    logged = registry.find_logged(root / "model", tracking.ensure_experiment()).to_dict()
    assert logged["model_uri"] == f"models:/{logged['model_id']}"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            FRESH,
            str(root / "test_tiles.npy"),
            str(root / "probe.npz"),
            logged["model_uri"],
            logged["run_id"],
        ],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    probe = np.load(root / "probe.npz")
    assert not bool(probe["training"])
    assert float(probe["mean"]) == pytest.approx(config["target"]["mean"])
    np.testing.assert_allclose(probe["direct"], probe["logged"], rtol=0, atol=1e-4)
    np.testing.assert_allclose(probe["served"], probe["logged"], rtol=0, atol=1e-3)
    assert probe["served"].dtype == np.float32


def test_rf_baseline_imputes_missing_readings_from_training_tiles():
    rng = np.random.default_rng(0)
    x = pd.DataFrame(rng.random((60, 4)), columns=["size", "porosity", "dispersity", "facetness"])
    y = 10 * x["size"].to_numpy() + 40
    x.iloc[::7, 2] = np.nan
    test = x.iloc[:5].copy()
    test.iloc[0] = np.nan  # a tile the meter could not read at all still gets a prediction
    pred = rf_baseline(x, y, test, BaselineParams(n_estimators=10, seed=0))
    assert np.isfinite(pred).all() and pred.shape == (5,)
    again = rf_baseline(x, y, test, BaselineParams(n_estimators=10, seed=0))
    np.testing.assert_array_equal(pred, again)  # seeded
    x["porosity"] = np.nan
    with pytest.raises(DataError, match="porosity"):
        rf_baseline(x, y, test, BaselineParams(n_estimators=10))


def test_metrics_use_the_mean_of_a_lots_tiles():
    lots = np.array(["A", "A", "B", "B"])
    true = np.array([40.0, 40.0, 60.0, 60.0])
    pred = np.array([38.0, 44.0, 57.0, 59.0])  # lot means 41 and 58
    m = regression_metrics("test", lots, true, pred)
    assert m["test/lot_rmse"] == pytest.approx(np.sqrt((1 + 4) / 2))
    assert m["test/lot_r2"] == pytest.approx(1 - 5 / 200)
    assert m["test/tile_rmse"] == pytest.approx(np.sqrt((4 + 16 + 9 + 1) / 4))
    assert m["test/lot_mape"] == pytest.approx(100 * (1 / 40 + 2 / 60) / 2)


def test_missing_meter_readings_name_the_lots(tmp_path):
    (tmp_path / "m.csv").write_text("tile,lot,size,porosity,dispersity,facetness\n0,L1,1,1,1,1\n")
    tiles = pd.DataFrame({"tile": [0, 1], "lot": ["L1", "L2"]})
    with pytest.raises(DataError, match=r"m\.csv: no readings for 1 tile\(s\) of lots \['L2'\]"):
        read_measurements(str(tmp_path / "m.csv"), tiles)
    # a count-reading AttGAN asks for the meter's particle count too: its absence names it
    with pytest.raises(DataError, match=r"m\.csv: lacks column\(s\) \['n_particles'\]"):
        read_measurements(str(tmp_path / "m.csv"), tiles, [*ATTRIBUTES, COUNT])
