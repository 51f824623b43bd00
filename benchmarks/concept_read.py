"""Does the concept network read the editor's one-knob edits as the meter does, lot by lot?

A diagnosis for issue 14 (evaluation only; no truth or renderer is read). The edits' meter-read
gain follows each lot's own level of the knob (the porosity edit scales the pores a tile has).
Either the frozen concept network C, the generator's only concept signal, is satisfied by edits
the meter reads as level-dependent (C misreads them: a C problem), or C reads the same shortfall
(the generator does not deliver what the concept loss asks: a generator problem). Per knob, on
``--per-lot`` seeded tiles of every training lot at the lot's labels (knob units): central
differences ``A +- step e_k`` of the committed editor, read by C (from the training checkpoint,
``checkpoints/attgan``, which holds it) and by the calibrated meter (``explain``'s calibration);
the gain is the read change per requested unit (1 = the concept loss's target), averaged per lot.

    python benchmarks/concept_read.py [--per-lot 6]   # -> benchmarks/concept_read.md
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from knob_gradient_variants import ROOT, meter_calibration, training_rows

from semknobs.attributes import ATTRIBUTES
from semknobs.config import from_mapping, load_params
from semknobs.data.dataset import AttributeScaler
from semknobs.data.schemas import read_lots
from semknobs.data.tiles import load_tiles
from semknobs.explain.measured import measured_jacobian
from semknobs.models.concept import ConceptNet
from semknobs.pixels import to_model
from semknobs.serving import attgan_model
from semknobs.train.attgan_params import TrainAttGANStageParams
from semknobs.train.checkpoint import load_checkpoint, read_meta
from semknobs.train.concept import net_config

A = list(ATTRIBUTES)


def concept_net(checkpoint: Path) -> ConceptNet:
    """The concept network as the last checkpoint of ``train_attgan`` left it."""
    raw = load_params(ROOT / "params.yaml")["train_attgan"]
    train = from_mapping(TrainAttGANStageParams, raw).train
    net = ConceptNet(net_config(train.concept, count=train.lambda_count > 0))
    load_checkpoint(checkpoint, modules={"concept": net}, optimizers={}, rng=torch.Generator())
    return net.eval()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-lot", type=int, default=6)
    parser.add_argument("--step", type=float, default=0.25)
    args = parser.parse_args()
    checkpoint = ROOT / "checkpoints" / "attgan"
    if read_meta(checkpoint) is None:
        raise SystemExit(f"{checkpoint}: no training checkpoint (run `make repro` first)")
    torch.set_num_threads(2)
    gen, cfg = attgan_model.load(ROOT / "models" / "attgan")
    gen.eval()
    net = concept_net(checkpoint)
    scaler = AttributeScaler.from_dict(cfg.scaler)
    tiles, manifest = load_tiles(ROOT / "data" / "tiles")
    rows = training_rows(manifest, args.per_lot)
    chosen = manifest.iloc[rows].reset_index(drop=True)
    labels = read_lots(ROOT / "data" / "synthetic" / "lots.csv")
    knob = np.clip(scaler.transform(labels.set_index("lot").loc[chosen["lot"], A].to_numpy()), 0, 1)
    a = torch.from_numpy(knob).float()
    x = to_model(tiles[rows])
    meter = measured_jacobian(gen, x, a, meter_calibration(scaler), args.step, n_jobs=2)
    per_tile = {"lot": chosen["lot"].to_numpy()}
    with torch.no_grad():
        for j, name in enumerate(A):
            shift = torch.zeros_like(a)
            shift[:, j] = args.step
            up, down = gen(x, a + shift, a), gen(x, a - shift, a)
            per_tile[f"C_{name}"] = (net(up) - net(down))[:, j].numpy() / (2 * args.step)
            per_tile[f"meter_{name}"] = meter[:, j, j]
    lots = pd.DataFrame(per_tile).groupby("lot").mean()
    level = labels.set_index("lot").loc[lots.index, A]
    lines = [
        "| knob | gain read by C / by the meter (study mean; target 1) | lots' gain vs the lot's "
        "label: C / meter | C vs meter over lots |",
        "| --- | --- | --- | --- |",
    ]
    for name in A:
        c, m = lots[f"C_{name}"], lots[f"meter_{name}"]
        lines.append(
            f"| {name} | {c.mean():.2f} / {m.mean():.2f} | {c.corr(level[name]):+.2f} / "
            f"{m.corr(level[name]):+.2f} | {c.corr(m):+.2f} |"
        )
    note = (
        f"\n{len(chosen)} tiles of {len(lots)} training lots ({args.per_lot} each), one-knob "
        f"edits at the lot labels +- {args.step} knob units; Pearson correlations over lot means.\n"
    )
    (ROOT / "benchmarks" / "concept_read.md").write_text("\n".join(lines) + "\n" + note)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
