"""Rule I's probe: the regressor's response to magnification, against a true size change.

A tile at magnification ``m`` is the ``128 / m`` raw px of its scan area around the tile's
centre, area-averaged to 64 px (adaptive average pooling: at ``m = 1`` the tiling's exact 2 x 2
mean, the stored tile, checked) with the scan's own 8-bit mapping. Off ``m = 1`` the pooling's
bins hold 1-3 raw px, a different smoothing the regressor reads (its mean prediction jumps
between ``m = 1`` and its neighbours), so the slope is also reported without ``m = 1``.
Per tile, the regressor's slope in ``log m`` (least squares over ``M``) is mapped to true size
units by the renderer's diameter law (``ds / d log m = 1 + s``; evaluation only) and compared
with the oracle's size slope and the committed knob gradient's; the meter reads the magnified
tiles (calibrated knob units, the explain stage's calibration). Beside it, the regressor's
mean shift on the stored tiles under a slight blur or pixel noise (``pixel_scale``). Rules and
result: ``magnification_rules.md``. Needs ``make repro``.

    python benchmarks/magnification.py [--lots test]   # -> benchmarks/magnification_<lots>.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from knob_gradient_variants import ROOT, load_scored, meter_calibration, stage_params
from scipy.ndimage import gaussian_filter
from torch.nn.functional import adaptive_avg_pool2d

from semknobs.attributes import ATTRIBUTES
from semknobs.config import from_mapping, load_params
from semknobs.data.scans import read_scan
from semknobs.data.tiles import TileParams, bar_rows, intensity_range, to_uint8
from semknobs.data.truth import read_truth, tile_truth
from semknobs.explain.gradient import KnobGradient
from semknobs.meter import measure_tiles
from semknobs.models.regressor import predict

A = list(ATTRIBUTES)
M = np.array([0.86, 0.93, 1.0, 1.08, 1.17])
BLUR_PX, NOISE_SD = (0.3, 0.5, 0.7, 1.0), (4.0, 8.0)


def magnified(
    manifest: pd.DataFrame, params: TileParams, raw_dir: Path
) -> tuple[np.ndarray, np.ndarray]:
    """(n, len(M), out, out) uint8 and (n,) bool: whether every crop stays in the scan area."""
    out = np.zeros((len(manifest), len(M), params.out_px, params.out_px), np.uint8)
    inside = np.ones(len(manifest), bool)
    for file, rows in manifest.groupby("file").groups.items():
        path = raw_dir / file
        image = read_scan(path)
        crop = bar_rows(image, params, path)
        area = image[: image.shape[0] - crop] if crop else image
        lo, hi = intensity_range(area, params.percentiles)
        for i in rows:
            r = manifest.loc[i]
            cy, cx = r["y0"] + r["tile_px"] / 2, r["x0"] + r["tile_px"] / 2
            for j, m in enumerate(M):
                side = round(r["tile_px"] / m)
                y, x = round(cy - side / 2), round(cx - side / 2)
                if y < 0 or x < 0 or y + side > area.shape[0] or x + side > area.shape[1]:
                    inside[manifest.index.get_loc(i)] = False
                    break
                window = torch.from_numpy(area[y : y + side, x : x + side].astype(np.float32))
                small = adaptive_avg_pool2d(window[None], params.out_px)[0].numpy()
                out[manifest.index.get_loc(i), j] = to_uint8(small, lo, hi)
    return out, inside


def log_slope(values: np.ndarray, m: np.ndarray = M) -> np.ndarray:
    """(n, len(m)[, k]) -> (n[, k]) least-squares slope in log m (NaN where any value is)."""
    x = np.log(m) - np.log(m).mean()
    centred = values - values.mean(axis=1, keepdims=True)
    return np.tensordot(x, centred, axes=([0], [1])) / (x @ x)


def pixel_scale(reg, tiles: np.ndarray) -> dict[str, float]:
    """The regressor's mean shift (MPa) on the stored tiles blurred (Gaussian, sigma in px of
    the 64-px tile) or given pixel noise (sd in grey levels, seeded): how much it reads
    pixel-scale smoothing, which magnification changes and a true size change does not."""
    base = predict(reg, tiles)
    out = {}
    for sigma in BLUR_PX:
        blurred = np.stack([gaussian_filter(t.astype(np.float32), sigma) for t in tiles])
        out[f"blur_{sigma:g}px"] = float(np.mean(predict(reg, _uint8(blurred)) - base))
    rng = np.random.default_rng(0)
    for sd in NOISE_SD:
        noisy = tiles + rng.normal(0.0, sd, tiles.shape)
        out[f"noise_sd_{sd:g}"] = float(np.mean(predict(reg, _uint8(noisy)) - base))
    return out


def _uint8(x: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(x, 0, 255)).astype(np.uint8)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lots", choices=("train", "test"), default="train")
    args = parser.parse_args()
    params = load_params(ROOT / "params.yaml")
    tile_params = from_mapping(TileParams, params["tile"])
    sc = load_scored(args.lots, 6 if args.lots == "train" else 2)
    rows, stored_rows = sc.rows, sc.images
    tiles, inside = magnified(rows, tile_params, ROOT / params["data"]["raw_dir"])
    if not inside.any():
        raise SystemExit(f"no tile of the {args.lots} set keeps its m = {M.min()} crop in its scan")
    at_one = tiles[:, list(M).index(1.0)]
    mismatch = np.abs(at_one.astype(int) - stored_rows.astype(int))[inside].max()
    if mismatch > 1:
        raise SystemExit(f"m = 1 does not give the stored tile (max difference {mismatch})")
    truth = read_truth(ROOT / "data" / "synthetic" / "truth")
    size = tile_truth(truth.fields, rows)["size"].to_numpy()
    low, high = params["synthesize"]["render"]["diameter_px"]  # the renderer's, at size 0 and 1
    per_true = 1.0 / (low / (high - low) + size)  # d log m / ds = 1 / (low / (high - low) + s)
    n, k = tiles.shape[:2]
    stress = predict(sc.reg, tiles.reshape(n * k, *tiles.shape[2:])).reshape(n, k)
    mag = log_slope(stress) * per_true  # MPa per true size unit
    off = M != 1.0
    mag_off = log_slope(stress[:, off], M[off]) * per_true
    calib = meter_calibration(sc.scaler)
    seen = tiles[inside].reshape(-1, *tiles.shape[2:])  # the meter reads the kept tiles only
    readings = measure_tiles(seen, calib.meter, n_jobs=2)
    knob = readings[A].to_numpy(float) * np.array(calib.alpha) + np.array(calib.beta)
    meter = np.full((n, len(A)), np.nan)
    meter[inside] = log_slope(knob.reshape(-1, k, len(A))) * per_true[inside, None]
    kg = KnobGradient(sc.gen, sc.reg, stage_params()).attribute(sc.x, sc.attrs).gradient
    kg = kg * sc.slopes
    oracle, known = sc.oracle[:, 0], sc.known[:, 0] & inside
    result = {
        "lots": args.lots,
        "tiles": len(rows),
        "inside": int(inside.sum()),
        "known": int(known.sum()),
        "sign_magnification": float(np.mean(np.sign(mag[known]) == np.sign(oracle[known]))),
        "sign_knob_gradient": float(np.mean(np.sign(kg[known, 0]) == np.sign(oracle[known]))),
        "sign_magnification_without_m1": float(
            np.mean(np.sign(mag_off[known]) == np.sign(oracle[known]))
        ),
        "read_magnification": float(mag[inside].mean() / oracle[inside].mean()),
        "read_magnification_without_m1": float(mag_off[inside].mean() / oracle[inside].mean()),
        "spearman_magnification": float(
            pd.Series(mag[inside]).corr(pd.Series(oracle[inside]), method="spearman")
        ),
        "meter_size_over_true": float(np.nanmean(meter[inside, 0]) / sc.slopes[0]),
        "meter_per_true_size": {a: float(np.nanmean(meter[inside, i])) for i, a in enumerate(A)},
        "label_knob_per_true": {a: float(s) for a, s in zip(A, sc.slopes)},
        "stress_by_m": {f"{m:g}": float(stress[inside, j].mean()) for j, m in enumerate(M)},
        "pixel_scale": pixel_scale(sc.reg, stored_rows),
    }
    out = ROOT / "benchmarks" / f"magnification_{args.lots}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
