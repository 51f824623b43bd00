"""Reading SEM scans: 8/16-bit greyscale TIFF or PNG, found as ``<raw_dir>/<lot>/<scan>.<ext>``.

Colour policy: SEM detectors are monochrome, but many export tools save greyscale as RGB(A).
A scan whose colour channels are identical is converted to greyscale; a scan with real colour
(an EDS overlay, a false-colour map) is refused, since no single grey mapping would be right.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image, UnidentifiedImageError

from semknobs.errors import DataError

SCAN_SUFFIXES = (".tif", ".tiff", ".png")
LOT_PATTERN = re.compile(r"^[A-Za-z0-9_-]+$")
Image.MAX_IMAGE_PIXELS = 1 << 30  # SEM mosaics are large; 1 Gpx still refuses decompression bombs


@dataclass(frozen=True)
class ScanFile:
    lot: str
    scan: str  # file stem, unique within the lot
    path: Path


def is_scan(path: Path) -> bool:
    """A file name the pipeline tiles: not hidden, a scan suffix."""
    return not path.name.startswith(".") and path.suffix.lower() in SCAN_SUFFIXES


def find_scans(raw_dir: Path) -> list[ScanFile]:
    """All scans under ``raw_dir``, sorted by lot then scan; refuses ambiguous layouts."""
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        raise DataError(f"{raw_dir}: raw scan folder not found")
    scans: list[ScanFile] = []
    for entry in sorted(raw_dir.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_file() and entry.suffix.lower() in SCAN_SUFFIXES:
            raise DataError(f"{entry}: scan is not inside a lot folder (<raw_dir>/<lot>/<scan>)")
        if not entry.is_dir():
            continue
        if not LOT_PATTERN.match(entry.name):
            raise DataError(f"{entry}: lot folder name must match [A-Za-z0-9_-]+")
        stems: dict[str, Path] = {}
        for path in sorted(entry.iterdir()):
            if not is_scan(path):
                continue
            if path.stem in stems:
                raise DataError(
                    f"{path}: same scan name as {stems[path.stem].name} in lot {entry.name}"
                )
            stems[path.stem] = path
            scans.append(ScanFile(lot=entry.name, scan=path.stem, path=path))
    if not scans:
        raise DataError(f"{raw_dir}: no scans found (expected <lot>/<scan>.tif|tiff|png)")
    return scans


def read_scan(path: Path) -> np.ndarray:
    """A 2-D uint8 or uint16 array; raises :class:`DataError` naming the file otherwise."""
    path = Path(path)
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            array = tifffile.imread(path)
        else:
            with Image.open(path) as im:
                im.load()
                array = _png_array(im, path)
    except DataError:
        raise
    except (OSError, ValueError, UnidentifiedImageError, tifffile.TiffFileError) as exc:
        raise DataError(f"{path}: unreadable image ({exc})") from None
    except Exception as exc:  # decoders raise struct.error, IndexError, ... on corrupt headers
        raise DataError(f"{path}: unreadable image ({type(exc).__name__}: {exc})") from None
    array = np.asarray(array)
    if array.size == 0:
        raise DataError(f"{path}: unreadable image (no pixel data; truncated or corrupt file)")
    return _as_greyscale(array, path)


def _png_array(im: Image.Image, path: Path) -> np.ndarray:
    if im.mode in ("L", "I;16", "I;16B", "I;16L", "RGB", "RGBA", "LA"):
        return np.asarray(im)
    if im.mode == "I":  # PIL widens 16-bit PNGs to int32
        array = np.asarray(im)
        if array.min() >= 0 and array.max() <= 65535:
            return array.astype(np.uint16)
    raise DataError(f"{path}: unsupported PNG mode {im.mode!r}; expected 8- or 16-bit greyscale")


def _as_greyscale(array: np.ndarray, path: Path) -> np.ndarray:
    if array.ndim == 3 and array.shape[-1] in (2, 3, 4):
        colour = array[..., :3] if array.shape[-1] >= 3 else array[..., :1]
        if colour.shape[-1] == 3 and not (
            np.array_equal(colour[..., 0], colour[..., 1])
            and np.array_equal(colour[..., 0], colour[..., 2])
        ):
            raise DataError(
                f"{path}: colour image (RGB channels differ); SEM scans must be greyscale. "
                "Export the detector channel as greyscale, or convert it yourself if the mapping "
                "is known"
            )
        array = colour[..., 0]
    if array.ndim != 2:
        raise DataError(
            f"{path}: expected one greyscale image, got an array of shape {array.shape}"
        )
    if array.dtype not in (np.uint8, np.uint16):
        raise DataError(f"{path}: pixel type {array.dtype} not supported; expected 8- or 16-bit")
    return np.ascontiguousarray(array)
