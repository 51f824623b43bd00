"""Scans -> tiles: crop the information bar, cut a grid of non-overlapping tiles, resize.

Geometry: the grid starts at the top-left corner of the image area; the right and bottom
remainders narrower than one tile are dropped (``row``/``col``/``y0``/``x0`` in the manifest give
each tile's place in its raw scan, so any tile can be traced back).

Intensity: each scan is mapped to 8 bits with its own robust range (the ``percentiles`` of the
image area), so microscope brightness/contrast settings do not leak into the models while contrast
*within* a scan (pores, facets) is kept.

Output: one memory-mappable ``<lot>.npy`` shard per lot, uint8, shape (n_tiles, out_px, out_px),
and ``manifest.csv`` with one row per tile (see :data:`MANIFEST_COLUMNS`).
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from skimage.transform import resize
from tqdm import tqdm

from semknobs.atomic import atomic_path
from semknobs.data.scans import SCAN_SUFFIXES, ScanFile, find_scans, is_scan, read_scan
from semknobs.errors import DataError, ParamsError

MANIFEST_COLUMNS = (
    "tile",
    "lot",
    "scan",
    "file",
    "row",
    "col",
    "y0",
    "x0",
    "tile_px",
    "out_px",
    "shard",
    "index",
    "mean",
    "std",
    "min",
    "max",
    "frac_dark",
    "frac_bright",
    "sha1",
)


@dataclass(frozen=True)
class TileParams:
    tile_px: int = 128  # tile side in raw scan pixels
    out_px: int = 64  # training resolution
    info_bar_px: int | str = "auto"  # rows cropped at the bottom, or "auto"
    percentiles: tuple[float, float] = (0.5, 99.5)
    max_bar_fraction: float = 0.25  # auto-detection refuses a "bar" taller than this
    n_jobs: int = 2

    def __post_init__(self) -> None:
        if self.out_px < 8 or self.tile_px < self.out_px:
            raise ValueError("need tile_px >= out_px >= 8")
        if isinstance(self.info_bar_px, str) and self.info_bar_px != "auto":
            raise ValueError("info_bar_px must be a pixel count or 'auto'")
        if isinstance(self.info_bar_px, int) and self.info_bar_px < 0:
            raise ValueError("info_bar_px must be >= 0")
        lo, hi = self.percentiles
        if not 0 <= lo < hi <= 100:
            raise ValueError("percentiles must satisfy 0 <= low < high <= 100")


def detect_info_bar(image: np.ndarray, flat_fraction: float = 0.3) -> int:
    """Rows of the information bar at the bottom of a scan (0 if none).

    SEM information bars sit on a flat background (black or white) with sparse text, so in every
    bar row a large share of pixels takes one exact value; image rows carry detector noise and do
    not. The bar is the longest run of such rows that reaches the bottom edge.
    """
    rows = 0
    for row in image[::-1]:
        _values, counts = np.unique(row, return_counts=True)
        if counts.max() < flat_fraction * row.size:
            break
        rows += 1
    return rows


def bar_rows(image: np.ndarray, params: TileParams, path: Path) -> int:
    if params.info_bar_px != "auto":
        return int(params.info_bar_px)
    rows = detect_info_bar(image)
    if rows > params.max_bar_fraction * image.shape[0]:
        raise DataError(
            f"{path}: auto-detected an information bar of {rows} of {image.shape[0]} rows "
            "(too tall to be one); set tile.info_bar_px to the bar height in pixels"
        )
    return rows


def intensity_range(image: np.ndarray, percentiles: tuple[float, float]) -> tuple[float, float]:
    """Robust (low, high) of an integer image, via its histogram (linear time, no sort)."""
    counts = np.bincount(image.ravel())
    cdf = np.cumsum(counts) / image.size
    lo = float(np.searchsorted(cdf, percentiles[0] / 100))
    hi = float(np.searchsorted(cdf, percentiles[1] / 100))
    return lo, max(hi, lo + 1.0)


def tile_scan(image: np.ndarray, params: TileParams, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(tiles uint8 (n, out, out), grid (n, 2) of row/col) for one raw scan."""
    crop = bar_rows(image, params, path)
    area = image[: image.shape[0] - crop] if crop else image
    ny, nx = area.shape[0] // params.tile_px, area.shape[1] // params.tile_px
    if ny == 0 or nx == 0:
        raise DataError(
            f"{path}: image area is {area.shape[0]}x{area.shape[1]} px after cropping a "
            f"{crop}-px information bar, smaller than one {params.tile_px}-px tile"
        )
    lo, hi = intensity_range(area, params.percentiles)
    t = params.tile_px
    grid = area[: ny * t, : nx * t].astype(np.float32)
    tiles = grid.reshape(ny, t, nx, t).transpose(0, 2, 1, 3).reshape(ny * nx, t, t)
    tiles = _resize(tiles, params.out_px)
    rc = np.stack(np.divmod(np.arange(ny * nx), nx), axis=1)
    return to_uint8(tiles, lo, hi), rc


def to_uint8(image: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``[lo, hi]`` mapped linearly onto 0..255, clipped and rounded: the 8-bit mapping."""
    return np.rint(np.clip((image - lo) * (255.0 / (hi - lo)), 0, 255)).astype(np.uint8)


def tile_to_uint8(tile: np.ndarray, percentiles: tuple[float, float]) -> np.ndarray:
    """A single tile as uint8: 8-bit as is, 16-bit through its robust intensity range."""
    if tile.dtype == np.uint8:
        return tile
    return to_uint8(tile, *intensity_range(tile, percentiles))


def _resize(tiles: np.ndarray, out: int) -> np.ndarray:
    n, t, _ = tiles.shape
    if t == out:
        return tiles
    if t % out == 0:  # exact area average: anti-aliased and fast
        k = t // out
        return tiles.reshape(n, out, k, out, k).mean(axis=(2, 4))
    return np.stack([resize(x, (out, out), anti_aliasing=True, preserve_range=True) for x in tiles])


def tile_statistics(tiles: np.ndarray) -> dict[str, np.ndarray]:
    flat = tiles.reshape(len(tiles), -1)
    return {
        "mean": flat.mean(axis=1),
        "std": flat.std(axis=1),
        "min": flat.min(axis=1),
        "max": flat.max(axis=1),
        "frac_dark": (flat <= 2).mean(axis=1),
        "frac_bright": (flat >= 253).mean(axis=1),
        "sha1": np.array([hashlib.sha1(x.tobytes()).hexdigest() for x in tiles]),
    }


def tile_dataset(
    *, params: TileParams, raw_dir: Path, tiles_dir: Path, progress: bool = True
) -> pd.DataFrame:
    """Tile every scan under ``raw_dir`` into ``tiles_dir`` (shards + manifest.csv)."""
    if not isinstance(params, TileParams):
        raise ParamsError("tile: expected TileParams")
    raw_dir = Path(raw_dir)
    scans = find_scans(raw_dir)

    def work(scan: ScanFile) -> tuple[ScanFile, np.ndarray, np.ndarray, dict]:
        tiles, rc = tile_scan(read_scan(scan.path), params, scan.path)
        return scan, tiles, rc, tile_statistics(tiles)

    per_lot: dict[str, list[np.ndarray]] = {}
    columns: dict[str, list] = {c: [] for c in MANIFEST_COLUMNS if c != "tile"}
    with ThreadPoolExecutor(max_workers=max(1, params.n_jobs)) as pool:
        results = pool.map(work, scans)
        for scan, tiles, rc, stats in tqdm(
            results, total=len(scans), desc="tile", unit="scan", disable=not progress
        ):
            n = len(tiles)
            start = sum(len(x) for x in per_lot.get(scan.lot, []))
            per_lot.setdefault(scan.lot, []).append(tiles)
            record = {
                "lot": [scan.lot] * n,
                "scan": [scan.scan] * n,
                "file": [scan.path.relative_to(raw_dir).as_posix()] * n,
                "row": rc[:, 0],
                "col": rc[:, 1],
                "y0": rc[:, 0] * params.tile_px,
                "x0": rc[:, 1] * params.tile_px,
                "tile_px": np.full(n, params.tile_px),
                "out_px": np.full(n, params.out_px),
                "shard": [f"{scan.lot}.npy"] * n,
                "index": start + np.arange(n),
                **stats,
            }
            for key, values in record.items():
                columns[key].append(values)
    manifest = pd.DataFrame({k: np.concatenate(v) for k, v in columns.items()})
    manifest.insert(0, "tile", np.arange(len(manifest)))
    with atomic_path(tiles_dir, directory=True) as tmp:
        for lot, chunks in per_lot.items():
            np.save(tmp / f"{lot}.npy", np.concatenate(chunks))
        manifest.to_csv(tmp / "manifest.csv", index=False, float_format="%.5g")
    return manifest[list(MANIFEST_COLUMNS)]


def skipped_files(raw_dir: Path, limit: int = 10) -> list[str]:
    """Lines naming what tiling skips without error: files in lot folders that are not
    ``.tif``/``.tiff``/``.png`` scans, and lot folders without any scan (such a lot then "has a
    label row but no scans" in validation, and this says why)."""
    raw_dir = Path(raw_dir)
    other: list[str] = []
    empty: list[str] = []
    for folder in sorted(p for p in raw_dir.iterdir() if p.is_dir() and p.name[0] != "."):
        files = [p for p in sorted(folder.iterdir()) if p.is_file() and p.name[0] != "."]
        scans = [p for p in files if is_scan(p)]
        other += [p.relative_to(raw_dir).as_posix() for p in files if p not in scans]
        if not scans:
            empty.append(folder.name)
    lines = []
    if other:
        more = f", ... (+{len(other) - limit} more)" if len(other) > limit else ""
        lines.append(
            f"skipped {len(other)} file(s) in {raw_dir} that are not "
            f"{'/'.join(SCAN_SUFFIXES)} scans: {', '.join(other[:limit])}{more}"
        )
    if empty:
        lines.append(f"lot folder(s) without any scan in {raw_dir}: {', '.join(empty)}")
    return lines


def load_tiles(
    tiles_dir: Path, manifest: pd.DataFrame | None = None
) -> tuple[np.ndarray, pd.DataFrame]:
    """All tiles in manifest order (uint8, (n, out, out)) and the manifest; shards memory-mapped."""
    tiles_dir = Path(tiles_dir)
    if manifest is None:
        path = tiles_dir / "manifest.csv"
        if not path.exists():
            raise DataError(f"{path}: tile manifest not found; run the tile stage first")
        manifest = pd.read_csv(path)
    manifest = manifest.reset_index(drop=True)
    shards = {s: np.load(tiles_dir / s, mmap_mode="r") for s in manifest["shard"].unique()}
    out = np.empty((len(manifest), *next(iter(shards.values())).shape[1:]), dtype=np.uint8)
    index = manifest["index"].to_numpy()
    for shard, positions in manifest.groupby("shard").indices.items():
        out[positions] = shards[shard][index[positions]]
    return out, manifest
