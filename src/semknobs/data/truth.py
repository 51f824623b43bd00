"""Ground truth of a synthetic study. EVALUATION ONLY.

Only evaluation code may import this module: the ``meter`` stage, the referee of the explanations
(``semknobs.evaluation.referee``), the AttGAN's meter ceiling (``evaluate_attgan``) and tests.
Training, tuning and explanation code must never see the truth; ``tests/test_truth_isolation.py``
enforces that on the import graph.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from semknobs.attributes import ATTRIBUTES
from semknobs.data.law import StressLaw
from semknobs.errors import DataError


@dataclass(frozen=True)
class Truth:
    law: StressLaw
    lots: pd.DataFrame  # lot, true attributes, stress_law_mpa, peak_stress_mpa
    fields: pd.DataFrame  # lot, scan, y0, x0, size_px, true attributes


def read_truth(truth_dir: Path) -> Truth:
    truth_dir = Path(truth_dir)
    try:
        meta = json.loads((truth_dir / "law.json").read_text())
        fields = pd.read_csv(truth_dir / "fields.csv")
    except (OSError, ValueError) as exc:
        raise DataError(f"{truth_dir}: unreadable ground truth ({exc})") from None
    law_params = {k: v for k, v in meta["law"].items() if k != "name"}
    lots = pd.DataFrame(
        [
            {
                "lot": lot,
                **v["true"],
                "stress_law_mpa": v["stress_law_mpa"],
                "peak_stress_mpa": v["peak_stress_mpa"],
            }
            for lot, v in meta["lots"].items()
        ]
    )
    return Truth(law=StressLaw(**law_params), lots=lots, fields=fields)


def tile_truth(fields: pd.DataFrame, manifest: pd.DataFrame) -> pd.DataFrame:
    """True attributes of each manifest tile: the area-weighted mean of the fields it overlaps
    (exactly one field when the tile grid matches the field grid). Rows follow ``manifest``."""
    out = np.full((len(manifest), len(ATTRIBUTES)), np.nan)
    by_scan = {key: g for key, g in fields.groupby(["lot", "scan"])}
    manifest = manifest.reset_index(drop=True)
    for key, tiles in manifest.groupby(["lot", "scan"]):
        if key not in by_scan:
            continue
        f = by_scan[key]
        fy0, fx0 = f["y0"].to_numpy()[None], f["x0"].to_numpy()[None]
        fs = f["size_px"].to_numpy()[None]
        ty0, tx0 = tiles["y0"].to_numpy()[:, None], tiles["x0"].to_numpy()[:, None]
        ts = tiles["tile_px"].to_numpy()[:, None]
        oy = np.clip(np.minimum(ty0 + ts, fy0 + fs) - np.maximum(ty0, fy0), 0, None)
        ox = np.clip(np.minimum(tx0 + ts, fx0 + fs) - np.maximum(tx0, fx0), 0, None)
        weight = (oy * ox).astype(float)
        total = weight.sum(axis=1, keepdims=True)
        values = f[list(ATTRIBUTES)].to_numpy()
        with np.errstate(invalid="ignore"):
            out[tiles.index.to_numpy()] = (weight @ values) / total
    return pd.DataFrame(out, columns=list(ATTRIBUTES))
