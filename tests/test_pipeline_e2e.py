"""The real DVC pipeline end to end, in a temporary git clone with shrunken params."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .conftest import ROOT, TINY_CONCEPT

pytestmark = pytest.mark.slow

STAGES = [
    "synthesize",
    "tile",
    "validate",
    "split",
    "measure",
    "check_meter",
    "tune_attgan",
    "train_attgan",
    "evaluate_attgan",
    "tune_regressor",
    "train_regressor",
    "explain",
    "register",
]


def tiny_params(params: dict) -> dict:
    """The repo's params shrunk to seconds: 8 lots x 1 scan x 2x3 fields."""
    params["synthesize"].update(n_lots=8, scans_per_lot=1, fields_y=2, fields_x=3)
    params["validate"]["min_tiles_per_lot"] = 4
    params["split"].update(n_folds=2, test_lots=2)
    gan = params["train_attgan"]
    gan["train"].update(steps=20, checkpoint_every=10, log_every=5, batch_size=8)
    gan["train"]["model"].update(enc_dim=8, dec_dim=8, dis_dim=8, dis_fc_dim=16)
    gan["train"]["concept"] = {**TINY_CONCEPT, "refresh_every": 10}  # a refresh within 20 steps
    params["evaluate_attgan"].update(n_tiles=8, points=3)
    params["evaluate_attgan"]["ceiling"].update(n_tiles=4)
    gan["sample_every"] = 20
    # two trials on the default two worker processes: one batch (train/tune_regressor.py)
    params["tune_regressor"].update(n_trials=2, n_workers=2, n_startup_trials=1, epochs=2)
    params["tune_regressor"]["pruner"].update(n_startup_trials=1, n_warmup_steps=1)
    params["train_regressor"]["train"].update(epochs=2)
    params["train_regressor"]["train"]["model"]["preset"] = "tiny"
    params["train_regressor"]["baseline"]["n_estimators"] = 20
    params["explain"].update(
        tiles_per_lot=1,
        sweep_points=3,
        pair_points=3,
        tradeoff_tiles=2,
        ig_steps=4,
        lambdas=[1.0, 10.0],
    )
    params["explain"]["counterfactual"].update(steps=5, restarts=1)
    params["explain"]["referee"].update(tiles_per_lot=2, bootstrap=50)
    params["explain"]["referee"]["oracle"].update(seeds=2)
    return params


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    """A git repo holding the working tree's tracked files (uncommitted edits included)."""
    dest = tmp_path_factory.mktemp("clone")
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split("\0")
    for rel in filter(None, files):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    params = tiny_params(yaml.safe_load((dest / "params.yaml").read_text()))
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "clone"]):
        subprocess.run(["git", *args], cwd=dest, check=True, env=_env())
    return dest


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env.update(DVC_NO_ANALYTICS="1", MLFLOW_DISABLE_TELEMETRY="true", GX_ANALYTICS_ENABLED="false")
    env.update(
        GIT_AUTHOR_NAME="t",
        GIT_AUTHOR_EMAIL="t@t",
        GIT_COMMITTER_NAME="t",
        GIT_COMMITTER_EMAIL="t@t",
    )
    for key in ("MLFLOW_TRACKING_URI", "SEMKNOBS_EXECUTION_ID"):
        env.pop(key, None)
    return env


def _dvc(clone: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["dvc", *args], cwd=clone, env=_env(), capture_output=True, text=True, timeout=900
    )


def test_dvc_repro_runs_every_stage_then_nothing(clone):
    first = _dvc(clone, "repro")
    assert first.returncode == 0, first.stdout + first.stderr
    for stage in STAGES:
        assert f"Running stage '{stage}'" in first.stdout

    metrics = json.loads((clone / "metrics" / "data.json").read_text())
    assert metrics["data/n_lots"] == 8 and metrics["data/n_tiles"] == 8 * 6
    for attr in ("size", "porosity", "dispersity", "facetness"):
        assert -1 <= metrics[f"meter/spearman_{attr}"] <= 1
    splits = json.loads((clone / "data" / "splits.json").read_text())
    assert len(splits["test"]) == 2 and len(splits["folds"]) == 2
    for path in (
        "reports/tile/contact_sheet.png",
        "reports/validate/data_docs/index.html",
        "reports/check_meter/meter.png",
        "data/measurements.csv",
        "dvc.lock",
    ):
        assert (clone / path).exists(), path

    second = _dvc(clone, "repro")
    assert second.returncode == 0
    assert "Data and pipelines are up to date" in second.stdout
    assert "Running stage" not in second.stdout

    dag = _dvc(clone, "dag", "--md")
    assert dag.returncode == 0
    assert all(stage in dag.stdout for stage in STAGES)


def test_editing_a_module_flags_exactly_the_stages_that_import_it(clone):
    from semknobs.sources import stage_sources

    for module in ("src/semknobs/evaluation/ceiling.py", "src/semknobs/data/split.py"):
        path = clone / module
        original = path.read_text()
        expected = {stage for stage in STAGES if module in stage_sources(stage)}
        try:
            path.write_text(original + "\n# edited\n")
            status = _dvc(clone, "status", "--json")
            assert status.returncode == 0, status.stderr
            changed = {
                stage
                for stage, changes in json.loads(status.stdout).items()
                if any(module in str(c) for c in changes)
            }
            assert changed == expected and expected, module
        finally:
            path.write_text(original)
    assert "Data and pipelines are up to date" in _dvc(clone, "status").stdout


def test_one_execution_tag_groups_the_stage_runs(clone):
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{clone / 'mlruns' / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["semknobs"])
    stage_runs = (
        runs[runs["tags.mlflow.parentRunId"].isna()] if "tags.mlflow.parentRunId" in runs else runs
    )
    assert sorted(stage_runs["tags.semknobs.stage"]) == sorted(STAGES)
    assert (runs["status"] == "FINISHED").all()
    assert runs["tags.semknobs.execution"].nunique() == 1
    assert runs["tags.semknobs.execution"].iloc[0].startswith("dvc-")
    assert (stage_runs["tags.git.commit"] != "unknown").all()
    # DVC rewrote dvc.lock and the metrics files mid-run: not a source edit (lineage.git_info)
    assert (stage_runs["tags.git.dirty"] == "false").all()
    tile = runs[runs["tags.semknobs.stage"] == "tile"].iloc[0]
    assert tile["tags.data.version"] != "untracked"
    assert tile["metrics.data/n_tiles"] == 48


# Runs in a fresh interpreter in the clone: the registered explainer through MLflow's loader.
FRESH = """
import sys
import mlflow, numpy as np, pandas as pd
from semknobs.attributes import ATTRIBUTES
from semknobs.data.tiles import load_tiles
from semknobs.serving.tile_codec import tiles_frame
stage = pd.read_csv("reports/explain/counterfactual.csv")
tiles, manifest = load_tiles("data/tiles")
rows = manifest.reset_index(drop=True).set_index("tile").index.get_indexer(stage["tile"])
labels = pd.read_csv("data/synthetic/lots.csv").set_index("lot").loc[stage["lot"], list(ATTRIBUTES)]
model = mlflow.pyfunc.load_model("models:/semknobs-explainer@candidate")
out = model.predict(tiles_frame(tiles[rows], labels.to_numpy(float)), params={"target": "lower"})
out.to_csv(sys.argv[1], index=False)
"""


def test_registered_models_and_the_explainer_reproduce_the_stage(clone):
    from mlflow import MlflowClient

    registered = json.loads((clone / "reports" / "register" / "registered.json").read_text())
    client = MlflowClient(tracking_uri=f"sqlite:///{clone / 'mlruns' / 'mlflow.db'}")
    for kind, stage in (("attgan", "train_attgan"), ("regressor", "train_regressor")):
        entry = registered["versions"][kind]
        version = client.get_model_version_by_alias(entry["name"], "candidate")
        assert str(version.version) == entry["version"]
        assert client.get_run(version.run_id).data.tags["semknobs.stage"] == stage
        assert version.tags["data.version"]
        assert version.tags["semknobs.execution"].startswith("dvc-")
        assert version.tags["git.dirty"] == "false"
        assert any(k.startswith("metric.") for k in version.tags)
    name = registered["versions"]["explainer"]["name"]
    description = client.get_model_version_by_alias(name, "candidate").description
    assert "(knob caveats: low read: " in description and "; edits unlike lots: " in description

    out = clone / "served.csv"
    env = {**_env(), "MLFLOW_TRACKING_URI": f"sqlite:///{clone / 'mlruns' / 'mlflow.db'}"}
    done = subprocess.run(
        [sys.executable, "-c", FRESH, str(out)],
        cwd=clone, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    import numpy as np
    import pandas as pd

    served = pd.read_csv(out)
    stage = pd.read_csv(clone / "reports" / "explain" / "counterfactual.csv")
    np.testing.assert_allclose(served["baseline_mpa"], stage["baseline_mpa"], atol=1e-3)
    np.testing.assert_allclose(served["achieved_mpa"], stage["lower_achieved_mpa"], atol=1e-3)
    for a in ("size", "porosity", "dispersity", "facetness"):
        np.testing.assert_allclose(served[f"knob_delta_{a}"], stage[f"lower_delta_{a}"], atol=1e-4)
    # the editor's region misses (evaluate_attgan) travel with the bundle and the stage's read
    misses = json.loads((clone / "metrics" / "attgan.json").read_text())
    read = pd.read_csv(clone / "reports" / "explain" / "knob_read.csv").set_index("attribute")
    for a in ("size", "porosity", "dispersity", "facetness"):
        miss = misses[f"texture/region_miss_{a}"]
        np.testing.assert_allclose(served[f"region_miss_{a}"], miss)
        np.testing.assert_allclose(served[f"region_unlike_{a}"], float(miss > 1))
        assert read.loc[a, "region_miss"] == pytest.approx(miss, rel=1e-5)
    # and the stage's crystal read: the share of each knob's read kept without the background
    explained = json.loads((clone / "metrics" / "explain.json").read_text())
    for a in ("size", "porosity", "dispersity", "facetness"):
        share = explained[f"knob_gradient_crystal/whole/share_{a}"]
        np.testing.assert_allclose(served[f"crystal_share_{a}"], share)
        np.testing.assert_allclose(served[f"crystal_background_{a}"], float(share < 0.5))


def test_the_study_suite_on_the_tiny_pipeline(clone, tmp_path, monkeypatch):
    """`make science`, shrunk: the default study in place plus the confounded overlay in its own
    workspace, one table over both."""
    from semknobs import science

    for key, value in _env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    studies = science.read_studies(
        [ROOT / "studies" / "default.yaml", ROOT / "studies" / "confounded.yaml"]
    )
    out, table = tmp_path / "science.json", tmp_path / "science.md"
    results = science.run_suite(
        root=clone,
        studies=studies,
        workdir=tmp_path / "work",
        out=out,
        table=table,
        figure=tmp_path / "science.png",
    )
    assert json.loads(out.read_text()) == pytest.approx(results, nan_ok=True)
    for study in ("default", "confounded"):
        for key in (
            "knob_gradient/er/cosine_median",
            "correlation/el/sign_porosity",
            "counterfactual/validity_model",
            "regressor/rl/cosine_median",
            "test/lot_r2",
        ):
            assert f"{study}/{key}" in results, (study, key)
    # the overlay reached the workspace: its lots are correlated, the default's are not
    workspace = tmp_path / "work" / "confounded"
    assert (
        yaml.safe_load((workspace / "params.yaml").read_text())["synthesize"]["design"]["kind"]
        == "correlated"
    )
    assert results["confounded/design/max_abs_correlation"] > 0.6
    text = table.read_text()
    assert "## default" in text and "## confounded" in text
    assert (tmp_path / "science.png").stat().st_size > 10_000


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=repo, check=True, env=_env(), capture_output=True)


def test_push_to_a_local_remote_and_pull_into_a_fresh_clone(clone, tmp_path):
    """The DVC-remote recipe of the README with a local-directory remote (S3/MinIO alike)."""
    remote = tmp_path / "remote"
    assert _dvc(clone, "remote", "add", "--local", "-d", "store", str(remote)).returncode == 0
    push = _dvc(clone, "push")
    assert push.returncode == 0, push.stdout + push.stderr
    _git(clone, "add", "-A")
    _git(clone, "commit", "-qm", "pipeline results", "--allow-empty")
    fresh = tmp_path / "fresh"
    _git(tmp_path, "clone", "-q", str(clone), str(fresh))
    assert not (fresh / "data" / "tiles").exists()
    assert _dvc(fresh, "remote", "add", "--local", "-d", "store", str(remote)).returncode == 0
    pull = _dvc(fresh, "pull", "data/tiles", "models/regressor")
    assert pull.returncode == 0, pull.stdout + pull.stderr
    for rel in ("data/tiles/manifest.csv", "models/regressor/regressor.safetensors"):
        assert (fresh / rel).read_bytes() == (clone / rel).read_bytes(), rel


def _lock_outs(repo: Path) -> dict[str, str]:
    """``stage:path`` -> md5 of every out dvc.lock records."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    return {
        f"{stage}:{out['path']}": out.get("md5")
        for stage, entry in lock["stages"].items()
        for out in entry.get("outs", [])
    }


def test_a_fresh_clone_reproduces_the_committed_results(clone, tmp_path):
    """The README's promise, shrunk: commit the results, clone the commit elsewhere (no DVC
    cache, no checkpoints, no Optuna journal, a fresh MLflow store), `dvc repro` there: the same
    metrics files and dvc.lock, byte for byte (`git status` clean), every run git.dirty=false.
    Timings never reach a tracked file (semknobs.lineage.is_timing: MLflow only)."""
    from semknobs.lineage import is_timing

    _git(clone, "add", "-A")
    _git(clone, "commit", "-qm", "pipeline results", "--allow-empty")
    twin = tmp_path / "twin"
    _git(tmp_path, "clone", "-q", str(clone), str(twin))
    run = _dvc(twin, "repro")
    assert run.returncode == 0, run.stdout + run.stderr
    assert all(f"Running stage '{stage}'" in run.stdout for stage in STAGES)

    pipeline = yaml.safe_load((clone / "dvc.yaml").read_text())["stages"]
    entries = [m for stage in pipeline.values() for m in stage.get("metrics", [])]
    names = [m if isinstance(m, str) else next(iter(m)) for m in entries]
    assert len(names) >= 5  # metrics/science.json is `make science`'s, not a DVC metric
    for name in names:
        ours = json.loads((clone / name).read_text())
        theirs = json.loads((twin / name).read_text())
        assert not [k for k in ours if is_timing(k)], name
        assert set(theirs) == set(ours), name
        differ = [k for k in ours if not _same(ours[k], theirs[k])]
        assert differ == [], name
    ours, theirs = _lock_outs(clone), _lock_outs(twin)
    assert set(ours) == set(theirs)
    assert [out for out in ours if ours[out] != theirs[out]] == []  # outs that did not reproduce
    status = subprocess.run(
        ["git", "status", "--porcelain"], cwd=twin, capture_output=True, text=True, check=True
    )
    assert status.stdout == ""

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{twin / 'mlruns' / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["semknobs"])
    stage_runs = runs[runs["tags.mlflow.parentRunId"].isna()]
    assert sorted(stage_runs["tags.semknobs.stage"]) == sorted(STAGES)
    assert (stage_runs["tags.git.dirty"] == "false").all()
    assert (stage_runs["tags.git.commit"] == _head(clone)).all()


def _same(a: object, b: object) -> bool:
    """Equal, or floats equal to rounding (null is NaN in a metrics file)."""
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def _head(repo: Path) -> str:
    return subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True
    ).stdout.strip()


def test_kill_9_during_training_then_dvc_repro_resumes(clone):
    import signal
    import time

    params = yaml.safe_load((clone / "params.yaml").read_text())
    params["train_attgan"]["train"].update(steps=400, checkpoint_every=10)
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    state = clone / "checkpoints" / "attgan" / "state.json"
    proc = subprocess.Popen(
        ["dvc", "repro", "train_attgan"], cwd=clone, env=_env(), start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 600
    step = 0
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            step = json.loads(state.read_text())["meta"]["step"]
        except (OSError, ValueError, KeyError):
            step = 0
        if step >= 30:
            break
        time.sleep(0.1)
    assert proc.poll() is None, "training ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed = json.loads(state.read_text())["meta"]
    assert 30 <= killed["step"] < 400 and killed["train_seconds"] > 0

    rerun = _dvc(clone, "repro", "train_attgan")
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "train_attgan: resuming from checkpoints/attgan at step" in rerun.stdout
    metrics = json.loads((clone / "metrics" / "train_attgan.json").read_text())
    assert metrics["train/steps"] == 400
    # the killed run's seconds count: training time is over every run behind the model (a
    # timing: in the stage's MLflow run, not in the metrics file)
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{clone / 'mlruns' / 'mlflow.db'}")
    (last,) = client.search_runs(
        [client.get_experiment_by_name("semknobs").experiment_id],
        filter_string="tags.`semknobs.stage` = 'train_attgan'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    assert last.data.metrics["train/wall_s"] > killed["train_seconds"]


def test_bring_your_own_data_through_dvc(clone):
    """README recipe: point `data` at your own scans, `dvc add` them, reproduce what you need."""
    from .test_byo_and_bad_input import _user_data

    _user_data(clone / "data" / "user", lots=["Alpha", "B-7", "c_3", "D4", "E5"])
    assert _dvc(clone, "add", "data/user").returncode == 0
    params = yaml.safe_load((clone / "params.yaml").read_text())
    params["data"] = {"raw_dir": "data/user/raw", "lots": "data/user/lots.csv"}
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run = _dvc(clone, "repro", "split", "measure", "train_regressor")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Running stage 'synthesize'" not in run.stdout
    for stage in ("tile", "validate", "split", "measure", "tune_regressor", "train_regressor"):
        assert f"Running stage '{stage}'" in run.stdout
    manifest = (clone / "data" / "tiles" / "manifest.csv").read_text()
    assert "Alpha" in manifest and "L01" not in manifest
    # the synthetic-only meter check refuses user tiles with a clear message
    meter = _dvc(clone, "repro", "check_meter")
    assert meter.returncode != 0 and "synthetic study only" in meter.stdout + meter.stderr
