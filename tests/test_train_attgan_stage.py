"""The train_attgan stage for real on tiny data: kill -9 mid-run, rerun, it resumes and finishes;
the registered model loads by alias in a fresh process; unchanged attributes give a close copy."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from semknobs.data.tiles import load_tiles
from semknobs.errors import ParamsError
from semknobs.models.attgan import AttGANConfig
from semknobs.stage import StageContext
from semknobs.stages import evaluate_attgan
from semknobs.stages import train_attgan as train_attgan_stage
from semknobs.train.attgan import train_attgan
from semknobs.train.attgan_params import AttGANTrainParams

from .conftest import ROOT, TINY_MODEL, save_tiny_regressor


def _args(study, root) -> dict[str, Path]:
    return {
        "params": root / "params.yaml",
        "tuned": root / "tuned.yaml",
        "tiles-dir": study["tiles"],
        "lots": study["lots"],
        "splits": root / "splits.json",
        "measurements": root / "measurements.csv",
        "regressor-dir": root / "regressor",
        "checkpoint-dir": root / "ck",
        "model-dir": root / "model",
        "metrics": root / "attgan.json",
        "reports": root / "reports",
    }


def _command(study, root):
    args = _args(study, root)
    script = ROOT / "pipelines" / "train_attgan.py"
    return [sys.executable, str(script)] + [x for k, v in args.items() for x in (f"--{k}", str(v))]


def _env(root):
    env = dict(
        os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{root / 'mlflow.db'}", PYTHONUNBUFFERED="1"
    )
    env["SEMKNOBS_EXECUTION_ID"] = "pytest-attgan"
    return env


@pytest.mark.slow
def test_kill_9_then_rerun_resumes_and_finishes(tiny_study, stage_inputs):
    root = stage_inputs
    proc = subprocess.Popen(
        _command(tiny_study, root),
        env=_env(root),
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.time() + 300
    state = root / "ck" / "state.json"
    while time.time() < deadline:
        if state.exists() and json.loads(state.read_text())["meta"]["step"] >= 10:
            break
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed = json.loads(state.read_text())["meta"]
    killed_at = killed["step"]
    assert 10 <= killed_at < 60 and not (root / "attgan.json").exists()

    rerun = subprocess.run(
        _command(tiny_study, root),
        env=_env(root),
        cwd=root,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"resuming from {root / 'ck'} at step {killed_at}" in rerun.stdout
    metrics = json.loads((root / "attgan.json").read_text())
    assert metrics["train/steps"] == 60
    # the killed run's seconds count too: training time is over all runs behind the model (a
    # timing: the run's MLflow metric, never in the metrics file)
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("semknobs").experiment_id
    (last,) = client.search_runs(
        [experiment], order_by=["attributes.start_time DESC"], max_results=1
    )
    assert "train/wall_s" not in metrics
    assert last.data.metrics["train/wall_s"] > killed["train_seconds"] > 0
    assert (root / "reports" / "samples.png").exists()

    # the evaluate_attgan stage measures the resumed model on the test lots
    evaluated = evaluate_attgan.run(
        evaluate_attgan.Params(n_tiles=8, points=3),
        evaluate_attgan.Paths(
            attgan_dir=root / "model",
            tiles_dir=tiny_study["tiles"],
            lots=tiny_study["lots"],
            splits=root / "splits.json",
            metrics=root / "evaluated.json",
            reports=root / "evaluation",
        ),
    )
    for key in (
        "test/psnr",
        "test/ssim",
        "control/spearman_size",
        "control/slope_size",
        "control/max_leakage",
        "realism/w1_porosity",
    ):
        assert key in evaluated.metrics
    assert json.loads((root / "evaluated.json").read_text())["test/psnr"] > 0
    assert (root / "evaluation" / "control.png").exists()
    config = json.loads((root / "model" / "config.json").read_text())
    assert config["kind"] == "attgan" and set(config["train_lots"]).isdisjoint(
        json.loads((root / "splits.json").read_text())["test"]
    )

    # the logged model (found by its folder, as `register` finds it) loads in a fresh process
    # and edits a tile
    from semknobs import registry

    logged = registry.find_logged(root / "model", experiment, client.tracking_uri).to_dict()
    probe = (
        "import numpy as np; from semknobs.serving.attgan_model import load; "
        "from semknobs.evaluation.samples import generate; "
        f"g, cfg = load({logged['model_uri']!r}); "
        "x = np.load('tile.npy'); a = np.full((1, 4), 0.5, np.float32); y = generate(g, x, a, a); "
        "print(y.shape, y.dtype, cfg.img_size)"
    )
    np.save(root / "tile.npy", np.load(tiny_study["tiles"] / "L01.npy")[:1])
    out = subprocess.run(
        [sys.executable, "-c", probe],
        env=_env(root),
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert "(1, 64, 64) uint8 64" in out.stdout


def test_unchanged_attributes_give_a_close_copy(tiny_study):
    """After a short training, G(I; A_I) is much closer to I than to other tiles."""
    from semknobs.evaluation.samples import generate

    tiles, _ = load_tiles(tiny_study["tiles"])
    rng = np.random.default_rng(0)
    attrs = rng.random((len(tiles), 4)).astype(np.float32)
    train_idx, test_idx = np.arange(0, len(tiles), 2), np.arange(1, len(tiles), 2)
    params = AttGANTrainParams(
        model=AttGANConfig(**TINY_MODEL),
        steps=150,
        batch_size=8,
        lr=1e-3,
        n_critic=1,
        seed=0,
        lambda_concept=0.0,
        lambda_texture=0.0,  # random per-tile attributes: no lots to fit it on
    )
    trainer = train_attgan(
        params=params,
        images=torch.from_numpy(tiles[train_idx]),
        attrs=torch.from_numpy(attrs[train_idx]),
        progress=False,
    )
    x = tiles[test_idx]
    y = generate(trainer.gen, x, attrs[test_idx], attrs[test_idx]).astype(float)
    own = np.abs(y - x).mean()
    other = np.abs(y - np.roll(x, 1, axis=0)).mean()
    assert own < 0.6 * other, (own, other)


def _paths(study, root, **overrides) -> train_attgan_stage.Paths:
    args = {k.replace("-", "_"): v for k, v in _args(study, root).items() if k != "params"}
    return train_attgan_stage.Paths(**{**args, **overrides})


@pytest.mark.parametrize("case", ["no regressor", "another tile size"])
def test_the_feature_loss_needs_a_regressor_of_the_attgans_tile_size(
    tiny_study, stage_inputs, case
):
    root = stage_inputs
    params = train_attgan_stage.load(root / "params.yaml", _paths(tiny_study, root))
    params = dataclasses.replace(
        params, train=dataclasses.replace(params.train, lambda_regressor=1.0)
    )
    if case == "no regressor":
        paths, message = _paths(tiny_study, root, regressor_dir=None), "--regressor-dir"
    else:
        other = root / "regressor32"
        save_tiny_regressor(other, img_size=32)
        paths, message = _paths(tiny_study, root, regressor_dir=other), "32-px tiles"
    with pytest.raises(ParamsError, match=message):
        train_attgan_stage.run(params, paths)
    assert not (root / "model").exists() and not (root / "ck").exists()


def test_the_texture_loss_needs_enough_training_lots(tiny_study, stage_inputs):
    """The tiny study trains on 4 lots: too few to fit 4 slopes and an intercept per statistic."""
    root = stage_inputs
    params = train_attgan_stage.load(root / "params.yaml", _paths(tiny_study, root))
    params = dataclasses.replace(
        params, train=dataclasses.replace(params.train, lambda_texture=1.0)
    )
    with pytest.raises(ParamsError, match="lambda_texture.*at least 6 .*4 in"):
        train_attgan_stage.run(params, _paths(tiny_study, root))
    assert not (root / "model").exists() and not (root / "ck").exists()


def test_the_count_read_needs_enough_training_lots(tiny_study, stage_inputs):
    """The tiny study trains on 4 lots: too few to fit the count's 4 slopes and an intercept."""
    root = stage_inputs
    params = train_attgan_stage.load(root / "params.yaml", _paths(tiny_study, root))
    assert params.train.lambda_count == 0
    params = dataclasses.replace(params, train=dataclasses.replace(params.train, lambda_count=1.0))
    with pytest.raises(ParamsError, match="lambda_count.*at least 5 .*4 in"):
        train_attgan_stage.run(params, _paths(tiny_study, root))
    assert not (root / "model").exists() and not (root / "ck").exists()


def test_the_stage_trains_with_the_feature_loss_when_it_is_on(tiny_study, stage_inputs):
    """Off by default (README: it costs knob fidelity); on, the stage reads the regressor folder,
    logs the term and the training-tile reconstruction shift, and records the weight."""
    root = stage_inputs
    params = train_attgan_stage.load(root / "params.yaml", _paths(tiny_study, root))
    assert params.train.lambda_regressor == 0
    train = dataclasses.replace(params.train, lambda_regressor=1.0, steps=10)
    logged: list[dict] = []
    ctx = StageContext(log=lambda metrics, step: logged.append(dict(metrics)))
    train_attgan_stage.run(dataclasses.replace(params, train=train), _paths(tiny_study, root), ctx)
    terms = [m["train/regressor_features"] for m in logged if "train/regressor_features" in m]
    assert len(terms) == 2 and all(np.isfinite(terms))  # log_every 5
    assert all(np.isfinite(m["train/recon_shift_mpa"]) for m in logged)
    config = json.loads((root / "model" / "config.json").read_text())
    assert config["train"]["lambda_regressor"] == 1.0
