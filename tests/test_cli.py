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
