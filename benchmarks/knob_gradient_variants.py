"""Explain-side variants of the knob gradient, scored like the referee on the committed model.

For issue 14: does averaging make the knob gradient follow the regressor's real response better,
without retraining? Variants: the plain gradient (reproduces ``knob_gradient/er/*`` of
``metrics/explain.json``), the mean over the eight symmetries of the square (test-time
augmentation), SmoothGrad in knob space (16 draws of A + N(0, sigma^2), clamped), and central
differences of R(G(I; A +- h e_k)). Mapped to true units by the referee's own label fit and
scored against the oracle slopes the explain stage wrote (``reports/explain/referee_tiles.csv``:
held-out tiles, evaluation only), so this reports, it does not choose: picking a variant on
these test lots would be tuning on test data. Needs ``make repro``.

    python benchmarks/knob_gradient_variants.py   # -> benchmarks/knob_gradient_variants.{json,md}
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from semknobs.attributes import ATTRIBUTES
from semknobs.data.dataset import AttributeScaler
from semknobs.data.schemas import read_lots
from semknobs.data.tiles import load_tiles
from semknobs.data.truth import read_truth
from semknobs.evaluation import fidelity
from semknobs.evaluation.referee import label_fit
from semknobs.explain.gradient import KnobGradient
from semknobs.models.concept import dihedral
from semknobs.pixels import to_model
from semknobs.serving import attgan_model, regressor_model

ROOT = Path(__file__).resolve().parents[1]
A = list(ATTRIBUTES)


def _central(gen, reg, x: torch.Tensor, attrs: torch.Tensor, h: float) -> np.ndarray:
    out = []
    with torch.no_grad():
        for k in range(len(A)):
            step = torch.zeros(len(A))
            step[k] = h
            up, down = (attrs + step).clamp(0, 1), (attrs - step).clamp(0, 1)
            out.append(((reg(gen(x, up)) - reg(gen(x, down))) / (up - down)[:, k]).numpy())
    return np.stack(out, axis=1)


def main() -> int:
    torch.set_num_threads(2)
    gen, gan = attgan_model.load(ROOT / "models" / "attgan")
    reg, _ = regressor_model.load(ROOT / "models" / "regressor")
    scored = pd.read_csv(ROOT / "reports" / "explain" / "referee_tiles.csv", dtype={"lot": str})
    labels = read_lots(ROOT / "data" / "synthetic" / "lots.csv")
    scaler = AttributeScaler.from_dict(gan.scaler)
    knob_labels = labels.copy()  # unclipped, as the referee fits them
    knob_labels[A] = scaler.transform(labels[A].to_numpy())
    truth = read_truth(ROOT / "data" / "synthetic" / "truth")
    slopes, _ = label_fit(truth.lots, knob_labels)  # knob units -> true units, the referee's
    oracle = scored[[f"oracle_{a}" for a in A]].to_numpy()
    known = np.abs(oracle) > 2 * scored[[f"oracle_se_{a}" for a in A]].to_numpy()

    tiles, manifest = load_tiles(ROOT / "data" / "tiles")
    position = pd.Series(np.arange(len(manifest)), index=manifest["tile"].to_numpy())
    x = to_model(tiles[position.loc[scored["tile"]].to_numpy()])
    by_lot = labels.set_index("lot").loc[scored["lot"], A].to_numpy()
    attrs = np.clip(scaler.transform(by_lot), 0, 1)
    attrs = torch.from_numpy(attrs).float()

    explainer = KnobGradient(gen, reg)
    rng = torch.Generator().manual_seed(0)

    def smooth(sigma: float) -> np.ndarray:
        draws = [
            explainer.attribute(
                x, (attrs + sigma * torch.randn(attrs.shape, generator=rng)).clamp(0, 1)
            ).gradient
            for _ in range(16)
        ]
        return np.mean(draws, axis=0)

    variants = {
        "plain gradient (the stage's)": lambda: explainer.attribute(x, attrs).gradient,
        "D4 mean": lambda: np.mean(
            [explainer.attribute(dihedral(x, k), attrs).gradient for k in range(8)], axis=0
        ),
        **{f"SmoothGrad sigma {s}": (lambda s=s: smooth(s)) for s in (0.05, 0.1, 0.2)},
        **{
            f"central difference h {h}": (lambda h=h: _central(gen, reg, x, attrs, h))
            for h in (0.1, 0.25)
        },
    }
    rows = []
    for name, compute in variants.items():
        s = fidelity.scores(compute() * slopes, oracle, known)
        rows.append({"variant": name, **s})
        print(name, round(s["cosine_median"], 3), flush=True)
    out = ROOT / "benchmarks" / "knob_gradient_variants"
    out.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")
    head = "| variant | cosine median | centred | signs size / porosity / dispersity / facetness |"
    lines = [head, "| --- | --- | --- | --- |"]
    for r in rows:
        signs = " / ".join(f"{r[f'sign_{a}']:.2f}" for a in A)
        lines.append(
            f"| {r['variant']} | {r['cosine_median']:.3f} | {r['centred_cosine']:.3f} | {signs} |"
        )
    note = f"\n{len(scored)} held-out tiles; oracle slopes from reports/explain/referee_tiles.csv\n"
    out.with_suffix(".md").write_text("\n".join(lines) + "\n" + note)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
