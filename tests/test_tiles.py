import numpy as np
import pandas as pd
import pytest
from PIL import Image

from semknobs.data.scans import read_scan
from semknobs.data.tiles import (
    MANIFEST_COLUMNS,
    TileParams,
    detect_info_bar,
    load_tiles,
    skipped_files,
    tile_dataset,
    tile_scan,
)
from semknobs.errors import DataError

from .conftest import write_scan


def _scan(height=300, width=520, bar=40, dtype=np.uint16, seed=0):
    rng = np.random.default_rng(seed)
    top = np.iinfo(dtype).max
    body = rng.integers(top // 10, top // 2, (height, width)).astype(dtype)
    if bar:
        strip = np.zeros((bar, width), dtype)
        strip[10:20, 10:200:3] = top  # sparse "text"
        body = np.concatenate([body, strip])
    return body


def test_tiling_geometry_drops_remainders_and_records_positions():
    scan = _scan(300, 520, bar=40)
    tiles, rc = tile_scan(scan, TileParams(tile_px=128, out_px=64), path="x.tif")
    assert tiles.shape == (2 * 4, 64, 64) and tiles.dtype == np.uint8  # 300 // 128, 520 // 128
    assert rc.tolist() == [[r, c] for r in range(2) for c in range(4)]


def test_tile_content_is_the_area_average_of_its_block():
    scan = np.zeros((256, 256), np.uint16)
    scan[:128, 128:] = 1000  # top-right tile bright
    scan[0, 0] = 2000  # one bright pixel stretches the range
    tiles, _ = tile_scan(
        scan, TileParams(tile_px=128, out_px=64, info_bar_px=0, percentiles=(0, 100)), path="x"
    )
    assert tiles[1].min() == tiles[1].max() == 128  # 1000 of 2000 -> mid grey
    assert tiles[2].max() == 0 and tiles[3].max() == 0


def test_auto_bar_detection_and_explicit_crop_agree():
    scan = _scan(256, 384, bar=40)
    assert detect_info_bar(scan) == 40
    auto, _ = tile_scan(scan, TileParams(info_bar_px="auto"), path="x")
    explicit, _ = tile_scan(scan, TileParams(info_bar_px=40), path="x")
    np.testing.assert_array_equal(auto, explicit)
    assert detect_info_bar(_scan(256, 384, bar=0)) == 0


def test_too_tall_auto_bar_is_refused():
    scan = np.zeros((256, 256), np.uint16)  # a blank scan looks like one big bar
    with pytest.raises(DataError, match="set tile.info_bar_px"):
        tile_scan(scan, TileParams(), path="blank.tif")


@pytest.mark.parametrize(
    "suffix, dtype",
    [
        (".tif", np.uint8),
        (".tif", np.uint16),
        (".png", np.uint8),
        (".png", np.uint16),
        (".tiff", np.uint16),
    ],
)
def test_formats_read_back_identically(tmp_path, suffix, dtype):
    scan = _scan(256, 256, bar=20, dtype=dtype)
    path = tmp_path / f"s{suffix}"
    write_scan(path, scan)
    np.testing.assert_array_equal(read_scan(path), scan)


def test_rgb_with_equal_channels_is_converted_and_colour_is_refused(tmp_path):
    grey = _scan(256, 256, bar=0, dtype=np.uint8)
    Image.fromarray(np.stack([grey] * 3, -1)).save(tmp_path / "grey_rgb.png")
    np.testing.assert_array_equal(read_scan(tmp_path / "grey_rgb.png"), grey)
    colour = np.stack([grey, grey // 2, grey], -1)
    Image.fromarray(colour).save(tmp_path / "colour.png")
    with pytest.raises(DataError, match="colour.png: colour image"):
        read_scan(tmp_path / "colour.png")


def test_dataset_manifest_and_shards(tmp_path):
    raw = tmp_path / "raw"
    write_scan(raw / "A1" / "s1.tif", _scan(256, 384, seed=1))
    write_scan(raw / "A1" / "s2.png", _scan(256, 256, dtype=np.uint8, seed=2))
    write_scan(raw / "B-2" / "s1.tif", _scan(300, 300, seed=3))
    (raw / "B-2" / "notes.txt").write_text("not a scan")
    manifest = tile_dataset(
        params=TileParams(n_jobs=2), raw_dir=raw, tiles_dir=tmp_path / "tiles", progress=False
    )
    assert list(manifest.columns) == list(MANIFEST_COLUMNS)
    assert manifest.groupby("lot").size().to_dict() == {"A1": 6 + 4, "B-2": 4}
    assert manifest["tile"].tolist() == list(range(14))
    assert sorted(p.name for p in (tmp_path / "tiles").iterdir()) == [
        "A1.npy",
        "B-2.npy",
        "manifest.csv",
    ]
    tiles, back = load_tiles(tmp_path / "tiles")
    assert tiles.shape == (14, 64, 64)
    pd.testing.assert_frame_equal(back, pd.read_csv(tmp_path / "tiles" / "manifest.csv"))
    row = manifest[
        (manifest.lot == "A1") & (manifest.scan == "s1") & (manifest.row == 1) & (manifest.col == 2)
    ].iloc[0]
    assert (row.y0, row.x0) == (128, 256)
    direct, _ = tile_scan(_scan(256, 384, seed=1), TileParams(), path="x")
    np.testing.assert_array_equal(tiles[row.tile], direct[1 * 3 + 2])


def test_synthetic_and_user_data_take_the_same_path(tiny_study):
    tiles, manifest = load_tiles(tiny_study["tiles"])
    assert len(manifest) == 6 * 6 and tiles.shape[1:] == (64, 64)
    assert manifest["std"].min() > 10  # no blank tiles from the generator


def test_skipped_files_and_scanless_lot_folders_are_named(tmp_path):
    raw = tmp_path / "raw"
    write_scan(raw / "L1" / "a.tif", _scan(130, 130, bar=0))
    (raw / "L1" / "notes.txt").write_text("settings")
    (raw / "L1" / ".DS_Store").write_text("")  # hidden: not worth a word
    (raw / "L2").mkdir()
    (raw / "L2" / "scan.jpg").write_bytes(b"\xff\xd8")
    (raw / "L3").mkdir()
    assert skipped_files(raw) == [
        f"skipped 2 file(s) in {raw} that are not .tif/.tiff/.png scans: L1/notes.txt, L2/scan.jpg",
        f"lot folder(s) without any scan in {raw}: L2, L3",
    ]
    manifest = tile_dataset(
        params=TileParams(n_jobs=1), raw_dir=raw, tiles_dir=tmp_path / "t", progress=False
    )
    assert set(manifest["lot"]) == {"L1"}  # skipped, as named; validation reports L2 and L3
    write_scan(raw / "L2" / "b.png", _scan(130, 130, bar=0, dtype=np.uint8))
    (raw / "L3").rmdir()
    (raw / "L1" / "notes.txt").unlink()
    (raw / "L2" / "scan.jpg").unlink()
    assert skipped_files(raw) == []
