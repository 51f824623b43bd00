"""The concept network's width: how well it reads held-out tiles vs what it costs to fit.

For issue 14 (a cheaper concept network for a shorter ``train_attgan``): fit ``C`` on the
training lots' tiles and their calibrated meter readings exactly as ``train_attgan`` pre-trains
it (``train_attgan.train.concept``, only the width and steps changed), then report the Spearman
correlation of its symmetric reading with the calibrated meter on the test lots' tiles, and the
fit's wall time (2 threads). Needs ``make repro`` (data/tiles, data/measurements.csv, splits).

    python benchmarks/concept_width.py   # -> benchmarks/concept_width.{json,md}
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import torch
from scipy.stats import spearmanr

from semknobs.attributes import ATTRIBUTES
from semknobs.config import from_mapping, load_params
from semknobs.data.dataset import fit_scaler, load_tileset
from semknobs.data.split import read_splits
from semknobs.meter import MeterParams, read_measurements
from semknobs.pixels import to_model
from semknobs.train.attgan_params import TrainAttGANStageParams
from semknobs.train.concept import ConceptTrainer

ROOT = Path(__file__).resolve().parents[1]
RUNS = [(16, 600), (8, 600), (8, 1200)]  # (width, pre-training steps)


def main() -> int:
    torch.set_num_threads(2)
    params = load_params(ROOT / "params.yaml")
    base = from_mapping(TrainAttGANStageParams, params["train_attgan"]).train
    lots_csv = ROOT / params["data"]["lots"]
    splits = read_splits(ROOT / "data" / "splits.json")
    train_lots = splits.training_lots("data/splits.json")
    scaler = fit_scaler(lots_csv, train_lots)
    sets = {
        name: load_tileset(
            tiles_dir=ROOT / "data" / "tiles", lots_csv=lots_csv, lots=lots, scaler=scaler
        )
        for name, lots in (("train", train_lots), ("test", splits.test))
    }
    readings = {
        name: read_measurements(ROOT / "data" / "measurements.csv", s.manifest).to_numpy()
        for name, s in sets.items()
    }
    train = sets["train"]
    rows = []
    for width, steps in RUNS:
        cp = dataclasses.replace(
            base.concept, steps=steps, model=dataclasses.replace(base.concept.model, width=width)
        )
        torch.manual_seed(base.seed)  # the network's initial weights, as train_attgan seeds them
        trainer = ConceptTrainer.calibrated(
            cp, torch.device("cpu"), torch.Generator().manual_seed(0), base.model.img_size,
            images=torch.from_numpy(train.images), readings=readings["train"],
            labels=torch.from_numpy(train.attrs), lots=train.manifest["lot"].to_numpy(),
            meter=MeterParams(),
        )  # fmt: skip
        start = time.perf_counter()
        trainer.fit(steps)
        seconds = time.perf_counter() - start
        with torch.no_grad():
            pred = trainer.net(to_model(torch.from_numpy(sets["test"].images)), symmetric=True)
        target = trainer.calibrate(torch.as_tensor(readings["test"], dtype=torch.float32))
        rho = [
            float(spearmanr(pred[:, k], target[:, k], nan_policy="omit")[0])
            for k in range(len(ATTRIBUTES))
        ]
        rows.append(
            {"width": width, "steps": steps, "fit_s": seconds, "rho": dict(zip(ATTRIBUTES, rho))}
        )
        print(rows[-1], flush=True)
    out = ROOT / "benchmarks" / "concept_width"
    out.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")
    lines = [
        "| width | steps | fit (s) | Spearman with the meter, test tiles: "
        + " / ".join(ATTRIBUTES)
        + " |"
    ]
    lines.append("| --- | --- | --- | --- |")
    for r in rows:
        rho = " / ".join(f"{v:.3f}" for v in r["rho"].values())
        lines.append(f"| {r['width']} | {r['steps']} | {r['fit_s']:.1f} | {rho} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
