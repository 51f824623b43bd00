"""DVC stage `train_attgan`: train the AttGAN on the training lots and log it to MLflow (the
`evaluate_attgan` stage measures it on the held-out test lots; `register` registers it as
`semknobs-attgan`).

The AttGAN never sees a test lot's tiles (the sample grids it logs while training are pictures
of test tiles, for people). Rerunning after an interruption resumes from the last checkpoint
(--checkpoint-dir is a persistent DVC output).

Data-parallel: ``torchrun --standalone --nproc-per-node N pipelines/train_attgan.py ...`` trains
with DDP (see :mod:`semknobs.train.distributed`); rank 0 does everything else.
"""

import argparse
import time
from pathlib import Path

import torch

from semknobs import registry, tracking
from semknobs.config import deep_merge, from_mapping, load_overrides, load_params, to_mapping
from semknobs.data.dataset import fit_scaler, load_tileset, read_splits
from semknobs.evaluation.attgan import sample_grid
from semknobs.stage import save_figure, stage_main, write_json, write_metrics
from semknobs.train import distributed
from semknobs.train.attgan import TrainAttGANStageParams, train_attgan


@stage_main
def main(argv: list[str] | None = None) -> None:
    with distributed.session() as world:
        run(argv, world)


def run(argv: list[str] | None, world: distributed.World) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--tuned", type=Path, help="overrides from tune_attgan (YAML)")
    parser.add_argument("--tiles-dir", type=Path, required=True)
    parser.add_argument("--lots", type=Path, required=True)
    parser.add_argument("--splits", type=Path, required=True)
    parser.add_argument("--checkpoint-dir", type=Path, required=True)
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--reports", type=Path, required=True)
    args = parser.parse_args(argv)
    section = load_params(args.params).get("train_attgan", {})
    tuned = load_overrides(args.tuned)
    if tuned:
        section = deep_merge(section, {"train": tuned})
    params = from_mapping(TrainAttGANStageParams, section, where=f"{args.params}: train_attgan")

    splits = read_splits(args.splits)
    scaler = fit_scaler(args.lots, splits["train"])
    train = load_tileset(
        tiles_dir=args.tiles_dir, lots_csv=args.lots, lots=splits["train"], scaler=scaler
    )
    test = load_tileset(
        tiles_dir=args.tiles_dir, lots_csv=args.lots, lots=splits["test"], scaler=scaler
    )
    samples = slice(0, params.sample_tiles)
    deps = [args.tiles_dir, args.lots, args.splits]
    tags = {"tuned": bool(tuned), "ddp.world_size": world.size}
    mlflow_run = tracking.stage_run("train_attgan", params=params, deps=deps, tags=tags)
    with world.main_only(mlflow_run):

        def on_checkpoint(trainer) -> None:
            if trainer.step % params.sample_every == 0 or trainer.step == params.train.steps:
                grid = sample_grid(trainer.gen, test.images[samples], test.attrs[samples])
                tracking.log_figure(grid, f"samples/step_{trainer.step:06d}.png")

        started = time.perf_counter()
        trainer = train_attgan(
            params=params.train,
            images=torch.from_numpy(train.images),
            attrs=torch.from_numpy(train.attrs),
            checkpoint_dir=args.checkpoint_dir,
            data_key=tracking.data_version(deps).get("data.version", ""),
            log=tracking.log_metrics,
            on_checkpoint=on_checkpoint,
            world=world,
        )
        wall = time.perf_counter() - started
        if not world.is_main:
            return
        total = trainer.train_seconds  # all runs behind this model; None if unknown
        metrics = {
            "train/wall_s": float("nan") if total is None else total,
            "train/wall_s_this_run": wall,
            "train/steps": trainer.step,
        }
        if world.size > 1:
            metrics["train/replica_max_abs_diff"] = trainer.replica_gap
        write_metrics(args.metrics, metrics)
        tracking.log_metrics(metrics)
        grid = sample_grid(trainer.gen, test.images[samples], test.attrs[samples])
        save_figure(grid, args.reports / "samples.png")
        tracking.log_dir(args.reports, "figures")
        config = {
            "model": params.train.model.to_dict(),
            "scaler": scaler.to_dict(),
            "img_size": params.train.model.img_size,
            "train_lots": splits["train"],
            "train": to_mapping(params.train),
            "metrics": metrics,
        }
        registry.save_model_dir(
            args.model_dir,
            kind="attgan",
            weights={"generator": trainer.gen, "discriminator": trainer.dis},
            config=config,
        )
        # Logged here, linked to this run; the `register` stage registers it.
        ref = registry.log_model(args.model_dir, name="attgan", kind="attgan")
        write_json(args.reports / "logged_model.json", ref.to_dict())


if __name__ == "__main__":
    raise SystemExit(main())
