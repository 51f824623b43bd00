"""Random and corrupted inputs to the ingest and explain paths: always the project's own error
(naming the culprit), never a bare exception from a library."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from semknobs.config import from_mapping
from semknobs.data.scans import read_scan
from semknobs.data.schemas import read_lots
from semknobs.data.tiles import TileParams
from semknobs.errors import DataError, ParamsError, SemknobsError
from semknobs.serving.tile_codec import decode_lots, decode_tile, encode_tile

FUZZ = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _png(array: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


@FUZZ
@given(
    data=st.binary(max_size=600), cut=st.integers(0, 400), suffix=st.sampled_from([".png", ".tif"])
)
def test_corrupt_image_files_raise_data_errors_naming_the_file(tmp_path: Path, data, cut, suffix):
    real = _png(np.arange(64 * 64, dtype=np.uint16).reshape(64, 64).astype(np.uint8))
    for payload in (data, real[:cut], real[:16] + data):
        path = tmp_path / f"scan{suffix}"
        path.write_bytes(payload)
        try:
            image = read_scan(path)
        except DataError as exc:
            assert str(path) in str(exc)
        else:  # a payload that happens to decode is a proper greyscale image
            assert image.ndim == 2 and image.dtype in (np.uint8, np.uint16)


@FUZZ
@given(text=st.text(max_size=200), raw=st.binary(max_size=300))
def test_served_tiles_reject_garbage_with_value_errors(text, raw):
    for payload in (
        text,
        base64.b64encode(raw).decode(),
        base64.b64encode(_png(np.zeros((8, 8), np.uint8))[:40] + raw).decode(),
    ):
        with pytest.raises(ValueError):
            decode_tile(payload, size=64)


def test_a_valid_tile_round_trips():
    tile = np.random.default_rng(0).integers(0, 256, (64, 64)).astype(np.uint8)
    np.testing.assert_array_equal(decode_tile(encode_tile(tile), 64), tile)
    np.testing.assert_array_equal(decode_tile(encode_tile(tile, "tiff"), 64), tile)


CSV_CELLS = st.one_of(
    st.text(max_size=8), st.floats(allow_nan=True, allow_infinity=True).map(str), st.just("")
)


@FUZZ
@given(
    header=st.lists(
        st.sampled_from(
            ["lot", "size", "porosity", "dispersity", "facetness", "peak_stress", "x", ""]
        ),
        max_size=7,
    ),
    rows=st.lists(st.lists(CSV_CELLS, max_size=7), max_size=5),
)
def test_random_label_files_raise_semknobs_errors(tmp_path: Path, header, rows):
    path = tmp_path / "lots.csv"
    lines = [",".join(header)] + [",".join(c.replace("\n", " ") for c in r) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    try:
        read_lots(path)
    except SemknobsError as exc:
        assert "lots.csv" in str(exc)


PARAM_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=5)),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)


@FUZZ
@given(
    mapping=st.dictionaries(
        st.sampled_from(
            [
                "tile_px",
                "out_px",
                "info_bar_px",
                "percentiles",
                "max_bar_fraction",
                "n_jobs",
                "bogus",
            ]
        ),
        PARAM_VALUES,
        max_size=4,
    )
)
def test_random_params_raise_params_errors(mapping):
    try:
        params = from_mapping(TileParams, mapping, where="params.yaml: tile")
    except ParamsError as exc:
        assert "params.yaml: tile" in str(exc)
    else:
        assert isinstance(params, TileParams)


LOT_VALUES = st.one_of(
    st.text(max_size=300),
    st.none(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(),
    st.just(pd.NA),
    st.lists(st.integers(), max_size=3),
)


@FUZZ
@given(values=st.lists(LOT_VALUES, min_size=1, max_size=8))
def test_served_lot_names_are_names_or_a_value_error_naming_the_row(values):
    frame = pd.DataFrame({"lot": pd.Series(values, dtype=object)})
    try:
        names = decode_lots(frame)
    except ValueError as exc:
        assert "row " in str(exc) and "'lot'" in str(exc)
    else:
        assert len(names) == len(values)
        assert all(isinstance(n, str) and 0 < len(n) <= 200 and n != "<NA>" for n in names)
