"""The synthetic SEM study: lot design -> per-field truth -> rendered scans, labels and truth files.

Outputs (all written under temporary names and renamed when complete):

* ``raw_dir/<lot>/scan_<k>.tif`` (or ``.png``): greyscale 8/16-bit scans with an information bar;
* ``lots_csv``: one row per lot, the experts' coarse scores (1-10 scale, averaged over experts)
  and the measured peak stress in MPa — exactly what a lab would hand over;
* ``truth_dir``: ``law.json`` (the stress law and per-lot true attributes) and ``fields.csv``
  (true attributes of every field of every scan). Evaluation only: see :mod:`semknobs.data.truth`.

Determinism: every lot draws from its own generator seeded by ``(seed, lot index)``, so the bytes
do not depend on ``n_jobs``.
"""

from __future__ import annotations

import contextlib
import json
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import tifffile
from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

from semknobs.atomic import atomic_path
from semknobs.attributes import ATTRIBUTES
from semknobs.config import to_mapping
from semknobs.data.design import DesignParams, lot_design
from semknobs.data.law import StressLaw
from semknobs.data.render import RenderParams, render_scan
from semknobs.errors import ParamsError


@dataclass(frozen=True)
class ExpertParams:
    """Lot labels are coarse expert scores: each expert rates a lot's true value on a 1-10 scale
    (rounded to ``resolution``) with Gaussian error ``sd`` (in [0, 1] attribute units); the label
    is the mean over ``n`` experts, as in the paper."""

    n: int = 3
    sd: float = 0.05
    resolution: float = 0.5


@dataclass(frozen=True)
class SynthParams:
    seed: int = 7
    n_lots: int = 30
    scans_per_lot: int = 3
    fields_y: int = 4  # scan image area = fields_y x fields_x fields of field_px
    fields_x: int = 6
    field_px: int = 128
    info_bar_px: int = 48
    bit_depth: Literal[8, 16] = 16
    file_format: Literal["tif", "png"] = "tif"
    field_scatter: float = 0.04  # sd of a field's true attributes around its lot's
    n_jobs: int = 2
    design: DesignParams = field(default_factory=DesignParams)
    experts: ExpertParams = field(default_factory=ExpertParams)
    law: StressLaw = field(default_factory=StressLaw)
    render: RenderParams = field(default_factory=RenderParams)


def lot_ids(n_lots: int) -> list[str]:
    width = max(2, len(str(n_lots)))
    return [f"L{i + 1:0{width}d}" for i in range(n_lots)]


def synthesize(
    *, params: SynthParams, raw_dir: Path, lots_csv: Path, truth_dir: Path, progress: bool = True
) -> pd.DataFrame:
    """Generate the study and write it; returns the lot table with true and labelled values."""
    if params.scans_per_lot < 1 or params.fields_x < 1 or params.fields_y < 1:
        raise ParamsError("synthesize: scans_per_lot, fields_x and fields_y must be >= 1")
    rng = np.random.default_rng([params.seed, 0])
    true_lots = lot_design(params.n_lots, params.design, rng)
    stress_true = params.law(true_lots)
    stress = stress_true + params.law.noise_mpa * rng.standard_normal(params.n_lots)
    if np.any(stress <= 0):
        raise ParamsError(
            "synthesize.law: the law gives non-positive peak stress for some lots "
            f"(min {stress.min():.2f} MPa); raise sigma0_mpa or shrink negative coefficients"
        )
    ids = lot_ids(params.n_lots)
    labels = _expert_scores(true_lots, params.experts, rng)

    jobs = [(params, i, lot, true_lots[i]) for i, lot in enumerate(ids)]
    with contextlib.ExitStack() as stack:  # all three outputs appear together, or none does
        raw_tmp = stack.enter_context(atomic_path(raw_dir, directory=True))
        truth_tmp = stack.enter_context(atomic_path(truth_dir, directory=True))
        lots_tmp = stack.enter_context(atomic_path(lots_csv))
        with ProcessPoolExecutor(max_workers=max(1, params.n_jobs)) as pool:
            results = pool.map(_render_lot, jobs, [raw_tmp] * len(jobs))
            bar = tqdm(
                results, total=len(jobs), desc="synthesize", unit="lot", disable=not progress
            )
            fields = pd.concat(list(bar), ignore_index=True)

        lots = pd.DataFrame({"lot": ids})
        for j, name in enumerate(ATTRIBUTES):
            lots[name] = labels[:, j]
        lots["peak_stress"] = np.round(stress, 3)
        lots.to_csv(lots_tmp, index=False, float_format="%.4f")

        truth = {
            "attributes": list(ATTRIBUTES),
            "law": {"name": "StressLaw", **to_mapping(params.law)},
            "field_px": params.field_px,
            "lots": {
                lot: {
                    "true": dict(zip(ATTRIBUTES, map(float, true_lots[i]))),
                    "stress_law_mpa": float(stress_true[i]),
                    "peak_stress_mpa": float(stress[i]),
                }
                for i, lot in enumerate(ids)
            },
        }
        (truth_tmp / "law.json").write_text(json.dumps(truth, indent=2) + "\n")
        fields.to_csv(truth_tmp / "fields.csv", index=False, float_format="%.5f")
    out = lots.copy()
    for j, name in enumerate(ATTRIBUTES):
        out[f"true_{name}"] = true_lots[:, j]
    return out


def _expert_scores(true: np.ndarray, experts: ExpertParams, rng: np.random.Generator) -> np.ndarray:
    if experts.n < 1:
        raise ParamsError("synthesize.experts.n must be >= 1")
    noisy = true[None] + experts.sd * rng.standard_normal((experts.n, *true.shape))
    scores = np.clip(1 + 9 * noisy, 1, 10)
    if experts.resolution > 0:
        scores = np.round(scores / experts.resolution) * experts.resolution
    return scores.mean(axis=0)


def _render_lot(job: tuple, raw_dir: Path) -> pd.DataFrame:
    params, index, lot, true = job
    rng = np.random.default_rng([params.seed, 1, index])
    (raw_dir / lot).mkdir(parents=True, exist_ok=True)
    rows = []
    for k in range(params.scans_per_lot):
        scan = f"scan_{k + 1:02d}"
        shape = (params.fields_y, params.fields_x, len(ATTRIBUTES))
        fields = np.clip(true + params.field_scatter * rng.standard_normal(shape), 0, 1)
        scan_array = scan_image(fields, params, rng, f"{lot} {scan}")
        _write_scan(raw_dir / lot / f"{scan}.{params.file_format}", scan_array)
        for iy in range(params.fields_y):
            for ix in range(params.fields_x):
                rows.append(
                    {
                        "lot": lot,
                        "scan": scan,
                        "y0": iy * params.field_px,
                        "x0": ix * params.field_px,
                        "size_px": params.field_px,
                        **dict(zip(ATTRIBUTES, map(float, fields[iy, ix]))),
                    }
                )
    return pd.DataFrame(rows)


def scan_image(
    fields: np.ndarray, params: SynthParams, rng: np.random.Generator, caption: str = ""
) -> np.ndarray:
    """One raw scan as the microscope writes it: the fields (shape (ny, nx, 4), true attributes)
    rendered, per-scan brightness/contrast, quantised to ``bit_depth`` with the information bar.

    The study's scans and the oracle referee's interventions (:mod:`semknobs.evaluation.oracle`)
    both come from here, so the referee renders exactly what the pipeline tiles."""
    image = render_scan(fields, params.field_px, params.render, rng)
    gain, offset = rng.uniform(0.85, 1.15), rng.uniform(-0.03, 0.05)  # microscope settings
    image = np.clip(offset + gain * image, 0, 1)
    return _quantize_with_bar(image, params, caption)


def _quantize_with_bar(image: np.ndarray, params: SynthParams, caption: str) -> np.ndarray:
    top = (1 << params.bit_depth) - 1
    dtype = np.uint16 if params.bit_depth == 16 else np.uint8
    body = np.round(image * top).astype(dtype)
    if params.info_bar_px <= 0:
        return body
    bar = Image.new("L", (body.shape[1], params.info_bar_px), 0)
    draw = ImageDraw.Draw(bar)
    font = ImageFont.load_default(size=max(8, params.info_bar_px // 3))
    text = f"SEM HV: 5.00 kV   WD: 8.1 mm   Det: SE   px: 0.25 um   {caption}"
    draw.text((8, params.info_bar_px // 4), text, fill=255, font=font)
    x1 = body.shape[1] - 16
    draw.rectangle([x1 - 100, params.info_bar_px - 14, x1, params.info_bar_px - 10], fill=255)
    draw.text((x1 - 80, 4), "25 um", fill=255, font=font)
    bar_array = (np.asarray(bar, dtype=np.float64) / 255 * top).astype(dtype)
    return np.concatenate([body, bar_array], axis=0)


def _write_scan(path: Path, array: np.ndarray) -> None:
    if path.suffix == ".tif":
        tifffile.imwrite(path, array, compression="zlib", metadata=None)
    else:
        Image.fromarray(array).save(path, optimize=False)
