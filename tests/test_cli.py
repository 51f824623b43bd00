import numpy as np
from PIL import Image

from semknobs.cli import main
from semknobs.data.tiles import load_tiles


def test_measure_a_tile_and_a_scan(tiny_study, tmp_path, capsys):
    tiles, _ = load_tiles(tiny_study["tiles"])
    Image.fromarray(tiles[0]).save(tmp_path / "tile.png")
    scan = next(tiny_study["raw"].glob("*/*.tif"))
    assert main(["measure", str(tmp_path / "tile.png"), "--csv", str(tmp_path / "r.csv")]) == 0
    assert main(["measure", "--tile", "--params", "absent.yaml", str(scan)]) == 0
    out = capsys.readouterr().out
    assert "porosity" in out and "mean per image" in out
    lines = (tmp_path / "r.csv").read_text().splitlines()
    assert lines[0].startswith("image,size,porosity,dispersity,facetness")
    assert np.isfinite(float(lines[1].split(",")[1]))


def test_measure_unreadable_file_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "bad.png").write_bytes(b"not a png")
    assert main(["measure", str(tmp_path / "bad.png")]) == 2
    assert "bad.png: unreadable image" in capsys.readouterr().err


def test_profile_is_laid_over_params(tmp_path, capsys):
    import shutil

    import yaml

    from semknobs.config import load_section
    from semknobs.data.tiles import TileParams
    from semknobs.meter import MeasureParams
    from semknobs.train.attgan_params import TrainAttGANStageParams

    from .conftest import ROOT

    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    argv = [
        "profile",
        "paper",
        "--params",
        str(tmp_path / "params.yaml"),
        "--dir",
        str(ROOT / "profiles"),
    ]
    assert main(argv) == 0
    assert load_section(TileParams, "tile", tmp_path / "params.yaml").out_px == 128
    stage = load_section(TrainAttGANStageParams, "train_attgan", tmp_path / "params.yaml")
    assert stage.train.model.img_size == 128 and stage.train.model.enc_layers == 5
    meter = load_section(MeasureParams, "measure", tmp_path / "params.yaml").meter
    assert meter.pore_radius == 4 and meter.min_area == 16.0  # lengths x2, areas x4 at 128 px
    # the profile's tuning space, merged, checks against its (deeper) AttGAN
    from semknobs.train.attgan_space import check_against, dimensions
    from semknobs.train.tune_attgan import TuneAttGANParams

    tune = load_section(TuneAttGANParams, "tune_attgan", tmp_path / "params.yaml")
    check_against(dimensions(tune.space), stage.train)
    assert tune.trial_steps == 3000 and tune.space["model"] == {"shortcut_layers": [0, 2]}
    merged = yaml.safe_load((tmp_path / "params.yaml").read_text())
    assert merged["split"] == yaml.safe_load((ROOT / "params.yaml").read_text())["split"]
    assert main(["profile", "nope", "--params", str(tmp_path / "params.yaml")]) == 2


def test_serve_refuses_a_negative_stop_timeout(capsys):
    assert main(["serve", "--stop-timeout", "-1"]) == 2
    assert "--stop-timeout must be >= 0 seconds, got -1" in capsys.readouterr().err


def test_compare_refuses_fewer_than_one_execution_and_a_missing_store(
    tmp_path, monkeypatch, capsys
):
    assert main(["compare", "--last", "0"]) == 2
    assert "--last must be at least 1, got 0" in capsys.readouterr().err
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["compare"]) == 2
    assert "no MLflow store here (mlruns/mlflow.db)" in capsys.readouterr().err
    assert not (tmp_path / "mlruns").exists()  # nothing created
