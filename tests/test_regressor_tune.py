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
# batch-synchronous trials
# --------------------------------------------------------------------------------------------


def _batched_study(pool_kind: str) -> list[tuple]:
    """Eight trials of a cheap objective, two at a time, pruned by a median pruner. With a pool,
    the first trial of every batch is the slow one: its later epochs run after the second has
    finished, so a runner that told results as they came would let the pruner (and the next
    asks) see a different history than the sequential run."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    from semknobs.train import tuning

    study = optuna.create_study(
        sampler=optuna.samplers.TPESampler(seed=3, n_startup_trials=2),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0),
    )
    lock = threading.Lock()  # the in-memory storage is not for concurrent writers

    def evaluate(asked, trial=None):
        trial = trial or optuna.trial.Trial(study, asked.trial_id)
        x = asked.params["x"]
        for step in range(4):
            if pool_kind == "threads":
                time.sleep(0.03 if asked.slot == 0 else 0.0)
            with lock:
                trial.report((x - 0.3) ** 2 + 1.0 / (step + 1), step)
                if trial.should_prune():
                    raise optuna.TrialPruned()
        return (x - 0.3) ** 2

    pool = ThreadPoolExecutor(2) if pool_kind == "threads" else None
    ran = tuning.run_batches(
        study,
        n_trials=8,
        n_workers=2,
        suggest=lambda t: {"x": t.suggest_float("x", -1.0, 1.0)},
        evaluate=evaluate,
        pool=pool,
    )
    assert ran == 8
    return [(t.number, t.state.name, t.params, t.value) for t in study.trials]


def test_batch_synchronous_trials_do_not_depend_on_timing():
    sequential = _batched_study("none")
    assert _batched_study("threads") == sequential
    assert {"COMPLETE", "PRUNED"} <= {state for _, state, _, _ in sequential}


def test_a_failing_trial_is_told_fail_after_its_batch():
    from semknobs.train import tuning

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))

    def evaluate(asked, trial=None):
        if asked.slot == 0 and trial.number == 2:
            raise RuntimeError("trial 2 broke")
        return asked.params["x"]

    with pytest.raises(RuntimeError, match="trial 2 broke"):
        tuning.run_batches(
            study,
            n_trials=6,
            n_workers=2,
            suggest=lambda t: {"x": t.suggest_float("x", 0.0, 1.0)},
            evaluate=evaluate,
        )
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE", "FAIL", "COMPLETE"]


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
def test_two_worker_processes_reproduce_the_study(tiny_study, tune_inputs, tmp_path):
    """The stage with two spawned worker processes, once on a journal file and once on a sqlite
    RDB URL: the same trials (params, states, values) and the same tuned file both times; all
    runs land, nested under the stage's run, in the stage's experiment."""
    root = tune_inputs
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["tune_regressor"] |= {"n_trials": 6, "n_workers": 2, "epochs": 3}
    params["tune_regressor"]["pruner"]["n_startup_trials"] = 2
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    studies, tuned = [], []
    for kind in ("journal", "rdb"):
        storage = str(root / "optuna" / "reg.journal")
        if kind == "rdb":
            storage = f"sqlite:///{tmp_path / 'optuna.db'}"
        db = f"sqlite:///{tmp_path / f'mlflow-{kind}.db'}"
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
        tuned.append((root / "tuned.yaml").read_text())

        study = optuna.load_study(study_name="semknobs-regressor", storage=make_storage(storage))
        assert len(study.trials) == 6
        assert [t.user_attrs["worker"] for t in study.trials] == [0, 1] * 3  # place in batch
        studies.append([(t.state, t.params, t.value) for t in study.trials])

        experiments, runs = _runs(db)
        assert [r for r in runs if r.info.experiment_id == "0"] == []  # nothing in Default
        parent = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
        assert len(parent) == 1
        assert experiments[parent[0].info.experiment_id] == "regressor-tuning"
        children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
        assert sorted(int(r.data.tags["optuna.trial"]) for r in children) == list(range(6))
        for run in children:
            assert run.info.experiment_id == parent[0].info.experiment_id
            assert run.data.tags["mlflow.parentRunId"] == parent[0].info.run_id
            assert run.info.status == "FINISHED" and "val/lot_rmse" in run.data.metrics
    assert studies[0] == studies[1]
    assert tuned[0] == tuned[1]
