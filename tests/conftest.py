"""Shared fixtures: a tiny synthetic study (real generator, shrunken params) and stage runners."""

from __future__ import annotations

import dataclasses
import os
import signal
from pathlib import Path

import numpy as np
import pytest

from semknobs.attributes import ATTRIBUTES
from semknobs.data.synth import SynthParams, synthesize
from semknobs.data.tiles import TileParams, tile_dataset

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("MPLBACKEND", "Agg")
# A test run started in the background by a script (`make test &`) inherits SIGINT ignored, and
# so would every process the interrupt tests start: they would test the launcher, not semknobs.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def save_tiny_regressor(
    folder: Path, scaler: dict | None = None, seed: int | None = 0, img_size: int = 64
) -> Path:
    """A real (untrained) tiny regressor folder, as train_regressor writes one (``seed=None``:
    initialised from torch's current random state)."""
    import torch

    from semknobs.config import to_mapping
    from semknobs.model_folder import save_model_dir
    from semknobs.models.regressor import PeakStressRegressor, RegressorConfig

    if seed is not None:
        torch.manual_seed(seed)
    cfg = RegressorConfig(preset="tiny", img_size=img_size)
    reg = PeakStressRegressor(cfg, target_mean=45.0, target_std=8.0)
    config = {"model": to_mapping(cfg), "img_size": cfg.img_size, "target": reg.target_stats}
    if scaler is not None:
        config["scaler"] = scaler
    save_model_dir(folder, kind="regressor", weights={"regressor": reg}, config=config)
    return folder


def tiny_synth_params(**overrides) -> SynthParams:
    """The real generator with the default look, shrunk: 6 lots x 1 scan x 2x3 fields."""
    base = SynthParams(n_lots=6, scans_per_lot=1, fields_y=2, fields_x=3, n_jobs=1)
    return dataclasses.replace(base, **overrides)


@pytest.fixture(scope="session")
def tiny_study(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("study")
    paths = {"raw": root / "raw", "lots": root / "lots.csv", "truth": root / "truth"}
    synthesize(
        params=tiny_synth_params(),
        raw_dir=paths["raw"],
        lots_csv=paths["lots"],
        truth_dir=paths["truth"],
        progress=False,
    )
    paths["tiles"] = root / "tiles"
    tile_dataset(
        params=TileParams(n_jobs=1), raw_dir=paths["raw"], tiles_dir=paths["tiles"], progress=False
    )
    return paths


TINY_MODEL = {"enc_dim": 8, "dec_dim": 8, "dis_dim": 8, "dis_fc_dim": 16}
# the default design (concept loss) shrunk: pre-training, and a refresh on measured edits at 20
TINY_CONCEPT = {
    "steps": 10,
    "batch_size": 16,
    "refresh_every": 20,
    "refresh_tiles": 8,
    "refresh_steps": 5,
    "pool_size": 32,
    "model": {"width": 8, "blocks": 3},
}


@pytest.fixture
def stage_inputs(tiny_study, tmp_path):
    """An AttGAN stage's inputs beside ``tiny_study``: 2 test lots and 2 folds of 2 training lots,
    the repo's params with the AttGAN shrunk, meter readings and a tiny regressor."""
    import pandas as pd
    import yaml

    from semknobs.data.split import SplitParams, make_splits, write_splits
    from semknobs.data.tiles import load_tiles
    from semknobs.meter import MeterParams, measure_tiles

    lots = pd.read_csv(tiny_study["lots"])
    splits = make_splits(lots, SplitParams(n_folds=2, test_lots=2))
    write_splits(tmp_path / "splits.json", splits)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["train_attgan"]["train"].update(steps=60, checkpoint_every=5, log_every=5, batch_size=8)
    params["train_attgan"]["train"]["model"].update(TINY_MODEL)
    params["train_attgan"]["train"]["concept"].update(TINY_CONCEPT)
    # 4 training lots: too few for the texture fit (the e2e study's 6 train with it)
    params["train_attgan"]["train"]["lambda_texture"] = 0.0
    params["train_attgan"]["sample_every"] = 30
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    (tmp_path / "tuned.yaml").write_text("{}\n")
    tiles, manifest = load_tiles(tiny_study["tiles"])  # the concept network's meter readings
    readings = measure_tiles(tiles, MeterParams(), n_jobs=1)
    manifest[["tile", "lot", "scan", "row", "col"]].join(readings).to_csv(
        tmp_path / "measurements.csv", index=False
    )
    save_tiny_regressor(tmp_path / "regressor")  # for the feature loss, when a test turns it on
    return tmp_path


@pytest.fixture
def mlflow_tmp(tmp_path, monkeypatch) -> Path:
    """A real sqlite MLflow store in a temp dir, used by stage scripts run in-process."""
    store = tmp_path / "mlruns"
    store.mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store / 'mlflow.db'}")
    monkeypatch.setenv("SEMKNOBS_EXECUTION_ID", "pytest")
    return store


@pytest.fixture(scope="module")
def store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real sqlite MLflow store per test module, configured as the project configures it
    (creating its tables takes MLflow ~10 s here), with execution id ``pytest-<module>``."""
    from semknobs import tracking

    module = request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_")
    root = tmp_path_factory.mktemp(module)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        mp.setenv("SEMKNOBS_EXECUTION_ID", f"pytest-{module}")
        mp.setattr(tracking, "_configured_uri", None)
        mp.setattr(tracking, "_default_written", None)
        mp.chdir(root)  # stage_run reads git/dvc.lock from the working directory
        tracking.configure()
        tracking.ensure_experiment()  # creates the tables (alembic migrations): the slow part
        yield root


def stage_main(name: str):
    """``main(argv) -> exit status`` of stage ``name``: the command line that
    ``pipelines/<name>.py`` runs, built from ``semknobs.stages.<name>`` (no script import)."""
    import importlib

    from semknobs.stage import stage_cli

    return stage_cli(importlib.import_module(f"semknobs.stages.{name}"))


@pytest.fixture
def run_stage(mlflow_tmp, monkeypatch, tmp_path):
    """``run_stage(name, *argv) -> exit status``, with params from ``tmp_path/params.yaml``."""

    def run(name: str, *argv: str) -> int:
        return stage_main(name)(["--params", str(tmp_path / "params.yaml"), *map(str, argv)])

    return run


def write_scan(path: Path, array: np.ndarray) -> None:
    import tifffile
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix in (".tif", ".tiff"):
        tifffile.imwrite(path, array)
    else:
        Image.fromarray(array).save(path)


MISSES = (3.1, 0.9, 0.8, 1.7)  # an editor's region misses (size and facetness past 1)


def region_miss_metrics() -> dict[str, float]:
    """``MISSES`` as evaluate_attgan logs them: ``texture/region_miss_<attribute>``."""
    return {f"texture/region_miss_{a}": m for a, m in zip(ATTRIBUTES, MISSES)}


SHARES = (0.34, 1.0, 0.78, 0.75)  # the share of each knob's read kept without its background


def crystal_metrics() -> dict[str, float]:
    """``SHARES`` as the explain stage logs them: ``knob_gradient_crystal/whole/share_<a>``."""
    return {f"knob_gradient_crystal/whole/share_{a}": s for a, s in zip(ATTRIBUTES, SHARES)}
