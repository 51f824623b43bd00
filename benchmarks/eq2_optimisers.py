"""Eq. 2 optimisers side by side: mean objective and success vs objective evaluations.

How the default search (``explain.counterfactual``: optimizer, restarts, steps) was chosen:
on tiles of the *training* lots (2 per lot, the explain stage's starting knobs: the lots'
labels), both targets, every optimiser at several step budgets; the held-out test lots are
reported beside them as a check, never used to choose. Needs the pipeline's outputs
(``make repro``: models/explainer, data/tiles, data/splits.json).

    python benchmarks/eq2_optimisers.py   # -> benchmarks/eq2_optimisers.{json,md}
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from semknobs.attributes import ATTRIBUTES
from semknobs.config import load_params
from semknobs.data.schemas import read_lots
from semknobs.data.split import read_splits
from semknobs.data.tiles import load_tiles
from semknobs.explain.bundle import KnobExplainer
from semknobs.pixels import to_model

# (optimiser, starts per tile, evaluations per start)
CONFIGS = [("adam", 3, n) for n in (30, 50, 100, 150)] + [("bfgs", 3, n) for n in (10, 20, 30, 50)]
CONFIGS += [("bfgs", 1, 60), ("bfgs", 2, 20), ("bfgs", 2, 30), ("bfgs", 2, 45)]


def _tiles(tiles: np.ndarray, manifest, lots: list[str], per_lot: int, seed: int):
    rng = np.random.default_rng(seed)
    lot_col = manifest["lot"].to_numpy()
    rows = np.concatenate(
        [rng.choice(np.flatnonzero(lot_col == lot), per_lot, replace=False) for lot in lots]
    )
    return tiles[rows], manifest["lot"].iloc[rows].to_numpy()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=Path("models/explainer"))
    parser.add_argument("--per-lot", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/eq2_optimisers.json"))
    parser.add_argument("--table", type=Path, default=Path("benchmarks/eq2_optimisers.md"))
    args = parser.parse_args(argv)
    raw = load_params("params.yaml")
    explainer = KnobExplainer.from_folder(args.bundle)
    splits = read_splits(Path("data/splits.json"))  # the split stage's output (dvc.yaml)
    labels = read_lots(Path(raw["data"]["lots"])).set_index("lot")
    all_tiles, manifest = load_tiles(Path("data/tiles"))
    rows = []
    for split, lots in (("train", list(splits.train)), ("test", list(splits.test))):
        tiles, lot_of = _tiles(all_tiles, manifest, lots, args.per_lot, seed=0)
        images = to_model(tiles)
        start = labels.loc[lot_of, list(ATTRIBUTES)].to_numpy(float)
        attrs, _ = explainer.start_attributes(images, start)
        for optimizer, restarts, steps in CONFIGS:
            objective, success, seconds = [], [], 0.0
            for target in ("higher", "lower"):
                params = explainer.settings(
                    target=target, optimizer=optimizer, steps=steps, restarts=restarts
                )
                t0 = time.perf_counter()
                res = explainer.search.attribute(images, attrs, params)
                seconds += time.perf_counter() - t0
                objective.append(res.objective)
                success.append(res.success)
            rows.append(
                {
                    "split": split,
                    "optimizer": optimizer,
                    "restarts": restarts,
                    "steps": steps,
                    "tiles": len(tiles),
                    "objective_mean": float(np.concatenate(objective).mean()),
                    "success_rate": float(np.concatenate(success).mean()),
                    "seconds": seconds,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    defaults = dataclasses.asdict(explainer.defaults)
    args.out.write_text(json.dumps({"defaults": defaults, "rows": rows}, indent=2) + "\n")
    lines = [
        "| lots | optimiser | starts | evaluations per start | mean Eq. 2 objective | success "
        "| search s |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    lines += [
        f"| {r['split']} ({r['tiles']} tiles) | {r['optimizer']} | {r['restarts']} "
        f"| {r['steps']} | {r['objective_mean']:.4f} | {r['success_rate']:.2f} "
        f"| {r['seconds']:.1f} |"
        for r in rows
    ]
    args.table.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
