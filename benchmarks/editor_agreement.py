"""Per knob: is there per-tile structure in the oracle, do editors agree on theirs, and with it?

A diagnosis for issue 14 (evaluation only). Rule H and Rule AG (``editor_ensemble_rules.md``)
found the pooled centred cosine near 0 for every editor and mean; the pooled figure is
dominated by the knob with the largest spread in true units, so this splits it by knob. Per
knob, over the scored tiles: the oracle's split halves' correlation (tile-centred and on lot
means: is there structure to find), the median over editor pairs of the correlation of their
knob gradients (do editors agree, i.e. is their per-tile structure a shared read or each one's
noise), and each editor's correlation with the oracle (the median over editors, and the mean
of all editors'). Correlations are Pearson over tiles (or lot means); a constant scores 0.

    python benchmarks/editor_agreement.py --editor models/attgan --editor <ws>/models/attgan ...
        [--lots test]   # -> benchmarks/editor_agreement_<lots>.{json,md}
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np
import torch
from editor_ensemble import editor_gradients
from knob_gradient_variants import ROOT, load_scored, stage_params

from semknobs.attributes import ATTRIBUTES
from semknobs.evaluation import fidelity

A = list(ATTRIBUTES)


def corr(x: np.ndarray, y: np.ndarray, lots: np.ndarray | None = None) -> float:
    """Pearson correlation over tiles, or over lot means with ``lots`` (the referee's centred
    cosines of one column); 0 where either is constant."""
    x, y = x[:, None], y[:, None]
    return (
        fidelity.centred_cosine(x, y) if lots is None else fidelity.lot_centred_cosine(x, y, lots)
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--editor", action="append", type=Path, required=True)
    parser.add_argument("--lots", choices=("train", "test"), default="train")
    args = parser.parse_args()
    if len(args.editor) < 2:
        parser.error("--editor: at least two editors")
    torch.set_num_threads(2)
    sc = load_scored(args.lots)
    params = stage_params()
    lots = sc.tiles["lot"].to_numpy()
    grads = [g * sc.slopes for g in editor_gradients(args.editor, sc)[1]]
    mean = np.mean(grads, axis=0)
    halves = f"oracle_half1_{A[0]}" in sc.tiles  # the training-lot set renders them
    rows = []
    for k, a in enumerate(A):
        row: dict[str, float | str] = {"attribute": a}
        for scope, by in (("tile", None), ("lot", lots)):
            o = sc.oracle[:, k]
            if halves:
                h1, h2 = (sc.tiles[f"oracle_half{h}_{a}"].to_numpy() for h in (1, 2))
                row[f"{scope}/oracle_halves"] = corr(h1, h2, by)
            gk = [g[:, k] for g in grads]
            pairs = [corr(x, y, by) for x, y in itertools.combinations(gk, 2)]
            row[f"{scope}/editor_pairs"] = float(np.median(pairs))
            row[f"{scope}/editor_vs_oracle"] = float(np.median([corr(x, o, by) for x in gk]))
            row[f"{scope}/mean_vs_oracle"] = corr(mean[:, k], o, by)
        row["oracle_sd"] = float(sc.oracle[:, k].std())
        row["oracle_mean"] = float(sc.oracle[:, k].mean())
        rows.append(row)
    out = ROOT / "benchmarks" / f"editor_agreement_{args.lots}"
    out.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")
    cols = [c for c in rows[0] if c != "attribute"]
    lines = ["| attribute | " + " | ".join(cols) + " |", "| --- |" + " --- |" * len(cols)]
    lines += [
        f"| {r['attribute']} | " + " | ".join(f"{r[c]:.3f}" for c in cols) + " |" for r in rows
    ]
    note = (
        f"\n{len(sc.tiles)} tiles ({args.lots} lots), {len(grads)} editors, each SmoothGrad "
        f"sigma {params.smoothing} ({params.samples} draws), true units (the referee's label "
        "fit); Pearson correlations, 'tile' over tiles, 'lot' over lot means.\n"
    )
    out.with_suffix(".md").write_text("\n".join(lines) + "\n" + note)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
