"""Great Expectations quality suite and the validate stage, run for real on small datasets."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from semknobs.config import from_mapping
from semknobs.data.quality import ValidateParams, check_quality
from semknobs.data.tiles import MANIFEST_COLUMNS, tile_statistics
from semknobs.errors import ParamsError, ValidationFailed
from semknobs.stages import validate

OUT_PX = 16
COLS = 4  # tiles per scan row


def noise_tiles(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(rng.normal(128, 30, (n, OUT_PX, OUT_PX)), 0, 255).astype(np.uint8)


def make_tiles(lots: dict[str, int]) -> dict[str, np.ndarray]:
    return {lot: noise_tiles(n, seed) for seed, (lot, n) in enumerate(lots.items())}


def manifest_of(tiles: dict[str, np.ndarray]) -> pd.DataFrame:
    """The manifest the tile stage would write: one 'scan_01' per lot, COLS tiles per row."""
    parts = []
    for lot, array in tiles.items():
        n = len(array)
        row, col = np.divmod(np.arange(n), COLS)
        parts.append(
            pd.DataFrame(
                {
                    "lot": lot,
                    "scan": "scan_01",
                    "file": f"{lot}/scan_01.tif",
                    "row": row,
                    "col": col,
                    "y0": row * 32,
                    "x0": col * 32,
                    "tile_px": 32,
                    "out_px": OUT_PX,
                    "shard": f"{lot}.npy",
                    "index": np.arange(n),
                    **tile_statistics(array),
                }
            )
        )
    manifest = pd.concat(parts, ignore_index=True)
    manifest.insert(0, "tile", np.arange(len(manifest)))
    return manifest[list(MANIFEST_COLUMNS)]


def labels_of(lots: list[str]) -> pd.DataFrame:
    n = len(lots)
    return pd.DataFrame(
        {
            "lot": lots,
            "size": np.linspace(1, 3, n),
            "porosity": np.linspace(0, 1, n),
            "dispersity": np.ones(n),
            "facetness": np.zeros(n),
            "peak_stress": np.linspace(250, 350, n),
        }
    )


def check(
    tmp_path: Path,
    edit: Callable[[dict[str, np.ndarray]], None] | None = None,
    counts: dict[str, int] | None = None,
    labelled: list[str] | None = None,
    params: ValidateParams | None = None,
):
    tiles = make_tiles(counts or {"L01": 8, "L02": 8, "L03": 8})
    if edit:
        edit(tiles)
    return check_quality(
        manifest=manifest_of(tiles),
        lots=labels_of(labelled if labelled is not None else sorted(tiles)),
        params=params or ValidateParams(),
        docs_dir=tmp_path / "docs",
    )


def lines_about(result, lot: str) -> list[str]:
    return [line for line in result.failures if f"lot {lot}" in line or f", {lot}" in line]


def _failed_report(lots_csv: Path, tiles_dir: Path, report_dir: Path) -> str:
    """The report of a validation that must fail."""
    with pytest.raises(ValidationFailed) as info:
        validate_dataset(
            params=ValidateParams(), lots_csv=lots_csv, tiles_dir=tiles_dir, report_dir=report_dir
        )
    return str(info.value)


def test_clean_dataset_passes_and_writes_data_docs(tmp_path: Path) -> None:
    result = check(tmp_path)
    assert result.success, result.failures
    assert result.failures == []
    stats = result.statistics
    assert stats["tiles_per_lot"] == {"L01": 8, "L02": 8, "L03": 8}
    assert stats["evaluated_expectations"] == stats["successful_expectations"] == 12
    docs = tmp_path / "docs"
    assert result.docs_index == docs / "index.html"
    assert (docs / "index.html").is_file()
    pages = sorted(p.relative_to(docs).as_posix() for p in docs.rglob("*.html"))
    assert "expectations/tiles_quality.html" in pages
    assert sum(p.startswith("validations/") for p in pages) == 3
    # the pages were built in a temporary sibling and moved: links must not point there
    assert ".tmp" not in (docs / "index.html").read_text()
    assert not list(tmp_path.glob(".docs*"))


def test_data_docs_are_replaced_not_accumulated(tmp_path: Path) -> None:
    check(tmp_path)
    check(tmp_path)
    pages = list((tmp_path / "docs" / "validations").rglob("*.html"))
    assert len(pages) == 3


def test_blank_tile_names_lot_and_scan_location(tmp_path: Path) -> None:
    def edit(tiles):
        tiles["L03"][1] = 100
        tiles["L03"][6] = 101

    result = check(tmp_path, edit)
    assert not result.success
    assert lines_about(result, "L03") == [
        "lot L03: 2 blank tiles (std < 4): L03/scan_01.tif row 0 col 1, L03/scan_01.tif row 1 col 2"
    ]
    assert lines_about(result, "L01") == []


def test_saturated_tiles_bright_and_dark(tmp_path: Path) -> None:
    def edit(tiles):
        tiles["L01"][0, : OUT_PX // 2] = 255  # half the pixels white
        tiles["L02"][5, : OUT_PX * 3 // 4] = 0  # three quarters black

    result = check(tmp_path, edit)
    bright = [x for x in result.failures if "frac_bright" in x]
    dark = [x for x in result.failures if "frac_dark" in x]
    assert bright == ["lot L01: 1 saturated tile (frac_bright > 0.25): L01/scan_01.tif row 0 col 0"]
    assert dark == ["lot L02: 1 saturated tile (frac_dark > 0.5): L02/scan_01.tif row 1 col 1"]


def test_mean_outside_range(tmp_path: Path) -> None:
    def edit(tiles):
        tiles["L02"][2] = np.clip(tiles["L02"][2].astype(int) + 100, 0, 255)

    params = ValidateParams(mean_range=(10.0, 200.0), max_frac_bright=1.0)
    result = check(tmp_path, edit, params=params)
    assert result.failures == [
        "lot L02: 1 too dark or too bright tile (mean outside [10, 200]): "
        "L02/scan_01.tif row 0 col 2"
    ]


def test_duplicate_tiles_across_lots(tmp_path: Path) -> None:
    def edit(tiles):
        tiles["L02"][3] = tiles["L01"][0]

    result = check(tmp_path, edit)
    assert len(result.failures) == 1
    line = result.failures[0]
    assert line.startswith("lots L01, L02: 2 identical tiles (sha1 ")
    assert "L01/scan_01.tif row 0 col 0" in line and "L02/scan_01.tif row 0 col 3" in line


def test_too_few_tiles_for_a_lot(tmp_path: Path) -> None:
    result = check(tmp_path, counts={"L01": 8, "L02": 5, "L03": 9})
    assert result.failures == ["lot L02: only 5 tiles (min_tiles_per_lot = 8)"]


def test_labelled_lot_without_tiles(tmp_path: Path) -> None:
    result = check(tmp_path, labelled=["L01", "L02", "L03", "L31"])
    assert result.failures == ["lots.csv: line 5: lot L31 has a label row but no scans"]


def test_tiled_lot_without_label(tmp_path: Path) -> None:
    result = check(tmp_path, labelled=["L01", "L02"])
    assert result.failures == ["lot L03 has scans but no label row in lots.csv (L03/scan_01.tif)"]


def test_params_are_strict(tmp_path: Path) -> None:
    params = from_mapping(ValidateParams, {"mean_range": [5, 250], "min_tiles_per_lot": 2})
    assert params.mean_range == (5.0, 250.0)
    with pytest.raises(ParamsError, match="mean_range"):
        from_mapping(ValidateParams, {"mean_range": [200, 100]})
    with pytest.raises(ParamsError, match="min_tiles_per_lot"):
        from_mapping(ValidateParams, {"min_tiles_per_lot": 0})


# --------------------------------------------------------------------------------------------
# the validate stage: files in, reports out


def validate_dataset(*, params, lots_csv, tiles_dir, report_dir):
    """The stage's run; its summary.json, as later stages read it."""
    validate.run(params, validate.Paths(lots=lots_csv, tiles_dir=tiles_dir, reports=report_dir))
    return json.loads((Path(report_dir) / "summary.json").read_text())


def write_dataset(root: Path, tiles: dict[str, np.ndarray], labelled: list[str]) -> tuple:
    tiles_dir = root / "tiles"
    tiles_dir.mkdir(parents=True)
    for lot, array in tiles.items():
        np.save(tiles_dir / f"{lot}.npy", array)
    manifest_of(tiles).to_csv(tiles_dir / "manifest.csv", index=False, float_format="%.5g")
    lots_csv = root / "lots.csv"
    labels_of(labelled).to_csv(lots_csv, index=False)
    return lots_csv, tiles_dir


def test_validate_dataset_writes_reports_on_success(tmp_path: Path) -> None:
    lots_csv, tiles_dir = write_dataset(tmp_path, make_tiles({"A": 8, "B": 8}), ["A", "B"])
    report_dir = tmp_path / "report"
    summary = validate_dataset(
        params=ValidateParams(), lots_csv=lots_csv, tiles_dir=tiles_dir, report_dir=report_dir
    )
    assert summary["success"] is True
    assert summary["tiles_per_lot"] == {"A": 8, "B": 8}
    assert summary["data/n_tiles"] == 16 and summary["data/n_failures"] == 0
    assert json.loads((report_dir / "summary.json").read_text()) == summary
    assert (report_dir / "report.txt").read_text().startswith("Data validation PASSED")
    assert (report_dir / "data_docs" / "index.html").is_file()


def test_validate_dataset_reports_quality_failures_then_raises(tmp_path: Path) -> None:
    tiles = make_tiles({"A": 8, "B": 3})
    tiles["A"][0] = 60
    lots_csv, tiles_dir = write_dataset(tmp_path, tiles, ["A", "B", "C"])
    report_dir = tmp_path / "report"
    report = _failed_report(lots_csv, tiles_dir, report_dir)
    assert report.startswith("Data validation FAILED (3 problems)")
    for text in ("lot A: 1 blank tile", "lot B: only 3 tiles", "lot C has a label row but no"):
        assert text in report
    assert (report_dir / "report.txt").read_text().rstrip("\n") == report
    summary = json.loads((report_dir / "summary.json").read_text())
    assert summary["success"] is False
    assert summary["tiles_per_lot"] == {"A": 8, "B": 3, "C": 0}
    assert len(summary["quality_failures"]) == 3
    assert (report_dir / "data_docs" / "index.html").is_file()


def test_validate_dataset_collects_schema_failures_of_both_files(tmp_path: Path) -> None:
    lots_csv, tiles_dir = write_dataset(tmp_path, make_tiles({"A": 8, "B": 8}), ["A", "B"])
    lots = pd.read_csv(lots_csv)
    lots.loc[1, "peak_stress"] = -3.0
    lots.to_csv(lots_csv, index=False)
    manifest = pd.read_csv(tiles_dir / "manifest.csv")
    manifest.loc[2, "frac_dark"] = 2.0
    manifest.to_csv(tiles_dir / "manifest.csv", index=False)
    stale = tmp_path / "report" / "data_docs"
    stale.mkdir(parents=True)

    report = _failed_report(lots_csv, tiles_dir, tmp_path / "report")
    assert "lots.csv: line 3 (lot 'B'): peak_stress = -3.0 fails greater_than(0)" in report
    assert "line 4 (lot 'A', tile 2): frac_dark = 2.0 fails in_range(0, 1)" in report
    assert "Quality checks not run: " in report  # a broken manifest stops the tile suite
    assert not stale.exists()
    assert sorted(p.name for p in (tmp_path / "report").iterdir()) == ["report.txt", "summary.json"]
    assert not list(tmp_path.glob(".report*"))  # the folder was built aside and swapped in


def test_validate_lists_label_schema_and_tile_quality_problems_together(tmp_path: Path) -> None:
    """A bad label cell does not hide the tile suite: one round lists everything (the README)."""
    tiles = make_tiles({"A": 8, "B": 8})
    tiles["A"][5] = 60  # blank: row 1 col 1
    lots_csv, tiles_dir = write_dataset(tmp_path, tiles, ["A", "B", "L31"])
    lots = pd.read_csv(lots_csv).drop(columns=["facetness"])
    lots.loc[1, "peak_stress"] = -3.0
    lots.to_csv(lots_csv, index=False)
    report = _failed_report(lots_csv, tiles_dir, tmp_path / "report")
    expected = [
        f"{lots_csv}: lot label table lacks required column(s) facetness",
        f"{lots_csv}: line 3 (lot 'B'): peak_stress = -3.0 fails greater_than(0)",
        "lot A: 1 blank tile (std < 4): A/scan_01.tif row 1 col 1",
        f"{lots_csv}: line 4: lot L31 has a label row but no scans",
    ]
    for text in expected:
        assert sum(text in line for line in report.splitlines()) == 1, (text, report)
    assert report.startswith("Data validation FAILED (4 problems)")
    assert "not run" not in report and "not checked" not in report
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert summary["success"] is False
    assert len(summary["schema_failures"]) == 2 and len(summary["quality_failures"]) == 2
    assert summary["tiles_per_lot"] == {"A": 8, "B": 8, "L31": 0}
    assert (tmp_path / "report" / "data_docs" / "index.html").is_file()


def test_quality_without_labels_still_checks_the_tiles(tmp_path: Path) -> None:
    tiles = make_tiles({"L01": 8, "L02": 8})
    tiles["L02"][0] = 90
    result = check_quality(
        manifest=manifest_of(tiles), lots=None, params=ValidateParams(), docs_dir=tmp_path / "d"
    )
    assert result.failures == ["lot L02: 1 blank tile (std < 4): L02/scan_01.tif row 0 col 0"]
    assert result.statistics["n_lots_labelled"] is None
    assert result.statistics["evaluated_expectations"] == 9  # no label coverage checks


def test_repeated_label_rows_are_named_by_their_lines(tmp_path: Path) -> None:
    lots = labels_of(["L01", "L09", "L02", "L09"])  # CSV lines 2..5
    result = check_quality(
        manifest=manifest_of(make_tiles({"L01": 8, "L02": 8})),
        lots=lots,
        params=ValidateParams(),
        docs_dir=tmp_path / "d",
        lots_source="data/user/lots.csv",
    )
    assert result.failures == [
        "data/user/lots.csv: lines 3, 5: lot L09 has a label row but no scans"
    ]


def test_validate_dataset_checks_shards_against_the_manifest(tmp_path: Path) -> None:
    lots_csv, tiles_dir = write_dataset(tmp_path, make_tiles({"A": 8, "B": 8}), ["A", "B"])
    (tiles_dir / "B.npy").unlink()
    np.save(tiles_dir / "A.npy", noise_tiles(5, 0))
    report = _failed_report(lots_csv, tiles_dir, tmp_path / "report")
    assert "B.npy: shard of lot B listed in manifest.csv is missing" in report
    assert "A.npy: manifest.csv indexes tile 7 of lot A but the shard holds 5 tiles" in report


def test_validate_dataset_missing_inputs_are_reported_together(tmp_path: Path) -> None:
    report = _failed_report(tmp_path / "lots.csv", tmp_path / "tiles", tmp_path / "report")
    assert "lots.csv: lot label table not found" in report
    assert "manifest.csv: tile manifest not found" in report
    assert (tmp_path / "report" / "report.txt").is_file()
