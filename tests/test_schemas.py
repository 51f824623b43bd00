"""pandera schemas of lots.csv and the tile manifest: readable, complete failure reports."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from semknobs.data.schemas import (
    LOTS_SCHEMA,
    MANIFEST_SCHEMA,
    check_lots,
    check_manifest,
    read_lots,
    read_manifest,
    validate_lots,
    validate_manifest,
)
from semknobs.data.tiles import MANIFEST_COLUMNS, tile_statistics
from semknobs.errors import DataError, ValidationFailed

LOTS_CSV = """lot,size,porosity,dispersity,facetness,peak_stress,note
L01,1.0,2.0,3.0,4.0,310.5,first
L02,2,3,4,5,295,
007,0.5,-1,0,1e3,400,leading zeros stay
NA,0,0,0,0,1,a lot called NA
"""


def write(tmp_path: Path, text: str, name: str = "lots.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def lots_frame(n: int = 3) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "lot": [f"L{i:02d}" for i in range(1, n + 1)],
            "size": np.linspace(1, 2, n),
            "porosity": np.linspace(0, 1, n),
            "dispersity": np.ones(n),
            "facetness": np.zeros(n),
            "peak_stress": np.linspace(200, 300, n),
        }
    )


def failure_report(df: pd.DataFrame, source: str = "data/lots.csv") -> str:
    with pytest.raises(ValidationFailed) as info:
        validate_lots(df, source)
    return str(info.value)


def test_valid_lots_pass_and_keep_ids_as_text(tmp_path: Path) -> None:
    lots = read_lots(write(tmp_path, LOTS_CSV))
    assert list(lots["lot"]) == ["L01", "L02", "007", "NA"]
    assert lots["peak_stress"].dtype == float
    assert "note" in lots.columns  # extra columns are allowed
    LOTS_SCHEMA.validate(lots)


def test_missing_file_and_empty_file_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nope\.csv: lot label table not found"):
        read_lots(tmp_path / "nope.csv")
    with pytest.raises(DataError, match=r"empty\.csv: lot label table is empty"):
        read_lots(write(tmp_path, "", "empty.csv"))
    with pytest.raises(DataError, match=r"header\.csv: .*no lot rows"):
        read_lots(write(tmp_path, LOTS_CSV.splitlines()[0] + "\n", "header.csv"))


def test_unparsable_file_is_a_data_error(tmp_path: Path) -> None:
    text = 'lot,size,porosity,dispersity,facetness,peak_stress\nL01,1,2,3,4,"5\n'
    with pytest.raises(DataError, match=r"bad\.csv: lot label table is not a readable CSV"):
        read_lots(write(tmp_path, text, "bad.csv"))


def test_missing_columns_are_listed(tmp_path: Path) -> None:
    text = "lot,size,porosity,dispersity\nL01,1,2,3\n"
    with pytest.raises(DataError) as info:
        read_lots(write(tmp_path, text))
    message = str(info.value)
    assert "lots.csv" in message
    assert "facetness, peak_stress" in message
    assert not isinstance(info.value, ValidationFailed)


def test_missing_column_in_a_frame_is_a_validation_failure() -> None:
    message = failure_report(lots_frame().drop(columns=["porosity"]))
    assert "data/lots.csv: missing required column 'porosity'" in message


def test_nan_score_names_lot_and_column() -> None:
    df = lots_frame()
    df.loc[1, "porosity"] = np.nan
    message = failure_report(df)
    assert "data/lots.csv: line 3 (lot 'L02'): porosity is missing" in message
    assert "Traceback" not in message and "SchemaErrors" not in message


def test_infinite_score_fails() -> None:
    df = lots_frame()
    df.loc[0, "size"] = np.inf
    assert "line 2 (lot 'L01'): size = inf fails finite" in failure_report(df)


def test_negative_stress_names_line_lot_column_value_and_check() -> None:
    df = lots_frame(7)
    df.loc[6, "peak_stress"] = -3.0
    message = failure_report(df)
    assert "data/lots.csv: line 8 (lot 'L07'): peak_stress = -3.0 fails greater_than(0)" in message


def test_duplicate_lot_is_named_with_its_lines(tmp_path: Path) -> None:
    text = LOTS_CSV + "L02,1,1,1,1,1,again\n"
    with pytest.raises(ValidationFailed) as info:
        read_lots(write(tmp_path, text))
    message = str(info.value)
    assert "lots.csv: lot 'L02' appears 2 times (line 3, line 6)" in message


@pytest.mark.parametrize("bad", ["../x", "a b", "L1/2", "", "L1\n"])
def test_lot_ids_with_path_characters_are_refused(bad: str) -> None:
    df = lots_frame()
    df.loc[2, "lot"] = bad
    message = failure_report(df)
    assert f"line 4: lot {bad!r} fails" in message


def test_unreadable_number_names_lot(tmp_path: Path) -> None:
    text = LOTS_CSV.replace("L02,2,3", "L02,big,3")
    with pytest.raises(ValidationFailed) as info:
        read_lots(write(tmp_path, text))
    assert "line 3 (lot 'L02'): size = 'big' cannot be read as float64" in str(info.value)


def test_several_failures_are_all_listed_one_per_line() -> None:
    df = lots_frame(4)
    df.loc[0, "peak_stress"] = 0.0
    df.loc[1, "facetness"] = np.nan
    df.loc[2, "lot"] = "../x"
    df.loc[3, "lot"] = "L01"
    message = failure_report(df)
    lines = message.splitlines()
    assert lines[0] == "data/lots.csv does not match its schema:"
    expected = [
        "line 2 (lot 'L01'): peak_stress = 0.0 fails greater_than(0)",
        "line 3 (lot 'L02'): facetness is missing",
        "lot '../x' fails",
        "lot 'L01' appears 2 times",
    ]
    for text in expected:
        assert sum(text in line for line in lines) == 1, (text, message)
    assert len(lines) == 1 + len(expected)
    assert all(line.startswith("data/lots.csv: ") for line in lines[1:])


def test_check_lots_lists_a_missing_column_and_the_bad_cells_together(tmp_path: Path) -> None:
    text = "lot,size,porosity,dispersity,peak_stress\nA,1,1,1,30\nB,x,1,1,-2\nA,1,1,1,5\n"
    checked = check_lots(write(tmp_path, text))
    assert not checked.ok and checked.table is None
    assert list(checked.rows["lot"]) == ["A", "B", "A"]  # as read, for label coverage
    path = tmp_path / "lots.csv"
    assert checked.problems == [
        f"{path}: lot label table lacks required column(s) facetness "
        "(found: lot, size, porosity, dispersity, peak_stress)",
        f"{path}: lot 'A' appears 2 times (line 2, line 4); lot values must be unique",
        f"{path}: line 3 (lot 'B'): size = 'x' cannot be read as float64",
        f"{path}: line 3 (lot 'B'): peak_stress = -2.0 fails greater_than(0)",
    ]
    with pytest.raises(DataError, match="lacks required column"):
        read_lots(path)  # the raising reader stops at the first structural problem


def test_check_lots_of_good_missing_and_headless_files(tmp_path: Path) -> None:
    good = check_lots(write(tmp_path, LOTS_CSV))
    assert good.ok and list(good.table["lot"]) == ["L01", "L02", "007", "NA"]
    missing = check_lots(tmp_path / "nope.csv")
    assert missing.rows is None and missing.problems == [
        f"{tmp_path / 'nope.csv'}: lot label table not found"
    ]
    headless = check_lots(write(tmp_path, "lot,size\n", "h.csv"))
    assert len(headless.problems) == 2 and "no lot rows" in headless.problems[1]


def test_check_manifest_without_a_unique_key_column(tmp_path: Path) -> None:
    path = tmp_path / "manifest.csv"
    frame = manifest_frame().drop(columns=["shard"])
    frame.loc[1, "std"] = -1.0
    frame.to_csv(path, index=False)
    checked = check_manifest(path)
    assert "lacks required column(s) shard" in checked.problems[0]
    assert any("line 3 (lot 'L01', tile 1): std = -1.0" in x for x in checked.problems[1:])


# --------------------------------------------------------------------------------------------
# manifest


def manifest_frame(n: int = 6) -> pd.DataFrame:
    tiles = np.random.default_rng(0).integers(0, 256, (n, 16, 16), dtype=np.uint8)
    lots = ["L01"] * (n // 2) + ["L02"] * (n - n // 2)
    index = list(range(n // 2)) + list(range(n - n // 2))
    frame = pd.DataFrame(
        {
            "tile": range(n),
            "lot": lots,
            "scan": "s1",
            "file": [f"{lot}/s1.tif" for lot in lots],
            "row": 0,
            "col": index,
            "y0": 0,
            "x0": [32 * i for i in index],
            "tile_px": 32,
            "out_px": 16,
            "shard": [f"{lot}.npy" for lot in lots],
            "index": index,
            **tile_statistics(tiles),
        }
    )
    return frame[list(MANIFEST_COLUMNS)]


def test_manifest_schema_covers_every_manifest_column() -> None:
    assert set(MANIFEST_SCHEMA.columns) == set(MANIFEST_COLUMNS)


def test_valid_manifest_round_trips_through_csv(tmp_path: Path) -> None:
    frame = manifest_frame()
    frame.loc[0, "sha1"] = "1" * 40  # all digits: must stay text
    path = tmp_path / "manifest.csv"
    frame.to_csv(path, index=False, float_format="%.5g")
    manifest = read_manifest(path)
    assert manifest.loc[0, "sha1"] == "1" * 40
    assert manifest["row"].dtype == np.int64


def test_manifest_bad_rows_are_named_with_line_lot_and_tile() -> None:
    frame = manifest_frame()
    frame.loc[1, "std"] = -1.0
    frame.loc[2, "frac_bright"] = 1.5
    frame.loc[3, "sha1"] = "xyz"
    frame.loc[4, "shard"] = "../L02.npy"
    frame.loc[5, "index"] = 0  # (lot, shard, index) now repeats row 3's
    frame.loc[5, "tile"] = 0
    with pytest.raises(ValidationFailed) as info:
        validate_manifest(frame, "tiles/manifest.csv")
    message = str(info.value)
    assert "line 3 (lot 'L01', tile 1): std = -1.0 fails in_range(0, 255)" in message
    assert "line 4 (lot 'L01', tile 2): frac_bright = 1.5 fails in_range(0, 1)" in message
    assert "line 5 (lot 'L02', tile 3): sha1 = 'xyz' fails" in message
    assert "line 6 (lot 'L02', tile 4): shard = '../L02.npy' fails" in message
    assert "(lot, shard, index) = ('L02', 'L02.npy', 0) appears 2 times" in message
    assert "tile 0 appears 2 times" in message


def test_manifest_missing_columns_are_listed(tmp_path: Path) -> None:
    path = tmp_path / "manifest.csv"
    manifest_frame().drop(columns=["sha1", "frac_dark"]).to_csv(path, index=False)
    with pytest.raises(DataError, match=r"manifest.csv: .*frac_dark, sha1"):
        read_manifest(path)


def test_long_manifest_failures_are_capped_per_check() -> None:
    frame = manifest_frame(40)
    frame["std"] = -1.0
    with pytest.raises(ValidationFailed) as info:
        validate_manifest(frame, "m.csv", max_per_check=5)
    lines = str(info.value).splitlines()
    assert sum("std = -1.0" in line for line in lines) == 5
    assert "m.csv: ... and 35 more rows failing std in_range(0, 255)" in lines


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    header=st.lists(
        st.sampled_from(["lot", "size", "porosity", "dispersity", "facetness", "peak_stress", ""]),
        max_size=7,
    ),
    rows=st.lists(st.lists(st.sampled_from(["", "A", "../x", "1", "-1", "inf", "x"]), max_size=7)),
)
def test_check_lots_reports_any_file_without_raising(tmp_path: Path, header, rows) -> None:
    """Whatever the file holds, the validate stage gets report lines naming it, not an
    exception (random headers, ragged rows, repeated columns, partial schemas)."""
    lines = [",".join(header)] + [",".join(r) for r in rows[:5]]
    path = write(tmp_path, "\n".join(lines) + "\n")
    checked = check_lots(path)
    assert checked.ok == (checked.table is not None)
    assert all(line.startswith(str(path)) for line in checked.problems), checked.problems
