"""Stage ``train_attgan``: the AttGAN on the training lots, with checkpoints and exact resume,
logged to MLflow (``evaluate_attgan`` measures it on the held-out lots; ``register`` registers
it as ``semknobs-attgan``).

The AttGAN never sees a test lot's tiles for training (the sample grids it logs while training
are pictures of test tiles, for people). Rerunning after an interruption resumes from the last
checkpoint (``checkpoint_dir`` is a persistent DVC output). Data-parallel with ``torchrun``
(:mod:`semknobs.train.distributed`): rank 0 does everything but the training itself.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from semknobs import tracking
from semknobs.config import load_overrides, load_section, load_tuned_section, to_mapping
from semknobs.data.dataset import AttributeScaler, fit_scaler, load_tileset
from semknobs.data.split import read_splits
from semknobs.errors import ParamsError
from semknobs.evaluation.samples import sample_grid
from semknobs.lineage import reproducible
from semknobs.meter import MeasureParams, readings_and_counts
from semknobs.model_folder import save_model_dir
from semknobs.models.regressor import PeakStressRegressor
from semknobs.registry import log_model
from semknobs.serving import attgan_model, regressor_model
from semknobs.stage import StageContext, StageResult, save_figure, write_metrics
from semknobs.train.attgan import train_attgan
from semknobs.train.attgan_params import AttGANTrainParams, TrainAttGANStageParams
from semknobs.train.concept import MIN_COUNT_LOTS
from semknobs.train.texture import MIN_TEXTURE_LOTS

NAME = "train_attgan"
Params = TrainAttGANStageParams
DEPS = ("tiles_dir", "lots", "splits")
DISTRIBUTED = True


@dataclass(frozen=True)
class Paths:
    tiles_dir: Path
    lots: Path
    splits: Path
    checkpoint_dir: Path
    model_dir: Path
    metrics: Path
    reports: Path
    tuned: Path | None = field(default=None, metadata={"help": "overrides from tune_attgan"})
    measurements: Path | None = field(
        default=None, metadata={"help": "the measure stage's readings (for the concept loss)"}
    )
    regressor_dir: Path | None = field(
        default=None,
        metadata={"help": "the trained regressor (for the reconstruction's feature loss)"},
    )


def load(params_file: Path, paths: Paths) -> TrainAttGANStageParams:
    """The section with the tuned overrides (``paths.tuned``) laid over its ``train`` part, and
    the measure stage's meter (the concept network learns from its readings)."""
    params = load_tuned_section(Params, NAME, params_file, paths.tuned)
    return replace(params, meter=load_section(MeasureParams, "measure", params_file).meter)


def tags(params: TrainAttGANStageParams, paths: Paths, ctx: StageContext) -> dict[str, Any]:
    return {"tuned": bool(load_overrides(paths.tuned)), "ddp.world_size": ctx.world.size}


def _regressor(params: TrainAttGANStageParams, paths: Paths) -> PeakStressRegressor | None:
    """The trained regressor of the feature loss, checked against the AttGAN's tiles."""
    if params.train.lambda_regressor <= 0:
        return None
    if paths.regressor_dir is None:
        raise ParamsError(
            "train_attgan: lambda_regressor > 0 needs --regressor-dir (train_regressor's model), "
            "or set train_attgan.train.lambda_regressor: 0"
        )
    reg, _ = regressor_model.load(paths.regressor_dir)
    if reg.cfg.img_size != params.train.model.img_size:
        raise ParamsError(
            f"train_attgan: the regressor in {paths.regressor_dir} reads {reg.cfg.img_size}-px "
            f"tiles, the AttGAN makes {params.train.model.img_size}-px ones "
            "(train_attgan.train.model.img_size)"
        )
    return reg


def save_model(
    model_dir: Path,
    *,
    generator: torch.nn.Module,
    discriminator: torch.nn.Module,
    train: AttGANTrainParams,
    scaler: AttributeScaler,
    train_lots: list[str],
    metrics: dict[str, Any],
) -> None:
    """The AttGAN model folder: both networks and the config ``evaluate_attgan``, ``explain``,
    ``register`` and serving read (also used for runs trained elsewhere, e.g. on a GPU)."""
    config = attgan_model.AttGANFolder(
        model=train.model,
        scaler=scaler.to_dict(),
        img_size=train.model.img_size,
        train_lots=train_lots,
        train=to_mapping(train),
        metrics=metrics,
    )
    save_model_dir(
        model_dir,
        kind=attgan_model.KIND,
        weights={"generator": generator, "discriminator": discriminator},
        config=to_mapping(config),
    )


def run(
    params: TrainAttGANStageParams, paths: Paths, ctx: StageContext | None = None
) -> StageResult | None:
    ctx = ctx or StageContext()
    splits = read_splits(paths.splits)
    train_lots = splits.training_lots(str(paths.splits))
    scaler = fit_scaler(paths.lots, train_lots)
    train = load_tileset(
        tiles_dir=paths.tiles_dir, lots_csv=paths.lots, lots=train_lots, scaler=scaler
    )
    test = load_tileset(
        tiles_dir=paths.tiles_dir, lots_csv=paths.lots, lots=splits.test, scaler=scaler
    )
    samples = slice(0, params.sample_tiles)

    def on_checkpoint(trainer) -> None:
        if trainer.step % params.sample_every == 0 or trainer.step == params.train.steps:
            grid = sample_grid(trainer.generator, test.images[samples], test.attrs[samples])
            ctx.log_figure(grid, f"samples/step_{trainer.step:06d}.png")

    if params.train.lambda_texture > 0 and len(train_lots) < MIN_TEXTURE_LOTS:
        raise ParamsError(
            f"train_attgan: lambda_texture > 0 fits how texture changes across the training lots "
            f"and needs at least {MIN_TEXTURE_LOTS} of them ({len(train_lots)} in "
            f"{paths.splits}); set train_attgan.train.lambda_texture: 0"
        )
    if params.train.lambda_count > 0 and len(train_lots) < MIN_COUNT_LOTS:
        raise ParamsError(
            f"train_attgan: lambda_count > 0 fits how the particle count changes across the "
            f"training lots and needs at least {MIN_COUNT_LOTS} of them ({len(train_lots)} in "
            f"{paths.splits}); set train_attgan.train.lambda_count: 0"
        )
    readings = counts = None
    if params.train.lambda_concept > 0:
        if paths.measurements is None:
            raise ParamsError("train_attgan: lambda_concept > 0 needs --measurements (measure)")
        readings, counts = readings_and_counts(
            paths.measurements, train.manifest, count=params.train.lambda_count > 0
        )
    regressor = _regressor(params, paths)
    started = time.perf_counter()
    deps = [paths.tiles_dir, paths.lots, paths.splits]
    if regressor is not None:  # a checkpoint resumes only against the regressor it trained with
        deps.append(paths.regressor_dir)
    trainer = train_attgan(
        params=params.train,
        images=torch.from_numpy(train.images),
        attrs=torch.from_numpy(train.attrs),
        checkpoint_dir=paths.checkpoint_dir,
        data_key=tracking.data_version(deps).get("data.version", ""),
        log=ctx.log,
        on_checkpoint=on_checkpoint,
        world=ctx.world,
        readings=readings,
        lots=train.manifest["lot"].to_numpy(),
        meter=params.meter,
        regressor=regressor,
        counts=counts,
    )
    wall = time.perf_counter() - started
    if not ctx.world.is_main:
        return None
    total = trainer.train_seconds  # all runs behind this model; None if unknown
    metrics = {
        "train/wall_s": float("nan") if total is None else total,
        "train/wall_s_this_run": wall,
        "train/steps": trainer.step,
    }
    if ctx.world.size > 1:
        metrics["train/replica_max_abs_diff"] = trainer.replica_gap
    write_metrics(paths.metrics, metrics)
    grid = sample_grid(trainer.generator, test.images[samples], test.attrs[samples])
    save_figure(grid, paths.reports / "samples.png")
    save_model(
        paths.model_dir,
        generator=trainer.generator,
        discriminator=trainer.dis,
        train=params.train,
        scaler=scaler,
        train_lots=train_lots,
        metrics=reproducible(metrics),  # timings: MLflow only
    )
    if ctx.run_id is not None:  # logged here, linked to this run; `register` finds it by the
        # folder's digest (registry.find_logged): no MLflow ids in a DVC out
        log_model(paths.model_dir, name="attgan", spec=attgan_model.SPEC)
    return StageResult(metrics, {"figures": paths.reports})
