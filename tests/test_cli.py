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
    from semknobs.train.attgan import TrainAttGANStageParams

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
    merged = yaml.safe_load((tmp_path / "params.yaml").read_text())
    assert merged["split"] == yaml.safe_load((ROOT / "params.yaml").read_text())["split"]
    assert main(["profile", "nope", "--params", str(tmp_path / "params.yaml")]) == 2
