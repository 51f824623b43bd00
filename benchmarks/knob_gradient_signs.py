"""Where does the knob gradient (SmoothGrad 0.3) get the sign wrong? Evaluation only.

For issue 14: on the training-lot selection set of ``knob_gradient_variants.py`` (48 tiles,
oracle rendered here), each attribute's sign accuracy by tercile of how well the oracle knows
the slope (|oracle| / se), of the tile's knob value and of the oracle slope, plus the knob
gradient's mean and spread across tiles. Needs ``make repro``.

    python benchmarks/knob_gradient_signs.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import knob_gradient_variants as kv
import pandas as pd

from semknobs.data.dataset import AttributeScaler
from semknobs.data.schemas import read_lots
from semknobs.data.tiles import load_tiles
from semknobs.data.truth import read_truth
from semknobs.evaluation.referee import label_fit
from semknobs.explain.gradient import KnobGradient, KnobGradientParams
from semknobs.pixels import to_model
from semknobs.serving import attgan_model, regressor_model


def main() -> int:
    torch.set_num_threads(2)
    root, names = kv.ROOT, kv.A
    gen, gan = attgan_model.load(root / "models" / "attgan")
    reg, _ = regressor_model.load(root / "models" / "regressor")
    tiles, manifest = load_tiles(root / "data" / "tiles")
    scored = kv._training_tiles(manifest, reg)
    labels = read_lots(root / "data" / "synthetic" / "lots.csv")
    scaler = AttributeScaler.from_dict(gan.scaler)
    knob_labels = labels.copy()
    knob_labels[names] = scaler.transform(labels[names].to_numpy())
    slopes, _ = label_fit(read_truth(root / "data" / "synthetic" / "truth").lots, knob_labels)
    oracle = scored[[f"oracle_{a}" for a in names]].to_numpy()
    se = scored[[f"oracle_se_{a}" for a in names]].to_numpy()
    known = np.abs(oracle) > 2 * se  # the referee's rule
    position = pd.Series(np.arange(len(manifest)), index=manifest["tile"].to_numpy())
    x = to_model(tiles[position.loc[scored["tile"]].to_numpy()])
    by_lot = labels.set_index("lot").loc[scored["lot"], names].to_numpy()
    attrs = torch.from_numpy(np.clip(scaler.transform(by_lot), 0, 1)).float()
    explainer = KnobGradient(gen, reg, KnobGradientParams(smoothing=0.3))
    g = explainer.attribute(x, attrs).gradient * slopes
    for k, a in enumerate(names):
        m = known[:, k]
        ok = np.sign(g[m, k]) == np.sign(oracle[m, k])
        mean, spread = g[m, k].mean(), g[m, k].std()
        print(
            f"\n{a}: oracle known on {m.sum()}/{len(m)} tiles, sign right on {ok.mean():.2f}; "
            f"knob gradient mean / spread across tiles {mean / spread:.2f}"
        )
        by = {
            "|oracle| / se": np.abs(oracle[m, k]) / se[m, k],
            "knob value": attrs.numpy()[m, k],
            "oracle slope": oracle[m, k],
        }
        for name, v in by.items():
            bins = np.digitize(v, np.quantile(v, [1 / 3, 2 / 3]))
            right = [f"{ok[bins == b].mean():.2f} (n {(bins == b).sum()})" for b in range(3)]
            print(f"  sign right by tercile of {name}: {' / '.join(right)}")
        print("  lots of the wrong-sign tiles:", sorted(set(scored["lot"].to_numpy()[m][~ok])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
