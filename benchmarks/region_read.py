"""Where in a tile the regressor reads an edit: by crystal region and by scale. Evaluation only
(issue 14).

Replays ``evaluate_attgan``'s held-out control sweep (``concept_leak.py``'s editor and sweeps)
and the meter ceiling's true one-attribute interventions on the first ``ceiling.n_tiles`` of
its tiles. Each sweep's change from its mean tile is cut by the crystal mask of that mean tile
(``semknobs.train.texture.soft_regions``: interiors, a ±``RING_PX`` outline ring, background,
softened by a 1 px Gaussian so that the three parts sum to the change) and by scale
(difference-of-Gaussian bands: ≤ 2 px, 2–8 px, the rest), and the regressor reads the mean tile
plus one part: the slope of its prediction on the requested level, MPa per knob unit. The parts'
reads need not sum to the whole's (the regressor is not linear). Then the texture loss's region
statistics (``texture_regions``), the edits' change per knob unit in spreads of the real
training tiles beside the lots' fit ``W``: what a region term asks of an edit. Last, per tile:
the sign of the regressor's slope on each edit sweep, whole, without its background part and
on that part alone, against the sign of the true change at the tile's attributes (Rule W: the
committed size edit's right signs come from its background part).

    python benchmarks/region_read.py [--workspace DIR] [--out benchmarks/region_read.md]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from semknobs.models.regressor import PeakStressRegressor
from semknobs.pixels import to_model
from semknobs.serving import regressor_model
from semknobs.train.texture import REGIONS, soft_regions, texture_agreement

sys.path.insert(0, str(Path(__file__).resolve().parent))
from concept_leak import (
    A,
    Editor,
    dog_bands,
    edit_sweeps,
    load_editor,
    predict_unrounded,
    prediction_slopes,
    report_main,
    true_sweeps,
)

PARTS = ["whole", "<= 2 px", "2-8 px", "> 8 px"]


def sweep_regions(tiles: np.ndarray, n_levels: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """uint8 sweeps (sweep, level order) -> each tile's sweep mean (n, S, S), its change from it
    (n, S, S) and its soft region weights (n, 3, S, S), from the crystal mask of the mean."""
    x = to_model(tiles).squeeze(1).double().numpy()
    side = x.shape[-1]
    sweeps = x.reshape(-1, n_levels, side, side)
    mean = sweeps.mean(axis=1, keepdims=True)
    change = (sweeps - mean).reshape(-1, side, side)
    soft = soft_regions(torch.from_numpy(mean).float()).numpy()  # (sweeps, 3, S, S)
    soft = np.repeat(soft, n_levels, axis=0)
    base = np.broadcast_to(mean, sweeps.shape).reshape(-1, side, side)
    return base, change, soft


def region_parts(tiles: np.ndarray, n_levels: int) -> tuple[np.ndarray, dict, np.ndarray]:
    """:func:`sweep_regions` with the change split by scale (``PARTS`` -> (n, S, S))."""
    base, change, soft = sweep_regions(tiles, n_levels)
    bands = dog_bands(change)  # <= 1, 1-2, 2-4, 4-8 px, the rest
    parts = dict(zip(PARTS, [change, bands[0] + bands[1], bands[2] + bands[3], bands[4]]))
    return base, parts, soft


def region_table(
    reg: PeakStressRegressor, tiles: dict[str, np.ndarray], levels: np.ndarray
) -> pd.DataFrame:
    """Per knob and region (and the whole tile), the regressor's slope on each part."""
    rows = []
    for knob in A:
        base, parts, soft = region_parts(tiles[knob], len(levels))
        shares = soft.mean(axis=(0, 2, 3))
        for r, region in enumerate(["all", *REGIONS]):
            weight = 1.0 if region == "all" else soft[:, r - 1]
            row = {"knob": knob, "region": region}
            row["area"] = 1.0 if region == "all" else float(shares[r - 1])
            for name, part in parts.items():
                y = predict_unrounded(reg, base + weight * part)
                row[name] = float(prediction_slopes({k: y for k in A}, levels)[knob])
            rows.append(row)
    return pd.DataFrame(rows)


def _tile_slopes(reg: PeakStressRegressor, tiles: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Model-range sweeps (sweep, level order) -> the regressor's slope per sweep (MPa/unit)."""
    y = predict_unrounded(reg, tiles).reshape(-1, len(levels))
    x = levels - levels.mean()
    return y @ x / (x * x).sum()


def sign_table(
    reg: PeakStressRegressor,
    edits: dict[str, np.ndarray],
    rendered: dict[str, np.ndarray],
    levels: np.ndarray,
    n: int,
) -> pd.DataFrame:
    """Per knob: the regressor's slope on each of the ``n`` tiles' edit sweeps, whole, without
    the background part of its change and on that part alone; the median and the share of
    tiles whose sign agrees with the true change's at the tile's attributes (the mean over the
    render's tiles)."""
    rows = []
    for knob in A:
        tiles = to_model(rendered[knob]).squeeze(1).double().numpy()
        true = _tile_slopes(reg, tiles, levels).reshape(n, -1).mean(axis=1)
        base, change, soft = sweep_regions(edits[knob], len(levels))  # no scale bands needed
        bg = soft[:, REGIONS.index("background")] * change
        cut = {"whole": change, "without background": change - bg, "background only": bg}
        for name, part in cut.items():
            slope = _tile_slopes(reg, base + part, levels)
            rows.append(
                {"knob": knob, "edit's part": name, "median": float(np.median(slope)),
                 "sign agrees": float(np.mean(np.sign(slope) == np.sign(true))),
                 "true median": float(np.median(true))}
            )  # fmt: skip
    return pd.DataFrame(rows).set_index(["knob", "edit's part"])


def region_statistics(ed: Editor) -> pd.DataFrame:
    """The region statistics' change per knob unit of the edits (``texture_agreement``'s
    ±0.25 steps) beside the lots' fit, in spreads of the training tiles."""
    target = ed.texture_target(regions=True)
    x, attrs = to_model(ed.images), torch.from_numpy(ed.attrs)
    _, table = texture_agreement(ed.gen, x, attrs, target)
    table = table[table["statistic"].str.startswith(REGIONS)]
    cell = table["edit"].map("{:+.2f}".format) + " (" + table["lots"].map("{:+.2f}".format) + ")"
    wide = table.assign(cell=cell).pivot(index="statistic", columns="knob", values="cell")
    return wide.loc[table["statistic"].unique(), A]


def report(ws: Path) -> str:
    ed = load_editor(ws)
    edits, rendered = edit_sweeps(ed), true_sweeps(ed)
    n = min(ed.params.ceiling.n_tiles, len(ed.tiles))
    reg, _ = regressor_model.load(ws / "models/regressor")
    reg.eval()
    first = {k: edits[k][: n * len(ed.levels)] for k in A}
    table = pd.concat(
        [
            region_table(reg, first, ed.levels).assign(sweep="edit"),
            region_table(reg, rendered, ed.levels).assign(sweep="true"),
        ]
    )
    table = table.set_index(["knob", "sweep", "region"]).loc[A].round(2)
    return (
        "\n\n".join(
            [
                f"# Where the regressor reads an edit ({ws.resolve().name})",
                f"Held-out control sweep of `evaluate_attgan`, the first {n} tiles x "
                f"{len(ed.levels)} levels per knob, edits (`edit`) and true interventions "
                "(`true`). Slopes in MPa per knob unit of the sweep's mean tile plus one part of "
                "its change; `area`: the region's share of the tile.",
                "## By region and scale\n\n" + table.to_markdown(),
                "## Region statistics of the edits, per knob unit in spreads (the lots' fit)\n\n"
                + region_statistics(ed).to_markdown(),
                "## Per tile: the sign of the read, with and without the background part\n\n"
                + sign_table(reg, first, rendered, ed.levels, n).round(2).to_markdown(),
            ]
        )
        + "\n"
    )


def main() -> int:
    return report_main(report, __doc__.splitlines()[0], "benchmarks/region_read.md")


if __name__ == "__main__":
    raise SystemExit(main())
