"""DVC stage `train_regressor`: train the peak-stress regressor with the tuned params on all
training lots, evaluate it and two baselines (training mean; random forest on the attribute
meter's readings) on the held-out test lots, log it to MLflow (the `register` stage registers it
as `semknobs-regressor`).

Lot-level metrics use the mean of a lot's tile predictions. Rerunning after an interruption
resumes from the last epoch's checkpoint (--checkpoint-dir is a persistent DVC output).

Data-parallel: ``torchrun --standalone --nproc-per-node N pipelines/train_regressor.py ...``
trains with DDP (see :mod:`semknobs.train.distributed`); rank 0 does everything else.
"""

import argparse
import time
from pathlib import Path

from semknobs import registry, tracking
from semknobs.config import deep_merge, from_mapping, load_overrides, load_params, to_mapping
from semknobs.data.dataset import fit_scaler, load_tileset, read_splits
from semknobs.evaluation.regressor import (
    lot_table,
    mean_baseline,
    pred_vs_true_figure,
    predictions_frame,
    read_measurements,
    regression_metrics,
    rf_baseline,
)
from semknobs.models.regressor import predict
from semknobs.stage import save_figure, stage_main, write_json, write_metrics
from semknobs.train import distributed
from semknobs.train.regressor import TrainRegressorStageParams, set_threads, train_regressor
from semknobs.train.tune_regressor import training_lots


@stage_main
def main(argv: list[str] | None = None) -> None:
    with distributed.session() as world:
        run(argv, world)


def run(argv: list[str] | None, world: distributed.World) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--tuned", type=Path, help="overrides from tune_regressor (YAML)")
    parser.add_argument("--tiles-dir", type=Path, required=True)
    parser.add_argument("--lots", type=Path, required=True)
    parser.add_argument("--splits", type=Path, required=True)
    parser.add_argument("--measurements", type=Path, required=True)
    parser.add_argument("--checkpoint-dir", type=Path, required=True)
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--reports", type=Path, required=True)
    args = parser.parse_args(argv)
    section = load_params(args.params).get("train_regressor", {})
    tuned = load_overrides(args.tuned)
    if tuned:
        section = deep_merge(section, {"train": tuned})
    where = f"{args.params}: train_regressor" + (f" (+ {args.tuned})" if tuned else "")
    params = from_mapping(TrainRegressorStageParams, section, where=where)
    set_threads(params.train.threads)  # this process: training and evaluation

    splits = read_splits(args.splits)
    train_lots = training_lots(splits, str(args.splits))
    scaler = fit_scaler(args.lots, train_lots)
    train = load_tileset(
        tiles_dir=args.tiles_dir, lots_csv=args.lots, lots=train_lots, scaler=scaler
    )
    test = load_tileset(
        tiles_dir=args.tiles_dir, lots_csv=args.lots, lots=splits["test"], scaler=scaler
    )
    deps = [args.tiles_dir, args.lots, args.splits, args.measurements]
    tags = {"tuned": bool(tuned), "ddp.world_size": world.size}
    mlflow_run = tracking.stage_run("train_regressor", params=params, deps=deps, tags=tags)
    with world.main_only(mlflow_run):
        started = time.perf_counter()
        trainer = train_regressor(
            params=params.train,
            images=train.images,
            stress=train.stress,
            checkpoint_dir=args.checkpoint_dir,
            data_key=tracking.data_version(deps[:3]).get("data.version", ""),
            log=tracking.log_metrics,
            world=world,
        )
        wall = time.perf_counter() - started
        if not world.is_main:
            return
        model = trainer.model
        test_lots = test.manifest["lot"].to_numpy()
        pred = predict(model, test.images, params.train.eval_batch_size)

        started_rf = time.perf_counter()
        rf = rf_baseline(
            read_measurements(args.measurements, train.manifest),
            train.stress,
            read_measurements(args.measurements, test.manifest),
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
        if world.size > 1:
            metrics["train/replica_max_abs_diff"] = trainer.replica_gap
        write_metrics(args.metrics, metrics)
        tracking.log_metrics(metrics)

        report = predictions_frame(
            test.manifest, test.stress, pred=pred, pred_rf=rf, pred_mean=const
        )
        args.reports.mkdir(parents=True, exist_ok=True)
        report.to_csv(args.reports / "test_predictions.csv", index=False, float_format="%.6f")
        tables = {
            "regressor": lot_table(test_lots, test.stress, pred),
            "random forest (meter)": lot_table(test_lots, test.stress, rf),
        }
        title = (
            f"test lots: regressor R² {metrics['test/lot_r2']:.2f}, "
            f"RF R² {metrics['baseline_rf/lot_r2']:.2f}"
        )
        save_figure(pred_vs_true_figure(tables, title), args.reports / "pred_vs_true.png")
        tracking.log_dir(args.reports, "reports")

        config = {
            "model": params.train.model.to_dict(),
            "img_size": params.train.model.img_size,
            "target": model.target_stats,
            "scaler": scaler.to_dict(),
            "train_lots": train_lots,
            "train": to_mapping(params.train),
            "metrics": metrics,
        }
        registry.save_model_dir(
            args.model_dir, kind="regressor", weights={"regressor": model}, config=config
        )
        # Logged here, linked to this run; the `register` stage registers it.
        ref = registry.log_model(args.model_dir, name="regressor", kind="regressor")
        write_json(args.reports / "logged_model.json", ref.to_dict())
        print(
            f"train_regressor: test lot R² {metrics['test/lot_r2']:.3f} "
            f"(RF {metrics['baseline_rf/lot_r2']:.3f}), lot RMSE {metrics['test/lot_rmse']:.2f} "
            f"MPa (RF {metrics['baseline_rf/lot_rmse']:.2f}, mean "
            f"{metrics['baseline_mean/lot_rmse']:.2f}); trained {wall:.0f} s"
        )


if __name__ == "__main__":
    raise SystemExit(main())
