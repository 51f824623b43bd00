"""DVC stage `tune_regressor`: Optuna study of the peak-stress regressor, scored by lot-level
cross-validation over the CV folds of splits.json (test lots never loaded); writes the best
params for `train_regressor` (--out, never edited by hand).

Workers: --n-workers N local processes (default: the params section's n_workers). To spread one
study over several machines, give every machine the same --storage RDB URL and --study-name: the
machine that runs the stage coordinates (creates the MLflow experiment, its run and the study,
writes the result); the others run `--join` (trials only, logged under --parent-run-id).
"""

import argparse
import datetime as dt
import time
from pathlib import Path
from typing import Any

import yaml

from semknobs import tracking
from semknobs.atomic import atomic_path
from semknobs.config import from_mapping, load_params, load_section, to_mapping
from semknobs.stage import save_figure, stage_main, write_json
from semknobs.train.regressor import TrainRegressorStageParams
from semknobs.train.tune_regressor import (
    METRIC,
    TuneRegressorParams,
    WorkerJob,
    best_trial,
    create_study,
    make_storage,
    overrides_from_params,
    run_worker,
    run_workers,
    study_figures,
    study_name,
    study_summary,
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
        default="optuna/regressor.journal",
        help="journal file (default), or an RDB URL (postgresql://..., sqlite:///...) shared by "
        "workers on several machines",
    )
    parser.add_argument(
        "--study-name",
        help="default: semknobs-regressor-<hash of the params and data> (printed at the start)",
    )
    parser.add_argument("--n-workers", type=int, help="local worker processes")
    parser.add_argument("--out", type=Path, help="tuned params YAML to write")
    parser.add_argument("--reports", type=Path)
    parser.add_argument("--join", action="store_true", help="only run trials of a study")
    parser.add_argument("--parent-run-id", help="with --join: the coordinator's MLflow run id")
    args = parser.parse_args(argv)
    tune = load_section(TuneRegressorParams, "tune_regressor", args.params)
    base = from_mapping(
        TrainRegressorStageParams,
        load_params(args.params).get("train_regressor", {}),
        where=f"{args.params}: train_regressor",
    ).train
    n_workers = args.n_workers or tune.n_workers
    deps = [args.tiles_dir, args.lots, args.splits]
    if args.study_name is None:
        data_key = tracking.data_version(deps).get("data.version", "")
        args.study_name = study_name(tune, base, data_key)
    if args.join:
        _join(args, tune, base, n_workers)
        return
    if args.out is None or args.reports is None:
        parser.error("--out and --reports are required (unless --join)")

    with tracking.stage_run(
        "tune_regressor",
        params={"tune_regressor": to_mapping(tune), "train_regressor.train": to_mapping(base)},
        deps=deps,
        tags={"optuna.study": args.study_name, "optuna.storage": _shown(args.storage)},
    ) as run:
        study = create_study(make_storage(args.storage), args.study_name, tune)
        job = _job(
            args,
            tune,
            base,
            tracking_uri=tracking.configure(),
            experiment_id=run.info.experiment_id,
            parent_run_id=run.info.run_id,
            execution=tracking.execution_id(),
            since=dt.datetime.now(),
        )
        print(
            f"tune_regressor: study {args.study_name!r} in {_shown(args.storage)}, "
            f"{tune.n_trials} trials, {n_workers} worker(s); MLflow parent run {run.info.run_id}"
        )
        started = time.perf_counter()
        run_workers(job, n_workers)
        wall = time.perf_counter() - started

        best = best_trial(study)
        overrides = overrides_from_params(best.params)
        header = (
            f"# Written by the tune_regressor stage (study {args.study_name!r}, trial "
            f"{best.number}: {METRIC} {best.value:.3f} MPa, mean over CV folds).\n"
            "# train_regressor lays these over params.yaml's train_regressor.train; "
            "do not edit by hand.\n"
        )
        with atomic_path(args.out) as tmp:
            tmp.write_text(header + yaml.safe_dump(overrides, sort_keys=False))
        summary = study_summary(study, best)
        write_json(args.reports / "study.json", summary | {"overrides": overrides})
        for name, figure in study_figures(study).items():
            save_figure(figure, args.reports / name)
        tracking.log_dir(args.reports, "tune_regressor")
        states = summary["states"]
        tracking.log_metrics(
            {
                f"tune/best_{METRIC.split('/')[1]}": best.value,
                "tune/best_trial": best.number,
                "tune/n_trials": summary["n_trials"],
                "tune/n_complete": states.get("COMPLETE", 0),
                "tune/n_pruned": states.get("PRUNED", 0),
                "tune/wall_s": wall,
            }
        )
        print(
            f"tune_regressor: best trial {best.number} ({METRIC} {best.value:.3f}); "
            f"{states}; {wall:.0f} s; wrote {args.out}"
        )


def _join(args: argparse.Namespace, tune, base, n_workers: int) -> None:
    """Worker-only mode for other machines: the study must exist (the coordinator made it)."""
    tracking_uri = experiment_id = None
    if args.parent_run_id:
        from mlflow import MlflowClient

        tracking_uri = tracking.configure()
        experiment_id = MlflowClient().get_run(args.parent_run_id).info.experiment_id
    job = _job(
        args,
        tune,
        base,
        tracking_uri=tracking_uri,
        experiment_id=experiment_id,
        parent_run_id=args.parent_run_id,
        execution=tracking.execution_id(),
    )
    if n_workers == 1:
        print(f"tune_regressor --join: ran {run_worker(job)} trial(s)")
    else:
        run_workers(job, n_workers)


def _job(args: argparse.Namespace, tune, base, **run: Any) -> WorkerJob:
    """The worker job for this study and data; ``run`` says where its trials are tracked."""
    return WorkerJob(
        storage=args.storage,
        study_name=args.study_name,
        tune=tune,
        base=base,
        tiles_dir=args.tiles_dir,
        lots_csv=args.lots,
        splits=args.splits,
        **run,
    )


def _shown(storage: str) -> str:
    """The storage without a password (RDB URLs may carry one)."""
    if "://" in storage and "@" in storage:
        scheme, rest = storage.split("://", 1)
        return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
    return storage


if __name__ == "__main__":
    raise SystemExit(main())
