"""Tuning the regressor: lot-wise CV folds never leak, the search space round-trips into train
params, a real study (journal file, sqlite MLflow store) prunes, finishes and nests its runs."""

from __future__ import annotations

import os
import subprocess
import sys

import optuna
import pandas as pd
import pytest
import yaml

from semknobs.config import from_mapping, load_section
from semknobs.data.split import SplitParams, make_splits, write_splits
from semknobs.train.regressor import RegressorTrainParams
from semknobs.train.tune_regressor import (
    SearchSpace,
    TuneRegressorParams,
    apply,
    create_study,
    overrides_from_params,
    study_name,
    suggest,
)
from semknobs.train.tuning import make_storage

from .conftest import ROOT

# --------------------------------------------------------------------------------------------
# folds
# --------------------------------------------------------------------------------------------

PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())
SPACE = from_mapping(SearchSpace, PARAMS["tune_regressor"]["space"])  # declared there only


def _lots(stresses):
    return pd.DataFrame(
        {"lot": [f"L{i:03d}" for i in range(len(stresses))], "peak_stress": stresses}
    )


# --------------------------------------------------------------------------------------------
# search space
# --------------------------------------------------------------------------------------------


def test_suggested_overrides_round_trip_into_strict_train_params():
    space = SPACE
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(5):
        trial = study.ask()
        overrides = suggest(trial, space)
        study.tell(trial, 1.0)
        assert overrides_from_params(study.trials[-1].params) == overrides
        params = apply(RegressorTrainParams(), overrides, epochs=3)
        assert params.epochs == 3 and params.lr == overrides["lr"]
        assert params.model.preset == overrides["model"]["preset"]
        assert params.augment.rot90 == overrides["augment"]["rot90"]
        yaml.safe_load(yaml.safe_dump(overrides))  # plain YAML for tuned/regressor.yaml


def test_study_name_changes_with_the_space_not_with_the_trial_count():
    import dataclasses

    tune, base = TuneRegressorParams(space=SPACE), RegressorTrainParams()
    name = study_name(tune, base, "data-v1")
    assert name.startswith("semknobs-regressor-")
    assert study_name(dataclasses.replace(tune, n_trials=20, n_workers=4), base, "data-v1") == name
    wider = dataclasses.replace(
        tune, space=dataclasses.replace(SPACE, preset=("tiny", "small", "medium"))
    )
    assert study_name(wider, base, "data-v1") != name
    assert study_name(tune, dataclasses.replace(base, epochs=3), "data-v1") != name
    assert study_name(tune, base, "data-v2") != name


def test_tune_params_are_strict(tmp_path):
    path = tmp_path / "params.yaml"
    reversed_lr = {**PARAMS["tune_regressor"]["space"], "lr": [0.01, 0.001]}
    path.write_text(yaml.safe_dump({"tune_regressor": {"space": reversed_lr}}))
    with pytest.raises(Exception, match=r"tune_regressor\.space: .*lr: low"):
        load_section(TuneRegressorParams, "tune_regressor", path)
    path.write_text(yaml.safe_dump({"tune_regressor": {"n_trails": 3}}))
    with pytest.raises(Exception, match="unknown parameter"):
        load_section(TuneRegressorParams, "tune_regressor", path)


# --------------------------------------------------------------------------------------------
# the stage on the tiny study
# --------------------------------------------------------------------------------------------

TEST_SECTIONS = {
    "tune_regressor": {
        "n_trials": 2,
        "n_workers": 1,
        "seed": 0,
        "n_startup_trials": 1,
        "epochs": 3,
        "pruner": {"n_startup_trials": 1, "n_warmup_steps": 0},
        "space": {
            "lr": [1e-5, 1e-2],
            "weight_decay": [1e-6, 1e-3],
            "batch_size": [8],
            "preset": ["tiny"],
            "drop_rate": [0.0, 0.2],
            "flips": [True, False],
            "rot90": [True, False],
            "intensity": [0.0, 0.1],
        },
    },
    "train_regressor": {
        "train": {
            "epochs": 3,
            "batch_size": 8,
            "lr": 0.003,
            "device": "cpu",
            "threads": 1,
            "model": {"preset": "tiny"},
        },
        "baseline": {"n_estimators": 20},
    },
}


@pytest.fixture
def tune_inputs(tiny_study, tmp_path):
    lots = pd.read_csv(tiny_study["lots"])
    splits = make_splits(lots, SplitParams(n_folds=2, test_lots=2))
    write_splits(tmp_path / "splits.json", splits)
    params = yaml.safe_load((ROOT / "params.yaml").read_text()) | TEST_SECTIONS
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return tmp_path


def _argv(study, root, storage):
    return [
        "--tiles-dir", study["tiles"],
        "--lots", study["lots"],
        "--splits", root / "splits.json",
        "--storage", storage,
        "--study-name", "semknobs-regressor",
        "--out", root / "tuned.yaml",
        "--reports", root / "reports",
    ]  # fmt: skip


def _runs(tracking_uri):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    experiments = {e.experiment_id: e.name for e in client.search_experiments()}
    runs = client.search_runs(list(experiments))
    return experiments, runs


def test_two_trial_study_with_pruning_completes(tiny_study, tune_inputs, run_stage, mlflow_tmp):
    root = tune_inputs
    journal = root / "optuna" / "reg.journal"
    tune = load_section(TuneRegressorParams, "tune_regressor", root / "params.yaml")
    # the study exists before the stage (as after an earlier, interrupted execution); two
    # queued trials: a workable one, then one whose learning rate cannot learn in 3 epochs
    study = create_study(make_storage(str(journal)), "semknobs-regressor", tune)
    fixed = {"weight_decay": 1e-4, "batch_size": 8, "preset": "tiny", "drop_rate": 0.0}
    fixed |= {"flips": True, "rot90": True, "intensity": 0.0}
    study.enqueue_trial({"lr": 3e-3, **fixed})
    study.enqueue_trial({"lr": 1e-5, **fixed})

    assert run_stage("tune_regressor", *_argv(tiny_study, root, journal)) == 0

    study = optuna.load_study(study_name="semknobs-regressor", storage=make_storage(str(journal)))
    states = [t.state for t in study.trials]
    first, second = study.trials
    assert states == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED], (
        first.intermediate_values,
        second.intermediate_values,
    )
    assert sorted(first.intermediate_values) == [1, 2, 3]  # one report per epoch
    tuned = yaml.safe_load((root / "tuned.yaml").read_text())
    assert tuned == overrides_from_params(first.params)
    assert "do not edit by hand" in (root / "tuned.yaml").read_text()
    for name in ("study.json", "optimization_history.png", "intermediate_values.png"):
        assert (root / "reports" / name).exists(), name
    # tuned params are accepted by the train stage's strict params
    section = TEST_SECTIONS["train_regressor"]["train"] | tuned
    from_mapping(RegressorTrainParams, section)

    experiments, runs = _runs(os.environ["MLFLOW_TRACKING_URI"])
    parent = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parent) == 1 and parent[0].data.tags["semknobs.stage"] == "tune_regressor"
    assert len(children) == 2
    for run in children:
        assert run.data.tags["mlflow.parentRunId"] == parent[0].info.run_id
        assert run.info.experiment_id == parent[0].info.experiment_id
        assert experiments[run.info.experiment_id] == "semknobs"
    by_trial = {r.data.tags["optuna.trial"]: r for r in children}
    assert by_trial["1"].data.tags["optuna.state"] == "PRUNED"
    assert "val/lot_rmse" in by_trial["0"].data.metrics
    assert parent[0].data.metrics["tune/n_pruned"] == 1


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["journal", "rdb"])
def test_two_worker_processes_share_one_study(tiny_study, tune_inputs, tmp_path, kind):
    """Two spawned workers on one journal file (or sqlite RDB URL) finish every trial; all runs
    land, nested under the stage's run, in the stage's experiment."""
    root = tune_inputs
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["tune_regressor"] |= {"n_trials": 6, "n_workers": 2, "epochs": 3}
    params["tune_regressor"]["pruner"]["n_startup_trials"] = 6  # every trial runs to the end
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    journal = root / "optuna" / "reg.journal"
    storage = str(journal) if kind == "journal" else f"sqlite:///{tmp_path / 'optuna.db'}"
    db = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = dict(
        os.environ,
        MLFLOW_TRACKING_URI=db,
        SEMKNOBS_EXPERIMENT="regressor-tuning",  # not the default name
        SEMKNOBS_EXECUTION_ID="pytest-tune",
    )
    script = ROOT / "pipelines" / "tune_regressor.py"
    argv = ["--params", root / "params.yaml", *_argv(tiny_study, root, storage)]
    proc = subprocess.run(
        [sys.executable, str(script), *map(str, argv)],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    study = optuna.load_study(study_name="semknobs-regressor", storage=make_storage(storage))
    finished = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert 6 <= len(finished) <= 7 and len(finished) == len(study.trials)
    assert {t.user_attrs["worker"] for t in finished} == {0, 1}

    experiments, runs = _runs(db)
    assert [r for r in runs if r.info.experiment_id == "0"] == []  # nothing in Default
    parent = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parent) == 1
    assert experiments[parent[0].info.experiment_id] == "regressor-tuning"
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert sorted(int(r.data.tags["optuna.trial"]) for r in children) == [
        t.number for t in study.trials
    ]
    for run in children:
        assert run.info.experiment_id == parent[0].info.experiment_id
        assert run.data.tags["mlflow.parentRunId"] == parent[0].info.run_id
        assert run.info.status == "FINISHED" and "val/lot_rmse" in run.data.metrics
