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

from semknobs.explain.gradient import KnobGradient, KnobGradientParams


def main() -> int:
    torch.set_num_threads(2)
    sc = kv.load_scored("train")
    names, oracle, attrs, scored = kv.A, sc.oracle, sc.attrs, sc.tiles
    se = scored[[f"oracle_se_{a}" for a in names]].to_numpy()
    known = sc.known
    explainer = KnobGradient(sc.gen, sc.reg, KnobGradientParams(smoothing=0.3))
    g = explainer.attribute(sc.x, attrs).gradient * sc.slopes
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
