"""Does the facetness knob change the crystals' shape? Evaluation only (issue 14).

Replays ``evaluate_attgan``'s held-out control sweep of the facetness knob (``concept_leak.py``'s
editor and sweeps) and the meter ceiling's true facetness interventions on the first
``ceiling.n_tiles`` of its tiles, and reads the outlines at the sweep's ends (facetness 0 and 1)
with both of the meter's harmonic readings (``semknobs.meter``, ``facet_harmonic``), whatever
the workspace's own meter uses: ``energy`` (harmonics 3-8 together) and ``dominant`` (the
largest one). A polygon puts its corners into one harmonic, a wobbling outline spreads over all
six, so ``dominant / energy`` is 1 for a pure n-gon and ~0.41 for an even wobble. ``of true``:
the edits' change between the ends as a share of the true interventions' change.

    python benchmarks/facet_shape.py --workspace DIR [--workspace DIR ...] [--out FILE]
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from semknobs.meter import MeterParams, measure_tiles

sys.path.insert(0, str(Path(__file__).resolve().parent))
from concept_leak import edit_sweeps, load_editor, report_main, true_sweeps

HARMONICS = ("energy", "dominant")
KNOB = "facetness"


def facetness(tiles: np.ndarray, meter: MeterParams) -> dict[str, float]:
    """Mean facetness of uint8 tiles under each harmonic reading (NaN-tiles left out)."""
    out = {}
    for h in HARMONICS:
        read = measure_tiles(tiles, replace(meter, facet_harmonic=h), progress=False)[KNOB]
        out[h] = float(np.nanmean(read.to_numpy(float)))
    return out


def ends(sweeps: np.ndarray, levels: int, meter: MeterParams) -> dict[str, float]:
    """Readings at the sweep's first and last level, and the coherence at the last."""
    side = sweeps.shape[-1]
    by_level = sweeps.reshape(-1, levels, side, side)
    lo, hi = facetness(by_level[:, 0], meter), facetness(by_level[:, -1], meter)
    row = {f"{h} f=0": lo[h] for h in HARMONICS} | {f"{h} f=1": hi[h] for h in HARMONICS}
    row["dominant / energy, f=1"] = hi["dominant"] / hi["energy"]
    return row


def report(workspaces: list[Path]) -> str:
    editors = [load_editor(ws) for ws in workspaces]
    first = editors[0]
    meter = first.meter  # its harmonic reading is replaced by each of HARMONICS in turn
    n = min(first.params.ceiling.n_tiles, len(first.tiles))
    levels = len(first.levels)
    rows = {"true intervention": ends(true_sweeps(first)[KNOB], levels, meter)}
    for ws, ed in zip(workspaces, editors):
        rows[f"{ws.resolve().name}: edit"] = ends(
            edit_sweeps(ed)[KNOB][: n * levels], levels, meter
        )
    table = pd.DataFrame(rows).T
    true = table.loc["true intervention"]
    for h in HARMONICS:
        table[f"{h}: of true"] = (table[f"{h} f=1"] - table[f"{h} f=0"]) / (
            true[f"{h} f=1"] - true[f"{h} f=0"]
        )
    source = facetness(first.images[:n], meter)
    return (
        "\n\n".join(
            [
                "# Does the facetness knob change the crystals' shape?",
                f"Held-out control sweep of `evaluate_attgan`, the first {n} tiles, the facetness "
                f"knob's ends (0 and 1 of {levels} levels); the meter ({workspaces[0]}'s settings) "
                "read with each harmonic reading. `of true`: the edit's change between the ends "
                "over the true interventions'.",
                table.round(4).to_markdown(),
                "The unedited tiles (every editor edits the same): "
                + ", ".join(f"{h} {v:.4f}" for h, v in source.items()),
            ]
        )
        + "\n"
    )


def main() -> int:
    return report_main(report, __doc__.splitlines()[0], "benchmarks/facet_shape.md", many=True)


if __name__ == "__main__":
    raise SystemExit(main())
