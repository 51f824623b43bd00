"""tune_attgan: off by default; a clear refusal where its trials cannot train the design."""

from __future__ import annotations

import dataclasses

import pytest

from semknobs.errors import ParamsError
from semknobs.stages import tune_attgan

from .conftest import ROOT


def _paths(tmp_path):
    return tune_attgan.Paths(
        tiles_dir=tmp_path / "tiles",
        lots=tmp_path / "lots.csv",
        splits=tmp_path / "splits.json",
        out=tmp_path / "tuned.yaml",
        reports=tmp_path / "reports",
        storage=str(tmp_path / "study.journal"),
    )


def test_off_writes_an_empty_tuned_file_once(tmp_path):
    paths = _paths(tmp_path)
    params = tune_attgan.load(ROOT / "params.yaml", paths)
    assert params.tune.n_trials == 0
    tune_attgan.run(params, paths)
    assert paths.out.read_text().endswith("{}\n")
    paths.out.write_text("lr: 0.001\n")  # a committed choice is kept
    tune_attgan.run(params, paths)
    assert paths.out.read_text() == "lr: 0.001\n"


def test_the_concept_loss_design_is_refused_before_any_work(tmp_path):
    paths = _paths(tmp_path)  # no tiles exist: the refusal must come first
    params = tune_attgan.load(ROOT / "params.yaml", paths)
    assert params.base.lambda_concept > 0
    params = dataclasses.replace(params, tune=dataclasses.replace(params.tune, n_trials=2))
    with pytest.raises(ParamsError, match="lambda_concept"):
        tune_attgan.run(params, paths)
    assert not paths.out.exists() and not (tmp_path / "study.journal").exists()
    base = dataclasses.replace(params.base, lambda_concept=0.0, lambda_regressor=1.0)
    with pytest.raises(ParamsError, match="lambda_regressor=0 -S train_attgan.train.lambda_tex"):
        tune_attgan.run(dataclasses.replace(params, base=base), paths)
    assert not paths.out.exists()
    base = dataclasses.replace(params.base, lambda_concept=0.0, lambda_texture=0.5)
    with pytest.raises(ParamsError, match="lambda_texture > 0"):
        tune_attgan.run(dataclasses.replace(params, base=base), paths)
    assert not paths.out.exists()
