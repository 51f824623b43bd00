"""The knob gradient read through the regressor's real-tile feature subspace (Rule F, issue 14).

Evaluation only. If the regressor read an edit's off-manifold texture through directions of its
pooled features ``F`` that real tiles never take, reading the edit through the subspace the real
training tiles span would drop it: ``R_P(x) = head(mu + P (F(x) - mu))``, ``P`` the projection
on the top principal directions of ``F`` over every real tile of the training lots that keep a
share ``s`` of its variance, ``mu`` their mean (truth-free). Each variant is scored like the
referee (SmoothGrad sigma 0.3, the explain stage's default; ``knob_gradient_variants.py``'s
tiles and oracle), beside the off-subspace residual alone (``R`` read through ``I - P``: how
much of the knob gradient comes through directions real tiles do not take) and the RMS gap
between ``R_P`` and the regressor on the held-out real tiles (no truth involved).

``--lots train`` is the selection set (two seeded tiles per training lot, oracle rendered here);
``--lots test`` only reports (the explain stage's scored held-out tiles). Needs ``make repro``
(or a study workspace: ``--workspace``).

    python benchmarks/on_manifold.py [--workspace DIR] [--lots train] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from semknobs.data.split import read_splits
from semknobs.data.tiles import load_tiles
from semknobs.explain.gradient import KnobGradient
from semknobs.models.regressor import PeakStressRegressor, pooled_features

SHARES = (0.9, 0.95, 0.99, 0.999)


class Projected(nn.Module):
    """The regressor's standardised output with its pooled features projected on ``basis``
    (columns orthonormal) around ``mean``, or on its complement (``residual``); ``basis`` None:
    the regressor itself."""

    def __init__(
        self,
        reg: PeakStressRegressor,
        mean: torch.Tensor,
        basis: torch.Tensor | None,
        residual: bool = False,
    ):
        super().__init__()
        self.reg, self.mean, self.basis, self.residual = reg, mean, basis, residual

    def read(self, feats: torch.Tensor) -> torch.Tensor:
        centred = feats - self.mean
        if self.basis is not None:
            on = centred @ self.basis @ self.basis.T
            centred = centred - on if self.residual else on
        return self.reg.net.get_classifier()(centred + self.mean).squeeze(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.read(self.reg.features(x))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", type=Path, default=Path("."))
    parser.add_argument("--lots", choices=("train", "test"), default="train")
    parser.add_argument("--out", type=Path, default=None, help="JSON (default: benchmarks/...)")
    args = parser.parse_args()
    ws = args.workspace.resolve()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import knob_gradient_variants as kgv  # the referee's tiles and oracle, as it scores them

    kgv.ROOT = ws
    torch.set_num_threads(2)
    sc = kgv.load_scored(args.lots)
    reg = sc.reg.eval()
    tiles, manifest = load_tiles(ws / "data" / "tiles")
    splits = read_splits(ws / "data" / "splits.json")
    lots = manifest["lot"].to_numpy()
    f_train = pooled_features(reg, tiles[np.isin(lots, splits.training_lots())])
    f_test = pooled_features(reg, tiles[np.isin(lots, splits.test)])
    mean = f_train.mean(0)
    _, svals, vt = torch.linalg.svd(f_train - mean, full_matrices=False)
    share = torch.cumsum(svals**2, 0) / (svals**2).sum()

    variants = {"regressor": Projected(reg, mean, None)}
    for s in SHARES:
        basis = vt[: int((share < s).sum()) + 1].T.contiguous()
        variants[f"on-subspace s={s} (m={basis.shape[1]})"] = Projected(reg, mean, basis)
        variants[f"off-subspace residual s={s}"] = Projected(reg, mean, basis, residual=True)
    rows = []
    with torch.no_grad():
        full_test = variants["regressor"].read(f_test)
    params = kgv.stage_params()  # SmoothGrad sigma 0.3, the rule's
    for name, model in variants.items():
        grad = KnobGradient(sc.gen, model, params).attribute(sc.x, sc.attrs).gradient
        s = sc.score(grad)
        row = {"variant": name, **s, "mean_gradient_standardised": grad.mean(0).tolist()}
        if not model.residual:
            with torch.no_grad():
                gap = (model.read(f_test) - full_test).pow(2).mean().sqrt() * reg.target_std
            row["rms_gap_heldout_real_tiles_mpa"] = float(gap)
        rows.append(row)
        signs = " / ".join(f"{s[f'sign_{a}']:.2f}" for a in kgv.A)
        print(f"{name}: cosine {s['cosine_median']:.3f}, signs {signs}", flush=True)
    out = args.out or ws / "benchmarks" / f"on_manifold_{args.lots}.json"
    meta = {
        "workspace": ws.name,
        "lots": args.lots,
        "tiles": len(sc.tiles),
        "features": int(f_train.shape[1]),
        "variance_share_first_8": [round(float(v), 4) for v in share[:8]],
    }
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
