"""Tiles as text: base64 PNG/TIFF strings in a DataFrame, the served explainer's input format.

A DataFrame input has a column ``image`` (base64 of a PNG or TIFF file, 8- or 16-bit greyscale,
``S x S`` pixels at the model's tile size), optionally one column per attribute (expert scores
on the label scale; all four or none) and optionally ``lot`` (which lot each tile belongs to:
the served knob gradient is per lot). 16-bit tiles are mapped to 8 bits with the tile stage's
robust percentile mapping.
"""

from __future__ import annotations

import base64
import binascii
import io
from collections.abc import Sequence

import numpy as np
import pandas as pd

from semknobs.attributes import ATTRIBUTES

IMAGE_COLUMN = "image"
LOT_COLUMN = "lot"
MAX_LOT_NAME = 200
_PNG = b"\x89PNG\r\n\x1a\n"
_TIFF = (b"II*\x00", b"MM\x00*")


def encode_tile(tile: np.ndarray, fmt: str = "png") -> str:
    """One greyscale tile (uint8 or uint16, 2-D) as base64 PNG or TIFF."""
    buffer = io.BytesIO()
    tile = np.asarray(tile)
    if fmt == "png":
        from PIL import Image

        Image.fromarray(tile).save(buffer, format="PNG")
    elif fmt == "tiff":
        import tifffile

        tifffile.imwrite(buffer, tile)
    else:
        raise ValueError(f"fmt must be 'png' or 'tiff', got {fmt!r}")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def tiles_frame(
    tiles: np.ndarray, attributes: np.ndarray | None = None, fmt: str = "png"
) -> pd.DataFrame:
    """The DataFrame input of the served explainer for an array of tiles (n, S, S)."""
    frame = pd.DataFrame({IMAGE_COLUMN: [encode_tile(t, fmt) for t in np.asarray(tiles)]})
    if attributes is not None:
        values = np.asarray(attributes, dtype=float)
        for j, a in enumerate(ATTRIBUTES):
            frame[a] = values[:, j]
    return frame


def decode_tile(text: str, size: int, percentiles: Sequence[float] = (0.5, 99.5)) -> np.ndarray:
    """A base64 PNG/TIFF string -> uint8 (size, size). Raises ValueError saying what is wrong."""
    from semknobs.data.scans import _as_greyscale
    from semknobs.data.tiles import tile_to_uint8

    if not isinstance(text, str) or not text:
        raise ValueError("expected a non-empty base64 string")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not valid base64") from None
    try:
        if raw.startswith(_PNG):
            from PIL import Image

            with Image.open(io.BytesIO(raw)) as im:
                im.load()
                array = np.asarray(im).copy()
                if im.mode == "I" and array.min() >= 0 and array.max() <= 65535:
                    array = array.astype(np.uint16)
        elif raw[:4] in _TIFF:
            import tifffile

            array = tifffile.imread(io.BytesIO(raw))
        else:
            raise ValueError("not a PNG or TIFF file")
        array = _as_greyscale(np.asarray(array), "tile")
    except ValueError:
        raise
    except Exception as exc:  # corrupt payloads raise many types from PIL/tifffile
        raise ValueError(f"unreadable image ({type(exc).__name__}: {exc})") from None
    if array.shape != (size, size):
        raise ValueError(
            f"tile is {array.shape[0]}x{array.shape[1]} px, the model takes {size}x{size} "
            "(tile whole scans with `semknobs explain`)"
        )
    return tile_to_uint8(array, tuple(percentiles))


def decode_frame(
    frame: pd.DataFrame, size: int, percentiles: Sequence[float] = (0.5, 99.5)
) -> tuple[np.ndarray, np.ndarray | None]:
    """(tiles uint8 (n, S, S), attributes (n, 4) or None) from a DataFrame input.

    Errors name the row and column at fault.
    """
    if IMAGE_COLUMN not in frame.columns:
        raise ValueError(f"input needs a column {IMAGE_COLUMN!r} (base64 PNG/TIFF tiles)")
    if len(frame) == 0:
        raise ValueError("input has no rows")
    tiles = []
    for i, text in enumerate(frame[IMAGE_COLUMN]):
        try:
            tiles.append(decode_tile(text, size, percentiles))
        except ValueError as exc:
            raise ValueError(f"row {i}, column {IMAGE_COLUMN!r}: {exc}") from None
    present = [a for a in ATTRIBUTES if a in frame.columns and frame[a].notna().any()]
    if not present:
        return np.stack(tiles), None
    missing = [a for a in ATTRIBUTES if a not in present]
    if missing:
        raise ValueError(f"give all four attributes or none; missing or empty: {missing}")
    values = frame[list(ATTRIBUTES)].apply(pd.to_numeric, errors="coerce").to_numpy(float)
    bad = np.argwhere(~np.isfinite(values))
    if len(bad):
        i, j = bad[0]
        raise ValueError(f"row {i}, column {ATTRIBUTES[j]!r}: not a finite number")
    return np.stack(tiles), values


def decode_lots(frame: pd.DataFrame) -> list[str] | None:
    """Each row's lot name from the optional ``lot`` column (None without it); errors name the
    row at fault."""
    if LOT_COLUMN not in frame.columns:
        return None
    names = []
    for i, value in enumerate(frame[LOT_COLUMN]):
        if not isinstance(value, str) and (not np.isscalar(value) or pd.isna(value)):
            raise ValueError(f"row {i}, column {LOT_COLUMN!r}: empty or not a name ({value!r:.40})")
        name = str(value).strip()
        if not name or len(name) > MAX_LOT_NAME:
            raise ValueError(
                f"row {i}, column {LOT_COLUMN!r}: a lot name of 1-{MAX_LOT_NAME} characters"
            )
        names.append(name)
    return names
