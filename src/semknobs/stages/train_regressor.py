"""Stage ``train_regressor``: the peak-stress regressor with the tuned params on all training
lots, evaluated with two baselines (the training mean; a random forest on the attribute meter's
readings) on the held-out test lots, and logged to MLflow (``register`` registers it as
``semknobs-regressor``).

Lot-level metrics use the mean of a lot's tile predictions. Rerunning after an interruption
resumes from the last epoch's checkpoint (``checkpoint_dir`` is a persistent DVC output).
Data-parallel with ``torchrun``: rank 0 does everything but the training itself.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from semknobs import tracking
from semknobs.atomic import atomic_path
from semknobs.config import load_overrides, load_tuned_section, to_mapping
from semknobs.data.dataset import fit_scaler, load_tileset
from semknobs.data.split import read_splits
from semknobs.evaluation.regressor import (
    lot_table,
    mean_baseline,
    pred_vs_true_figure,
    predictions_frame,
    regression_metrics,
    rf_baseline,
)
from semknobs.lineage import reproducible
from semknobs.meter import read_measurements
from semknobs.model_folder import save_model_dir
from semknobs.models.regressor import TargetStats, predict
from semknobs.registry import log_model
from semknobs.serving import regressor_model
from semknobs.stage import StageContext, StageResult, save_figure, write_metrics
from semknobs.train.regressor import TrainRegressorStageParams, set_threads, train_regressor

NAME = "train_regressor"
Params = TrainRegressorStageParams
DEPS = ("tiles_dir", "lots", "splits", "measurements")
DISTRIBUTED = True


@dataclass(frozen=True)
class Paths:
    tiles_dir: Path
    lots: Path
    splits: Path
    measurements: Path
    checkpoint_dir: Path
    model_dir: Path
    metrics: Path
    reports: Path
    tuned: Path | None = field(default=None, metadata={"help": "overrides from tune_regressor"})


def load(params_file: Path, paths: Paths) -> TrainRegressorStageParams:
    return load_tuned_section(Params, NAME, params_file, paths.tuned)


def tags(params: TrainRegressorStageParams, paths: Paths, ctx: StageContext) -> dict[str, Any]:
    return {"tuned": bool(load_overrides(paths.tuned)), "ddp.world_size": ctx.world.size}


def run(
    params: TrainRegressorStageParams, paths: Paths, ctx: StageContext | None = None
) -> StageResult | None:
    ctx = ctx or StageContext()
    set_threads(params.train.threads)  # this process: training and evaluation
    splits = read_splits(paths.splits)
    train_lots = splits.training_lots(str(paths.splits))
    scaler = fit_scaler(paths.lots, train_lots)
    train = load_tileset(
        tiles_dir=paths.tiles_dir, lots_csv=paths.lots, lots=train_lots, scaler=scaler
    )
    test = load_tileset(
        tiles_dir=paths.tiles_dir, lots_csv=paths.lots, lots=splits.test, scaler=scaler
    )
    started = time.perf_counter()
    trainer = train_regressor(
        params=params.train,
        images=train.images,
        stress=train.stress,
        checkpoint_dir=paths.checkpoint_dir,
        data_key=tracking.data_version([paths.tiles_dir, paths.lots, paths.splits]).get(
            "data.version", ""
        ),
        log=ctx.log,
        world=ctx.world,
    )
    wall = time.perf_counter() - started
    if not ctx.world.is_main:
        return None
    model = trainer.model
    test_lots = test.manifest["lot"].to_numpy()
    pred = predict(model, test.images, params.train.eval_batch_size)

    started_rf = time.perf_counter()
    rf = rf_baseline(
        read_measurements(paths.measurements, train.manifest),
        train.stress,
        read_measurements(paths.measurements, test.manifest),
        params.baseline,
    )
    rf_wall = time.perf_counter() - started_rf
    const = mean_baseline(train.stress, len(test.stress))

    metrics = regression_metrics("test", test_lots, test.stress, pred)
    metrics |= regression_metrics("baseline_mean", test_lots, test.stress, const)
    metrics |= regression_metrics("baseline_rf", test_lots, test.stress, rf)
    total = trainer.train_seconds
    metrics |= {
        # all training seconds behind this model (resumed runs included); null if unknown
        "train/wall_s": float("nan") if total is None else total,
        "train/wall_s_this_run": wall,
        "train/epochs": trainer.epoch,
        "baseline_rf/wall_s": rf_wall,
        "test/n_lots": len(set(test_lots)),
    }
    if ctx.world.size > 1:
        metrics["train/replica_max_abs_diff"] = trainer.replica_gap
    write_metrics(paths.metrics, metrics)

    reports = Path(paths.reports)
    report = predictions_frame(test.manifest, test.stress, pred=pred, pred_rf=rf, pred_mean=const)
    with atomic_path(reports / "test_predictions.csv") as tmp:
        report.to_csv(tmp, index=False, float_format="%.6f")
    tables = {
        "regressor": lot_table(test_lots, test.stress, pred),
        "random forest (meter)": lot_table(test_lots, test.stress, rf),
    }
    title = (
        f"test lots: regressor R² {metrics['test/lot_r2']:.2f}, "
        f"RF R² {metrics['baseline_rf/lot_r2']:.2f}"
    )
    save_figure(pred_vs_true_figure(tables, title), reports / "pred_vs_true.png")

    config = regressor_model.RegressorFolder(
        model=params.train.model,
        target=TargetStats(**model.target_stats),
        img_size=params.train.model.img_size,
        scaler=scaler.to_dict(),
        train_lots=train_lots,
        train=to_mapping(params.train),
        metrics=reproducible(metrics),  # timings: MLflow only
    )
    save_model_dir(
        paths.model_dir,
        kind=regressor_model.KIND,
        weights={"regressor": model},
        config=to_mapping(config),
    )
    if ctx.run_id is not None:  # logged here, linked to this run; `register` finds it by the
        # folder's digest (registry.find_logged): no MLflow ids in a DVC out
        log_model(paths.model_dir, name="regressor", spec=regressor_model.SPEC)
    summary = [
        f"test lot R² {metrics['test/lot_r2']:.3f} (RF {metrics['baseline_rf/lot_r2']:.3f}), "
        f"lot RMSE {metrics['test/lot_rmse']:.2f} MPa (RF {metrics['baseline_rf/lot_rmse']:.2f}, "
        f"mean {metrics['baseline_mean/lot_rmse']:.2f}); trained {wall:.0f} s"
    ]
    return StageResult(metrics, {"reports": reports}, summary)
