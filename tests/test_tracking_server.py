"""Every stage logs to a tracking server when MLFLOW_TRACKING_URI says so: a real `mlflow server`
on loopback (sqlite backend, served artifacts) and a real stage run against it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from semknobs import tracking
from semknobs.serving.client import free_port, running_server

from .test_byo_and_bad_input import _tile, user  # noqa: F401  (user is a fixture)

pytestmark = pytest.mark.slow


@pytest.fixture
def server(tmp_path: Path):
    port = free_port()
    store = tmp_path / "server"
    store.mkdir()
    url = f"http://127.0.0.1:{port}"
    command = [
        sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
        "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}",
        "--artifacts-destination", str(store / "artifacts"), "--serve-artifacts",
        "--workers", "1",
    ]  # fmt: skip
    with running_server(
        command, base_url=url, log_path=tmp_path / "server.log", timeout_s=180, path="/health"
    ):
        yield url, store


def test_a_stage_logs_to_a_tracking_server(run_stage, user, server, monkeypatch):  # noqa: F811
    from mlflow import MlflowClient

    url, store = server
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    monkeypatch.setattr(tracking, "_configured_uri", None)
    assert _tile(run_stage, user) == 0
    client = MlflowClient(tracking_uri=url)
    experiment = client.get_experiment_by_name("semknobs")
    runs = client.search_runs([experiment.experiment_id])
    assert [r.data.tags["semknobs.stage"] for r in runs] == ["tile"]
    run = runs[0]
    assert run.info.status == "FINISHED" and run.data.metrics["data/n_tiles"] > 0
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # proxied by the server
    names = [f.path for f in client.list_artifacts(run.info.run_id, "figures")]
    assert names and any(p.endswith(".png") for p in names)
    assert any((store / "artifacts").rglob("*.png"))  # stored server-side
    assert not (user["root"] / "mlruns" / "mlflow.db").exists()  # nothing in a local store
