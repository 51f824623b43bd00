"""`semknobs compare` on a real sqlite MLflow store laid out as pipeline executions leave it:
stage runs tagged with their execution, registered versions carrying the metrics files
(``metric.*``) and the execution that registered them. DVC skips stages, so executions rerun
only some; one execution fails before it registers; one comes from another workspace."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from semknobs import compare, tracking
from semknobs.cli import main
from semknobs.config import load_section
from semknobs.lifecycle.promote import PromoteParams
from semknobs.names import MODEL_NAMES
from semknobs.stages.register import metric_tags

from .conftest import ROOT

GOOD = {
    "regressor": {"test/lot_r2": 0.93, "baseline_rf/lot_r2": 0.75, "test/lot_rmse": 1.7},
    "attgan": {"test/psnr": 25.1, "control/spearman_size": 0.91, "control/max_leakage": 0.2},
    "explainer": {"knob_gradient/er/cosine_median": 0.88, "counterfactual/validity_law": 0.9},
}
FOREIGN = "f" * 40


def _stage(name: str, params: dict, **tags: str) -> str:
    with tracking.stage_run(name, params=params, tags=tags) as run:
        return run.info.run_id


def _register(execution: str, training: dict[str, str], metrics: dict, **tags: str) -> None:
    """What the register stage writes: versions of the trained models (linked to their training
    runs) and of the explainer (logged in the register run), with metric tags."""
    from mlflow import MlflowClient

    client = MlflowClient()
    register_run = _stage("register", {"register": {"alias": "candidate"}}, **tags)
    for kind, name in MODEL_NAMES.items():
        run_id = training.get(kind, register_run)
        if not client.search_registered_models(f"name = '{name}'"):
            client.create_registered_model(name)
        client.create_model_version(
            name,
            source=f"runs:/{run_id}/model",
            run_id=run_id,
            tags={**metric_tags(metrics[kind]), "semknobs.register_execution": execution},
        )


@pytest.fixture(scope="module")
def executions(store: Path) -> dict[str, str]:
    """E1: everything; E2: only explain (lam changed); E3: the regressor retrained (more epochs,
    better R2); E4: failed before register; X: another workspace's commit."""
    mp = pytest.MonkeyPatch()
    ids = {}

    def run(execution: str) -> None:
        mp.setenv("SEMKNOBS_EXECUTION_ID", execution)
        ids[execution] = execution

    run("E1")
    training = {
        "attgan": _stage("train_attgan", {"train": {"lr": 0.001, "steps": 100}}),
        "regressor": _stage("train_regressor", {"train": {"epochs": 10}}),
    }
    _stage("explain", {"lam": 1.0, "lambdas": [0.1, 1.0]})
    _register("E1", training, GOOD)
    run("E2")
    _stage("explain", {"lam": 3.0, "lambdas": [0.1, 1.0]})
    worse = {**GOOD, "explainer": {**GOOD["explainer"], "counterfactual/validity_law": 0.5}}
    _register("E2", training, worse)
    run("X")
    _stage("train_regressor", {"train": {"epochs": 99}}, **{"git.commit": FOREIGN})
    _register("X", training, GOOD, **{"git.commit": FOREIGN})
    run("E3")
    training["regressor"] = _stage("train_regressor", {"train": {"epochs": 20}})
    better = {**worse, "regressor": {**GOOD["regressor"], "test/lot_r2": 0.97}}
    _register("E3", training, better)
    run("E4")
    _stage("train_attgan", {"train": {"lr": 0.01, "steps": 100}})
    mp.undo()
    return ids


def _load(last: int = 5, **kwargs):
    from mlflow import MlflowClient

    client = MlflowClient()
    experiment = client.get_experiment_by_name(tracking.experiment_name())
    return compare.load_executions(client, experiment.experiment_id, last=last, **kwargs)


def test_executions_metrics_and_changed_params(executions) -> None:
    found, not_shown = _load(commits={"unknown"})  # the temp store's runs have no git
    assert [e.id for e in found] == ["E1", "E2", "E3"]  # X: another workspace
    assert not_shown == ["E4"]
    assert [e.stages for e in found] == [
        ["train_attgan", "train_regressor", "explain", "register"],
        ["explain", "register"],
        ["train_regressor", "register"],
    ]
    result = compare.compare(found, load_section(PromoteParams, "promote", ROOT / "params.yaml"))
    # changed params: in effect at each execution, skipped stages carried over
    assert result.changed == {
        "explain.lam": ["1.0", "3.0", "3.0"],
        "train_regressor.train.epochs": ["10", "10", "20"],
    }
    rows = {
        label.split()[0]: (values, fails)
        for label, values, fails in result.metric_rows["regressor"]
    }
    assert rows["test/lot_r2"] == ([0.93, 0.93, 0.97], [False, False, False])
    explainer = {label.split()[0]: v for label, v, _ in result.metric_rows["explainer"]}
    assert explainer["counterfactual/validity_law"] == [0.9, 0.5, 0.5]
    assert explainer["counterfactual/success_rate"] == [None, None, None]  # not in the files
    fails = {label.split()[0]: f for label, _, f in result.metric_rows["explainer"]}
    assert fails["counterfactual/validity_law"] == [False, True, True]  # min 0.85
    everywhere, _ = _load(commits=None)
    assert [e.id for e in everywhere] == ["E1", "E2", "X", "E3"]
    assert [e.id for e in _load(last=2, commits={"unknown"})[0]] == ["E2", "E3"]


def test_table_fits_and_reads(executions) -> None:
    found, not_shown = _load(commits={"unknown"})
    params = load_section(PromoteParams, "promote", ROOT / "params.yaml")
    result = compare.compare(found, params, ["regressor:test/*rmse"], not_shown)
    for width in (100, 72, 48):
        text = compare.render(result, width=width)
        assert max(map(len, text.splitlines())) <= width, text
    text = compare.render(result, width=100)
    lot_r2 = next(line for line in text.splitlines() if "test/lot_r2" in line)
    assert re.search(r">=0\.85 >=baseline_rf/lot_r2\s+0\.93\s+0\.93\s+0\.97$", lot_r2), lot_r2
    validity = next(line for line in text.splitlines() if "validity_law" in line)
    assert validity.split()[-3:] == ["0.9", "0.5!", "0.5!"]
    assert re.search(r"explain\.lam\s+1\.0\s+3\.0\s+3\.0$", text, re.M)
    assert "test/lot_rmse" in text and "E4" in text and "not listed" not in text
    # many executions: bands of columns, never wider than asked
    many = compare.compare(found * 4, params)
    assert max(map(len, compare.render(many, width=60).splitlines())) <= 60


def test_cli_compare(executions, capsys) -> None:
    argv = ["compare", "--params", str(ROOT / "params.yaml"), "--all-workspaces", "--width", "90"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert all(f"#{i}" in out for i in (1, 2, 3, 4)) and "train_regressor.train.epochs" in out
    assert main([*argv[:3], "--json", "--execution", "E3", "--execution", "E1"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [e["id"] for e in data["executions"]] == ["E1", "E3"]
    assert data["changed_params"]["train_regressor.train.epochs"] == ["10", "20"]
    assert main(["compare", "--execution", "nope"]) == 2
    assert "no execution that registered models is called nope" in capsys.readouterr().err
