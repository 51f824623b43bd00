import filecmp
import json

import numpy as np
import pandas as pd
import pytest
import tifffile

from semknobs.attributes import ATTRIBUTES
from semknobs.data.render import RenderParams, render_scan
from semknobs.data.synth import synthesize
from semknobs.data.tiles import TileParams, detect_info_bar, tile_scan
from semknobs.meter import measure_tiles

from .conftest import tiny_synth_params


def _files(root):
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())


def test_same_params_and_seed_give_identical_bytes(tmp_path):
    outs = []
    for run, n_jobs in (("a", 1), ("b", 2)):
        root = tmp_path / run
        synthesize(
            params=tiny_synth_params(n_jobs=n_jobs, n_lots=3),
            raw_dir=root / "raw",
            lots_csv=root / "lots.csv",
            truth_dir=root / "truth",
            progress=False,
        )
        outs.append(root)
    a, b = outs
    assert _files(a) == _files(b)
    for rel in _files(a):
        assert filecmp.cmp(a / rel, b / rel, shallow=False), f"{rel} differs between runs"


def test_other_seed_gives_other_data(tmp_path, tiny_study):
    synthesize(
        params=tiny_synth_params(seed=8),
        raw_dir=tmp_path / "raw",
        lots_csv=tmp_path / "lots.csv",
        truth_dir=tmp_path / "truth",
        progress=False,
    )
    assert not filecmp.cmp(tmp_path / "lots.csv", tiny_study["lots"], shallow=False)


def test_study_layout_labels_and_truth(tiny_study):
    lots = pd.read_csv(tiny_study["lots"])
    assert list(lots.columns) == ["lot", *ATTRIBUTES, "peak_stress"]
    assert len(lots) == 6 and lots["lot"].is_unique and (lots["peak_stress"] > 0).all()
    # expert scores are on the 1-10 scale
    assert lots[list(ATTRIBUTES)].min().min() >= 1 and lots[list(ATTRIBUTES)].max().max() <= 10
    scans = sorted(tiny_study["raw"].glob("*/*.tif"))
    assert len(scans) == 6
    image = tifffile.imread(scans[0])
    assert image.dtype == np.uint16 and image.shape == (2 * 128 + 48, 3 * 128)
    assert detect_info_bar(image) == 48
    meta = json.loads((tiny_study["truth"] / "law.json").read_text())
    assert set(meta["lots"]) == set(lots["lot"])
    fields = pd.read_csv(tiny_study["truth"] / "fields.csv")
    assert len(fields) == 6 * 6
    # labels are noisy expert estimates of the truth, not the truth itself
    true = np.array([[meta["lots"][lot]["true"][a] for a in ATTRIBUTES] for lot in lots["lot"]])
    scaled = (lots[list(ATTRIBUTES)].to_numpy() - 1) / 9
    assert np.abs(scaled - true).max() < 0.3
    assert not np.allclose(scaled, true)
    # field truth scatters around its lot's value
    for lot, group in fields.groupby("lot"):
        assert (
            np.abs(group[list(ATTRIBUTES)].mean() - pd.Series(meta["lots"][lot]["true"])).max()
            < 0.1
        )


@pytest.mark.parametrize("attribute", ATTRIBUTES)
def test_each_knob_moves_its_meter_reading_monotonically(attribute):
    """Others held at 0.5, the knob swept: the median meter reading rises at every step."""
    j = ATTRIBUTES.index(attribute)
    rng = np.random.default_rng(11)
    levels = [0.1, 0.3, 0.5, 0.7, 0.9]
    medians = []
    for level in levels:
        a = np.full(4, 0.5)
        a[j] = level
        image = render_scan(np.tile(a, (3, 4, 1)), 128, RenderParams(), rng)
        scan = np.round(np.clip(image, 0, 1) * 65535).astype(np.uint16)
        tiles, _ = tile_scan(scan, TileParams(info_bar_px=0), path="sweep")
        medians.append(measure_tiles(tiles, progress=False)[attribute].median())
    assert np.all(np.diff(medians) > 0), f"{attribute} readings along the sweep: {medians}"
