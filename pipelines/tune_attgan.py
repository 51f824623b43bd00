"""DVC stage `tune_attgan`: multi-objective Optuna study of the AttGAN (PSNR vs concept control)
on a validation fold; writes the chosen params for `train_attgan`.

Minutes per trial on a CPU, so `tune_attgan.n_trials: 0` (the default) leaves the committed
tuned file as it is; set it to N to run (or extend) the study to N trials.
"""

import argparse
import warnings
from pathlib import Path

import optuna
import yaml

from semknobs import tracking
from semknobs.atomic import atomic_path, write_text
from semknobs.config import from_mapping, load_params, load_section, to_mapping
from semknobs.data.dataset import fit_scaler, load_tileset, read_splits
from semknobs.stage import save_figure, stage_main, write_json
from semknobs.train.attgan import TrainAttGANStageParams
from semknobs.train.tune_attgan import (
    TuneAttGANParams,
    baseline_trial,
    choose,
    objective_factory,
    study_summary,
    tuned_overrides,
)


@stage_main
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--tiles-dir", type=Path, required=True)
    parser.add_argument("--lots", type=Path, required=True)
    parser.add_argument("--splits", type=Path, required=True)
    parser.add_argument(
        "--storage",
        default="optuna/attgan.journal",
        help="journal file, or an RDB URL shared by workers",
    )
    parser.add_argument("--study-name", default="semknobs-attgan")
    parser.add_argument("--out", type=Path, required=True, help="tuned params YAML to write")
    parser.add_argument("--reports", type=Path, required=True)
    args = parser.parse_args(argv)
    space = load_section(TuneAttGANParams, "tune_attgan", args.params)
    if space.n_trials == 0:
        if not args.out.exists():
            write_text(args.out, "# tune_attgan has not run (n_trials: 0): no overrides.\n{}\n")
        print(f"tune_attgan: n_trials is 0: keeping {args.out} as it is (no tuning)")
        return
    base = from_mapping(
        TrainAttGANStageParams,
        load_params(args.params).get("train_attgan", {}),
        where=f"{args.params}: train_attgan",
    ).train

    splits = read_splits(args.splits)
    val_lots = splits["folds"][space.val_fold]
    fit_lots = [lot for lot in splits["train"] if lot not in val_lots]
    scaler = fit_scaler(args.lots, fit_lots)
    train = load_tileset(tiles_dir=args.tiles_dir, lots_csv=args.lots, lots=fit_lots, scaler=scaler)
    val = load_tileset(tiles_dir=args.tiles_dir, lots_csv=args.lots, lots=val_lots, scaler=scaler)

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    storage = _storage(args.storage)
    with tracking.stage_run(
        "tune_attgan", params=space, deps=[args.tiles_dir, args.lots, args.splits]
    ):
        study = optuna.create_study(
            study_name=args.study_name,
            storage=storage,
            load_if_exists=True,
            directions=["maximize", "maximize"],
            sampler=optuna.samplers.TPESampler(seed=space.seed),
        )
        study.set_metric_names(["val/psnr", "val/mean_control"])

        def on_trial(trial, overrides, metrics) -> None:
            import mlflow

            with mlflow.start_run(run_name=f"trial-{trial.number}", nested=True):
                mlflow.set_tags(
                    {
                        "semknobs.stage": "tune_attgan",
                        "optuna.trial": trial.number,
                        "semknobs.execution": tracking.execution_id(),
                    }
                )
                mlflow.log_params(tracking.params_for_mlflow(overrides))
                tracking.log_metrics(metrics)

        if not study.trials:  # always score train_attgan's own params first
            study.enqueue_trial(baseline_trial(base))
        remaining = space.n_trials - len([t for t in study.trials if t.state.is_finished()])
        if remaining > 0:
            objective = objective_factory(
                space=space,
                base=base,
                train=(train.images, train.attrs),
                val=(val.images, val.attrs),
                on_trial=on_trial,
            )
            study.optimize(objective, n_trials=remaining)
        chosen = choose(study, space.psnr_floor)
        overrides = tuned_overrides(chosen)
        summary = study_summary(study, chosen)
        header = (
            f"# Written by the tune_attgan stage (study {args.study_name!r}, trial {chosen.number}:"
            f" val/psnr {chosen.values[0]:.2f} dB, val/mean_control {chosen.values[1]:.3f}).\n"
            "# train_attgan lays these over params.yaml's train_attgan.train; "
            "do not edit by hand.\n"
        )
        with atomic_path(args.out) as tmp:
            tmp.write_text(header + yaml.safe_dump(overrides, sort_keys=False))
        write_json(
            args.reports / "study.json",
            summary | {"overrides": overrides, "space": to_mapping(space)},
        )
        from optuna.visualization.matplotlib import plot_pareto_front

        axes = plot_pareto_front(study, target_names=["val/psnr (dB)", "val/mean_control"])
        tracking.log_dir(
            save_figure(axes.figure, args.reports / "pareto_front.png").parent, "figures"
        )
        tracking.log_metrics(
            {"tune/chosen_psnr": chosen.values[0], "tune/chosen_control": chosen.values[1]}
        )
        print(f"tune_attgan: chose trial {chosen.number}; wrote {args.out}")


def _storage(spec: str) -> optuna.storages.BaseStorage | str:
    if "://" in spec:
        return spec  # an RDB URL: workers on many machines share it
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    Path(spec).parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(spec))


if __name__ == "__main__":
    raise SystemExit(main())
