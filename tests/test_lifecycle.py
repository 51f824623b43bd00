"""Registry, promotion and downstream use, on a real sqlite MLflow store with tiny real models:
the register step's version links and tags, gates that pass and refuse, aliases that move, the
explainer pyfunc loaded by alias in a fresh process against the explain stage's own numbers,
`semknobs explain`, and (slow) the served explainer over HTTP."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from semknobs import cli, registry, tracking
from semknobs.attributes import ATTRIBUTES, AttributeScaler
from semknobs.config import from_mapping, load_section, section, to_mapping
from semknobs.errors import ModelError, ParamsError
from semknobs.explain.bundle import KnobExplainer
from semknobs.explain.counterfactual import CounterfactualParams
from semknobs.explain.folder import save_explainer_dir
from semknobs.explain.study import ExplainParams, explain
from semknobs.lifecycle.promote import (
    Gate,
    PromoteParams,
    Scaled,
    champions,
    check_gates,
    promote,
)
from semknobs.model_folder import save_model_dir
from semknobs.models.attgan import AttGANConfig, Discriminator, Generator
from semknobs.models.regressor import PeakStressRegressor, RegressorConfig
from semknobs.names import MODEL_NAMES
from semknobs.serving import attgan_model, regressor_model
from semknobs.serving.client import frame_request, free_port, post, running_server
from semknobs.serving.tile_codec import tiles_frame
from semknobs.stages.register import SPECS, RegisterParams, register_models

from .conftest import ROOT

SIZE = 32
GAN = AttGANConfig(
    img_size=SIZE,
    enc_layers=2,
    dec_layers=2,
    dis_layers=2,
    enc_dim=4,
    dec_dim=4,
    dis_dim=4,
    dis_fc_dim=8,
    shortcut_layers=1,
    inject_layers=1,
)
SEARCH = CounterfactualParams(delta=0.1, delta_unit="range", steps=8, restarts=2, lr=0.1)
SCALER = AttributeScaler((1.0,) * 4, (9.0,) * 4)
STRESS_RANGE = 30.0
NAMES = MODEL_NAMES
GOOD = {"test/lot_r2": 0.95, "baseline_rf/lot_r2": 0.7, "test/lot_rmse": 1.5}
BAD = {"test/lot_r2": 0.5, "baseline_rf/lot_r2": 0.7, "test/lot_rmse": 6.0}
GATES = PromoteParams(
    gates={
        "regressor": [
            Gate("test/lot_r2", min=0.85),
            Gate("test/lot_r2", min="baseline_rf/lot_r2"),
        ],
        "explainer": [Gate("counterfactual/success_rate", min=0.99)],
    }
)


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    gen, dis = Generator(GAN).eval(), Discriminator(GAN)
    reg = PeakStressRegressor(RegressorConfig(preset="tiny", img_size=SIZE), 40.0, 8.0).eval()
    paths = {kind: root / kind for kind in ("attgan", "regressor", "explainer")}
    save_model_dir(
        paths["attgan"],
        kind="attgan",
        weights={"generator": gen, "discriminator": dis},
        config={"model": to_mapping(GAN), "scaler": SCALER.to_dict(), "img_size": SIZE},
    )
    save_model_dir(
        paths["regressor"],
        kind="regressor",
        weights={"regressor": reg},
        config={
            "model": to_mapping(reg.cfg),
            "img_size": SIZE,
            "target": {"mean": 40.0, "std": 8.0},
        },
    )
    tile = {"tile_px": 64, "out_px": SIZE, "info_bar_px": 0, "percentiles": [0.5, 99.5]}
    save_explainer_dir(
        paths["explainer"],
        attgan_dir=paths["attgan"],
        regressor_dir=paths["regressor"],
        stress_range=STRESS_RANGE,
        counterfactual=SEARCH,
        tile=tile,
    )
    return paths


def _tiles(n: int, seed: int = 1) -> np.ndarray:
    xx = np.mgrid[:SIZE, :SIZE][1]
    rng = np.random.default_rng(seed)
    base = [100 + 80 * np.sin(xx / rng.uniform(1, 4) + rng.uniform(0, 6)) for _ in range(n)]
    return np.clip(np.stack(base) + rng.normal(0, 10, (n, SIZE, SIZE)), 0, 255).astype(np.uint8)


def _register(folders: dict[str, Path], regressor_metrics: dict[str, float]) -> dict:
    """Log the models in 'training' runs, then register them from a 'register' run."""
    refs = {}
    for kind in ("attgan", "regressor"):
        with tracking.stage_run(f"train_{kind}", params={}):
            refs[kind] = registry.log_model(folders[kind], name=kind, spec=SPECS[kind])
    metrics = {
        "attgan": {"test/psnr": 25.0},
        "regressor": regressor_metrics,
        "explainer": {"counterfactual/success_rate": 0.5},
    }
    with tracking.stage_run("register", params={}):
        versions = register_models(
            alias="candidate",
            model_dirs=folders,
            logged=refs,
            metrics=metrics,
            descriptions={k: f"tiny {k}" for k in NAMES},
            execution="exec-1",
        )
    return {"refs": refs, "versions": versions}


def test_gates_known_answers() -> None:
    gates = [
        Gate("a", min=0.5),
        Gate("b", max=1.0),
        Gate("a", min="c"),
        Gate("fid", min=0.8, needs_truth=True),
        Gate("gone", min=0.0),
    ]
    results = check_gates(gates, {"a": 0.6, "b": 2.0, "c": 0.7})
    assert [(r.passed, r.skipped) for r in results] == [
        (True, False),
        (False, False),
        (False, False),
        (False, True),
        (False, False),
    ]
    assert "needs <= 1" in results[1].text and "c (0.7)" in results[2].text
    assert "missing" in results[4].text
    with pytest.raises(ValueError, match="min or a max"):
        Gate("x")


def test_scaled_and_alternative_bounds_known_answers() -> None:
    """The issue's control target: >= 0.8 or >= 90 % of the meter's ceiling; leakage <= ceiling +
    0.1; on data without a ceiling the absolute bound alone decides."""
    either = (0.8, Scaled("ceiling", times=0.9))
    gates = [
        Gate("control", min=either),
        Gate("leak", max=(0.3, Scaled("ceiling_leak", plus=0.1))),
        Gate("control", min=Scaled("ceiling", times=0.9)),
    ]
    met_by_ceiling = {"control": 0.72, "ceiling": 0.79, "leak": 0.6, "ceiling_leak": 0.54}
    assert [r.passed for r in check_gates(gates, met_by_ceiling)] == [True, True, True]
    missed = {"control": 0.72, "ceiling": 0.92, "leak": 0.65, "ceiling_leak": 0.54}
    results = check_gates(gates, missed)
    assert [r.passed for r in results] == [False, False, False]
    assert "one of 0.8, 0.9 x ceiling (0.828)" in results[0].text
    assert "ceiling_leak + 0.1 (0.64)" in results[1].text
    no_truth = {"control": 0.85, "leak": 0.25}
    results = check_gates(gates, no_truth)
    assert [r.passed for r in results] == [True, True, False]
    assert "missing" in results[2].text
    assert not check_gates(gates[:1], {"control": 0.79})[0].passed
    with pytest.raises(ValueError, match="empty list"):
        Gate("x", min=())
    with pytest.raises(ValueError, match="finite"):
        Scaled("x", times=float("nan"))


def test_gates_from_params_yaml_parse_and_match_the_issue_targets() -> None:
    params = load_section(PromoteParams, "promote", ROOT / "params.yaml")
    gates = {g.metric: g for g in params.gates["attgan"]}
    ceilings = {f"control/ceiling_{a}": 0.85 for a in ATTRIBUTES} | {
        "control/ceiling_max_leakage": 0.54
    }
    at_90_percent = {f"control/spearman_{a}": 0.77 for a in ATTRIBUTES} | {
        "control/max_leakage": 0.63,
        "test/psnr": 24.1,
    }
    assert all(r.passed for r in check_gates(list(gates.values()), at_90_percent | ceilings))
    below = at_90_percent | {"control/spearman_dispersity": 0.76, "control/max_leakage": 0.65}
    failed = {
        r.gate.metric for r in check_gates(list(gates.values()), below | ceilings) if not r.passed
    }
    assert failed == {"control/spearman_dispersity", "control/max_leakage"}
    with pytest.raises(ParamsError, match=r"promote.gates.attgan\[0\].min"):
        from_mapping(
            PromoteParams, {"gates": {"attgan": [{"metric": "a", "min": [True]}]}}, "promote"
        )


@pytest.mark.parametrize(
    ("alias", "match"),
    [
        ("champion", "semknobs promote"),  # would skip the quality gates
        ("Champion", "semknobs promote"),
        ("latest", "reserves"),
        ("LATEST", "reserves"),
        ("v3", "v<number>"),
        ("V3", "v<number>"),
        ("two words", "letters"),
        ("", "letters"),
        ("a" * 256, "1-255"),
    ],
)
def test_register_alias_is_checked_before_anything_is_registered(alias, match) -> None:
    with pytest.raises(ParamsError, match=rf"params\.yaml: register: .*{match}"):
        section(RegisterParams, {"register": {"alias": alias}}, "register", "params.yaml")


def test_a_study_registers_under_its_own_alias() -> None:
    from semknobs.names import CANDIDATE
    from semknobs.science import study_alias

    assert study_alias("other_law") == f"{CANDIDATE}-other_law"
    assert RegisterParams(study_alias("my study.v2")).alias == f"{CANDIDATE}-my_study_v2"


def test_register_links_each_version_to_its_run(store: Path, folders) -> None:
    out = _register(folders, GOOD)
    refs, versions = out["refs"], out["versions"]
    client = __import__("mlflow").MlflowClient()
    for kind in ("attgan", "regressor"):
        v = versions[kind]
        assert v.run_id == refs[kind].run_id  # the training run, not the register run
        assert v.tags["semknobs.run_id"] == refs[kind].run_id
        assert v.tags["semknobs.stage"] == f"train_{kind}"
        assert v.tags["semknobs.execution"] == "pytest-lifecycle"
        assert v.tags["semknobs.register_execution"] == "exec-1"
        assert "data.version" in v.tags and "git.commit" in v.tags
        assert str(client.get_model_version_by_alias(NAMES[kind], "candidate").version) == str(
            v.version
        )
    assert versions["regressor"].tags["metric.test/lot_r2"] == repr(0.95)
    assert "test/lot_r2 = 0.95" in versions["regressor"].description
    bundle = versions["explainer"]
    assert (
        bundle.tags["semknobs.bundles.regressor"]
        == f"semknobs-regressor/{versions['regressor'].version}"
    )
    assert bundle.tags["semknobs.kind"] == "explainer"


def test_promotion_refuses_forces_and_moves_the_alias(store: Path, folders) -> None:
    from mlflow import MlflowClient

    client = MlflowClient()
    bad = _register(folders, BAD)["versions"]["regressor"].version
    refused = promote("semknobs-regressor", params=GATES)
    assert not refused.promoted and refused.version == str(bad)
    assert [r.gate.min for r in refused.failed] == [0.85, "baseline_rf/lot_r2"]
    assert "champion" not in (client.get_registered_model("semknobs-regressor").aliases or {})
    with pytest.raises(ParamsError, match="reason"):
        promote("semknobs-regressor", params=GATES, force=True)
    with pytest.raises(ParamsError, match="no promotion gates"):
        promote("semknobs-attgan", params=GATES)

    forced = promote("semknobs-regressor", params=GATES, force=True, reason="demo", user="tester")
    assert forced.promoted and forced.forced
    tags = client.get_model_version("semknobs-regressor", str(bad)).tags
    assert tags["champion.forced"] == "true" and tags["champion.reason"] == "demo"
    assert (
        tags["champion.promoted_by"] == "tester" and "test/lot_r2" in tags["champion.failed_gates"]
    )

    good = _register(folders, GOOD)["versions"]["regressor"].version
    passed = promote("semknobs-regressor", params=GATES)
    assert passed.promoted and not passed.forced and passed.previous == str(bad)
    assert str(client.get_model_version_by_alias("semknobs-regressor", "champion").version) == str(
        good
    )
    old = client.get_model_version("semknobs-regressor", str(bad)).tags
    assert old["champion.superseded_by"] == str(good) and "champion.retired_at" in old
    assert [c["version"] for c in champions("semknobs-regressor")] == [str(bad), str(good)]

    # the CLI names each failed gate and exits non-zero
    _register(folders, BAD)
    params = store / "params.yaml"
    params.write_text(
        json.dumps({"promote": {"gates": {"regressor": [{"metric": "test/lot_r2", "min": 0.85}]}}})
    )
    assert cli.main(["promote", "--model", "semknobs-regressor", "--params", str(params)]) == 1
    assert str(client.get_model_version_by_alias("semknobs-regressor", "champion").version) == str(
        good
    )


# Runs in a fresh interpreter: the explainer by alias through MLflow's pyfunc loader.
FRESH = textwrap.dedent(
    """
    import sys
    import mlflow
    import pandas as pd
    columns = ["size", "porosity", "dispersity", "facetness"]
    frame = pd.read_json(sys.argv[1], orient="split", dtype={c: "float64" for c in columns})
    model = mlflow.pyfunc.load_model("models:/semknobs-explainer@champion")
    out = model.predict(frame, params={"target": "higher"})
    out.to_json(sys.argv[2], orient="split")
    """
)


def test_pyfunc_by_alias_matches_the_explain_stage(store: Path, folders, tmp_path: Path) -> None:
    versions = _register(folders, GOOD)["versions"]
    promote("semknobs-explainer", params=GATES, force=True, reason="test the pyfunc")
    lots = pd.DataFrame({"lot": ["A", "B", "C", "D"], "peak_stress": [30.0, 40.0, 50.0, 60.0]})
    labels = np.array([[2, 3, 4, 5], [5, 5, 5, 5], [8, 2, 6, 1], [4, 7, 2, 8]], dtype=float)
    tile_lots = np.repeat(lots["lot"].to_numpy(), 2)
    tile_labels = np.repeat(labels, 2, axis=0)
    tiles = _tiles(8)

    # the explain stage's computation, on the same models, tiles and settings
    gen, _ = attgan_model.load(folders["attgan"])
    reg, _ = regressor_model.load(folders["regressor"])
    norm = lots.copy()
    norm[list(ATTRIBUTES)] = np.clip(SCALER.transform(labels), 0, 1)
    params = ExplainParams(
        sweep_points=3, pairs=[], lambdas=[1.0], tradeoff_tiles=2, ig_steps=2, counterfactual=SEARCH
    )
    stage_out = explain(
        gen=gen,
        reg=reg,
        images=torch.from_numpy(tiles).float().div(127.5).sub(1)[:, None],
        attrs=torch.from_numpy(np.clip(SCALER.transform(tile_labels), 0, 1)).float(),
        tiles=pd.DataFrame({"tile": [f"t{i}" for i in range(8)], "lot": tile_lots}),
        lots=norm,
        stress_range=STRESS_RANGE,
        layer=reg.net.layer4,
        params=params,
    )
    stage = stage_out.tables["counterfactual"]

    frame = tiles_frame(tiles, tile_labels)
    frame.to_json(tmp_path / "in.json", orient="split")
    done = subprocess.run(
        [sys.executable, "-c", FRESH, str(tmp_path / "in.json"), str(tmp_path / "out.json")],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    served = pd.read_json(tmp_path / "out.json", orient="split")
    assert len(served) == 8 and set(served["attributes_from"]) == {"given"}
    np.testing.assert_allclose(served["prediction_mpa"], stage["prediction_mpa"], atol=1e-3)
    np.testing.assert_allclose(served["baseline_mpa"], stage["baseline_mpa"], atol=1e-3)
    np.testing.assert_allclose(served["achieved_mpa"], stage["higher_achieved_mpa"], atol=1e-3)
    # the served knob gradient is the stage's, tile by tile (same settings, same draws)
    stage_gradient = stage_out.tables["knob_gradient"]
    for a in ATTRIBUTES:
        np.testing.assert_allclose(served[f"gradient_{a}"], stage_gradient[f"gradient_{a}"],
                                   rtol=1e-4, atol=1e-4)  # fmt: skip
        np.testing.assert_allclose(
            served[f"lot_gain_corrected_{a}"], stage_gradient[f"gradient_{a}"].mean(), rtol=1e-4
        )  # no meter in this bundle: the lot mean, uncorrected (all tiles one lot)
    assert set(served["lot"]) == {"all"} and served["lot_corrected_flag_size"].all()
    for a in ATTRIBUTES:
        np.testing.assert_allclose(served[f"knob_delta_{a}"], stage[f"higher_delta_{a}"], atol=1e-4)
    assert (served["success"].to_numpy() == stage["higher_success"].to_numpy()).all()
    assert versions["explainer"].version  # registered, then promoted above


def test_cli_explain_tiles_scans_and_errors(store: Path, folders, tmp_path: Path, capsys) -> None:
    import tifffile
    from PIL import Image

    tile = tmp_path / "in" / "tile one.png"
    tile.parent.mkdir()
    Image.fromarray(_tiles(1)[0]).save(tile)
    scan = tmp_path / "in" / "scan.tif"
    rng = np.random.default_rng(3)
    tifffile.imwrite(scan, rng.integers(1000, 60000, (128, 192)).astype(np.uint16))
    out = tmp_path / "out"
    argv = ["explain", str(tile), str(scan), "--model", str(folders["explainer"])]
    assert cli.main([*argv, "--out", str(out), "--steps", "3"]) == 0
    table = pd.read_csv(out / "scan.csv")
    assert len(table) == 2 * 6 and set(table["target"]) == {"higher", "lower"}  # 2x3 tiles
    summary = json.loads((out / "tile_one.json").read_text())
    assert summary["tiles"] == 1 and set(summary["targets"]) == {"higher", "lower"}
    assert (out / "tile_one.png").stat().st_size > 0
    # each input's knob gradient: per tile, and the input's (one lot) with its interval
    per_tile = pd.read_csv(out / "scan_gradient.csv")
    assert len(per_tile) == 6 and (out / "scan_gradient.png").stat().st_size > 0
    lot = json.loads((out / "scan.json").read_text())["knob_gradient"]
    for a in ATTRIBUTES:
        assert lot[a]["tiles"] == 6
        assert lot[a]["gradient"] == pytest.approx(per_tile[f"gradient_{a}"].mean(), rel=1e-4)
        assert lot[a]["gradient_low"] < lot[a]["gradient"] < lot[a]["gradient_high"]
        assert "no meter" in lot[a]["note"] and lot[a]["gain"] is None
    printed = capsys.readouterr().out
    assert "knob gradient, gain-corrected" in printed
    assert "signs both agree on" not in printed  # no meter in this bundle: no meter regression
    assert "knob_read" not in summary and "read of each knob" not in printed  # nor a knob read
    assert "edit_texture" not in summary and "by region" not in printed  # nor region misses
    bare = tmp_path / "bare"
    assert cli.main([*argv[:2], "--model", str(folders["explainer"]), "--out", str(bare),
                     "--steps", "3", "--no-gradient"]) == 0  # fmt: skip
    assert "knob_gradient" not in json.loads((bare / "tile_one.json").read_text())
    assert not list(bare.glob("*_gradient.*"))
    # the inputs as one lot: its knob gradient over all 1 + 6 tiles, beside each input's
    pooled = tmp_path / "pooled"
    assert cli.main([*argv, "--out", str(pooled), "--steps", "3", "--one-lot", "B7"]) == 0
    lot = json.loads((pooled / "B7_lot.json").read_text())
    assert lot["tiles"] == 7 and len(lot["inputs"]) == 2
    tiles = pd.read_csv(pooled / "B7_lot_gradient.csv")
    assert len(tiles) == 7 and lot["knob_gradient"]["size"]["gradient"] == pytest.approx(
        tiles["gradient_size"].mean(), rel=1e-4
    )
    assert "lot B7: 7 tile(s)" in capsys.readouterr().out

    bad = tmp_path / "in" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    fresh = tmp_path / "out2"
    assert (
        cli.main(
            [
                "explain",
                str(tile),
                str(bad),
                "--model",
                str(folders["explainer"]),
                "--out",
                str(fresh),
            ]
        )
        == 2
    )
    assert "broken.png" in capsys.readouterr().err
    assert not fresh.exists() or not any(fresh.iterdir())

    assert (
        cli.main(
            [
                "explain",
                str(tile),
                "--model",
                "models:/semknobs-explainer@nope",
                "--out",
                str(fresh),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "semknobs-explainer" in err and "'nope'" in err
    with pytest.raises(ModelError, match="does not exist"):
        KnobExplainer.load(tmp_path / "no-such-model")


@pytest.mark.slow
def test_served_explainer_over_http(store: Path, folders, tmp_path: Path) -> None:
    _register(folders, GOOD)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = [
        sys.executable, "-m", "semknobs.cli", "serve",
        "--model", "models:/semknobs-explainer@candidate", "--port", str(port),
        "--deadline", "3",
    ]  # fmt: skip
    with running_server(command, base_url=base, log_path=tmp_path / "server.log", timeout_s=240):
        url = f"{base}/invocations"
        one = frame_request(tiles_frame(_tiles(1)))
        before = _timed(lambda: post(url, one), 3)

        status, text = post(url, frame_request(tiles_frame(_tiles(1)), steps=3))
        assert status == 200, text
        rows = json.loads(text)["predictions"]
        assert len(rows) == 1 and rows[0]["attributes_from"] == "estimated"
        labels = np.full((3, 4), 5.0)
        request = frame_request(tiles_frame(_tiles(3), labels), target="lower", steps=3)
        status, text = post(url, request)
        assert status == 200, text
        rows = json.loads(text)["predictions"]
        assert len(rows) == 3 and all(r["target_mpa"] < r["baseline_mpa"] for r in rows)
        # the knob gradient per lot named in the request (rows of one lot share its values)
        lots = tiles_frame(_tiles(3), labels).assign(lot=["x", "x", "y"])
        status, text = post(url, frame_request(lots, steps=3))
        assert status == 200, text
        rows = json.loads(text)["predictions"]
        assert [r["lot"] for r in rows] == ["x", "x", "y"]
        assert rows[0]["lot_gain_corrected_size"] == rows[1]["lot_gain_corrected_size"]
        assert rows[2]["lot_gain_corrected_size"] == pytest.approx(rows[2]["gradient_size"])

        bad_requests = {
            "not json": b"{this is not json",
            "no image column": frame_request(pd.DataFrame({"pixels": ["abc"]})),
            "bad base64": frame_request(pd.DataFrame({"image": ["%%%"]})),
            "wrong size": frame_request(tiles_frame(np.zeros((1, 8, 8), np.uint8))),
            "bad target": frame_request(tiles_frame(_tiles(1)), target="sideways"),
            "bad gradient": frame_request(tiles_frame(_tiles(1)), gradient="sometimes"),
            "empty lot": frame_request(tiles_frame(_tiles(2)).assign(lot=["a", ""])),
        }
        for what, payload in bad_requests.items():
            status, text = post(url, payload)
            assert 400 <= status < 500, (what, status, text[:500])
        assert "row 0" in post(url, bad_requests["bad base64"])[1]
        assert "row 1, column 'lot'" in post(url, bad_requests["empty lot"])[1]

        # hostile settings: refused before any work, each named, all answered at once
        tile = tiles_frame(_tiles(1))
        hostile = {
            "steps": (frame_request(tile, steps=10_000_000), "steps=10000000"),
            "nan target": (frame_request(tile, target="nan"), "target=nan"),
            "inf target": (frame_request(tile, target="inf"), "target=inf"),
            "unknown param": (frame_request(tile, stepz=3), "stepz"),
            "NaN literal": (frame_request(tile).replace(b'"data"', b'"x": NaN, "data"'), "NaN"),
            "restarts": (frame_request(tile, restarts=10_000), "restarts=10000"),
            "lam": (frame_request(tile, lam=-1.0), "lam=-1.0"),
            "too many tiles": (frame_request(tiles_frame(_tiles(300))), "at most 256"),
        }
        for what, (payload, named) in hostile.items():
            start = time.monotonic()
            status, text = post(url, payload, timeout_s=60)
            assert status == 400 and named in text, (what, status, text[:300])
            assert time.monotonic() - start < 10, what
        status, text = post(url, frame_request(tile, target=70.0, steps=3))
        assert status == 200, text  # a numeric target is a stress in MPa
        assert json.loads(text)["predictions"][0]["target_mpa"] == 70.0
        # past the deadline (3 s here) the search stops: 504 naming it, the server free again
        heavy = frame_request(tiles_frame(_tiles(200)), steps=1000, restarts=16)
        start = time.monotonic()
        status, text = post(url, heavy, timeout_s=120)
        assert status == 504 and "deadline" in text, (status, text[:300])
        # uncut, this search is >1000 s; the deadline is checked once per Adam step of a batch
        assert time.monotonic() - start < 60
        after = _timed(lambda: post(url, one), 3)
        assert np.median(after) < 3 * np.median(before) + 1.0, (before, after)


def _timed(call, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.monotonic()
        status, text = call()
        assert status == 200, text[:300]
        times.append(time.monotonic() - start)
    return times


def test_search_params_rejects_bad_settings(folders) -> None:
    explainer = KnobExplainer.load(folders["explainer"])
    from semknobs.explain.limits import search_params

    assert search_params(SEARCH, target="42.5").value == 42.5
    assert search_params(SEARCH, target="lower", steps=None).steps == SEARCH.steps
    with pytest.raises(ValueError, match="higher"):
        search_params(SEARCH, target="up")
    with pytest.raises(ValueError, match="steps"):
        search_params(SEARCH, steps=0)
    with pytest.raises(ValueError, match="uint8"):
        explainer.attribute(np.zeros((1, 8, 8), np.uint8))
    assert dataclasses.asdict(explainer.defaults) == dataclasses.asdict(SEARCH)


def test_a_folder_finds_the_model_it_was_logged_as(store: Path, folders, tmp_path: Path) -> None:
    """How `register` finds what a training stage logged: by the folder's digest, newest first;
    a copy finds it too, an edited folder does not."""
    import shutil

    with tracking.stage_run("train_attgan", params={}) as run:
        ref = registry.log_model(folders["attgan"], name="attgan", spec=SPECS["attgan"])
    experiment = run.info.experiment_id
    assert registry.find_logged(folders["attgan"], experiment) == ref
    copy = tmp_path / "attgan"
    shutil.copytree(folders["attgan"], copy)
    assert registry.find_logged(copy, experiment) == ref
    (copy / "config.json").write_text((copy / "config.json").read_text() + "\n")
    assert registry.find_logged(copy, experiment) is None


def test_register_relogs_a_model_missing_from_the_store(store: Path, folders) -> None:
    """Models restored with `dvc pull` into a fresh store: the folder is logged again."""
    gone = registry.LoggedModelRef("models:/m-0000", "m-0000", "0" * 32)
    with tracking.stage_run("train_attgan", params={}):
        attgan = registry.log_model(folders["attgan"], name="attgan", spec=SPECS["attgan"])
    with tracking.stage_run("register", params={}) as run:
        versions = register_models(
            alias="candidate",
            model_dirs=folders,
            logged={"attgan": attgan, "regressor": gone},
            metrics={"regressor": GOOD},
            descriptions={k: f"tiny {k}" for k in NAMES},
            execution="exec-2",
        )
    assert versions["regressor"].run_id == run.info.run_id
    assert versions["regressor"].tags["semknobs.relogged"] == "true"
    assert "semknobs.relogged" not in versions["attgan"].tags
    assert versions["attgan"].run_id == attgan.run_id
