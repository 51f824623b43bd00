"""Does a longer AttGAN training buy fidelity? Continue the committed default from its last
checkpoint and save the generator at each requested step.

For issue 14 (README, "More steps do not buy fidelity either"). Run it in a scratch copy of a
workspace after ``make repro`` (it trains on, and rewrites, ``checkpoints/attgan``):

    python benchmarks/attgan_more_steps.py --to 4000 5000 6000 --out /tmp/steps
    # then, per step: copy /tmp/steps/generator_<step>.safetensors over
    # models/attgan/generator.safetensors and run benchmarks/knob_gradient_variants.py

The params are ``params.yaml``'s with ``steps`` set to the last requested step. The checkpoint's
fingerprint, which includes ``steps``, is reused, so the run resumes instead of starting over.
One departure from a straight run of that many steps: the concept refresh at the checkpoint's
step (skipped by the shorter run, which ended there) does not happen; the later ones do.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import torch

from semknobs.data.dataset import fit_scaler, load_tileset
from semknobs.data.split import read_splits
from semknobs.meter import read_measurements
from semknobs.stages import train_attgan as stage
from semknobs.train import attgan
from semknobs.train.checkpoint import read_meta, save_weights

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--to", type=int, nargs="+", required=True, help="steps to save at")
    parser.add_argument("--out", type=Path, required=True, help="folder for the generators")
    args = parser.parse_args()
    torch.set_num_threads(2)
    checkpoint = ROOT / "checkpoints" / "attgan"
    meta = read_meta(checkpoint)
    if meta is None:
        parser.error(f"no complete checkpoint in {checkpoint}: run `make repro` first")
    ends = sorted(args.to)
    if ends[0] <= meta["step"]:
        parser.error(f"--to must lie beyond the checkpoint's step {meta['step']}")
    paths = stage.Paths(
        tiles_dir=ROOT / "data" / "tiles",
        lots=ROOT / "data" / "synthetic" / "lots.csv",
        splits=ROOT / "data" / "splits.json",
        checkpoint_dir=checkpoint,
        model_dir=ROOT / "models" / "attgan",
        metrics=args.out / "unused.json",
        reports=args.out,
        tuned=ROOT / "tuned" / "attgan.yaml",
        measurements=ROOT / "data" / "measurements.csv",
    )
    params = stage.load(ROOT / "params.yaml", paths)
    train_params = replace(params.train, steps=ends[-1])
    attgan.AttGANTrainParams.fingerprint = lambda self, data_key="": meta["fingerprint"]
    splits = read_splits(paths.splits)
    lots = splits.training_lots(str(paths.splits))
    scaler = fit_scaler(paths.lots, lots)
    train = load_tileset(tiles_dir=paths.tiles_dir, lots_csv=paths.lots, lots=lots, scaler=scaler)
    readings = read_measurements(paths.measurements, train.manifest).to_numpy()
    args.out.mkdir(parents=True, exist_ok=True)
    for end in ends:
        trainer = attgan.train_attgan(
            params=train_params,
            images=torch.from_numpy(train.images),
            attrs=torch.from_numpy(train.attrs.copy()),
            checkpoint_dir=checkpoint,
            stop_after=end,
            readings=readings,
            lots=train.manifest["lot"].to_numpy(),
            meter=params.meter,
        )
        path = args.out / f"generator_{end}.safetensors"
        save_weights(path, trainer.generator)
        print(f"step {end}: {path}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
