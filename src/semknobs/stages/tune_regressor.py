"""Stage ``tune_regressor``: an Optuna study of the peak-stress regressor, scored by lot-level
cross-validation over the CV folds of splits.json (the test lots are never loaded); writes the
best params for ``train_regressor`` (``out``, never edited by hand). See
:mod:`semknobs.train.tune_regressor`.

Workers: ``--n-workers N`` local processes (default: the section's ``n_workers``), batch-
synchronous so the study is reproducible. To spread one study over several machines, give every
machine the same ``--storage`` RDB URL and ``--study-name``: the machine that runs the stage
coordinates (creates the MLflow experiment, its run and the study, writes the result); the
others run ``--join`` (trials only, logged under ``--parent-run-id``).
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from semknobs import tracking
from semknobs.config import from_mapping, load_params, load_section, to_mapping
from semknobs.errors import ParamsError
from semknobs.stage import StageContext, StageResult, save_figure, write_json
from semknobs.train import tuning
from semknobs.train.regressor import RegressorTrainParams, TrainRegressorStageParams
from semknobs.train.tune_regressor import (
    METRIC,
    TuneRegressorParams,
    WorkerJob,
    best_trial,
    create_study,
    overrides_from_params,
    run_study,
    run_worker,
    run_workers,
    study_figures,
    study_name,
    study_summary,
)

NAME = "tune_regressor"
DEPS = ("tiles_dir", "lots", "splits")


@dataclass(frozen=True)
class Params:
    tune: TuneRegressorParams
    base: RegressorTrainParams  # train_regressor.train: what the trials vary


@dataclass(frozen=True)
class Paths:
    tiles_dir: Path
    lots: Path
    splits: Path
    out: Path | None = field(default=None, metadata={"help": "tuned params YAML to write"})
    reports: Path | None = None
    storage: str = field(
        default="optuna/regressor.journal",
        metadata={"help": "journal file, or an RDB URL (postgresql://...) shared by machines"},
    )
    study_name: str | None = field(
        default=None, metadata={"help": "default: semknobs-regressor-<hash of params and data>"}
    )
    n_workers: int | None = field(default=None, metadata={"help": "local worker processes"})
    join: bool = field(default=False, metadata={"help": "only run trials of an existing study"})
    parent_run_id: str | None = field(
        default=None, metadata={"help": "with --join: the coordinator's MLflow run id"}
    )


def load(params_file: Path, paths: Paths) -> Params:
    section = load_params(params_file).get("train_regressor", {})
    base = from_mapping(TrainRegressorStageParams, section, where=f"{params_file}: train_regressor")
    return Params(load_section(TuneRegressorParams, NAME, params_file), base.train)


def logged_params(params: Params) -> dict[str, Any]:
    return {
        "tune_regressor": to_mapping(params.tune),
        "train_regressor.train": to_mapping(params.base),
    }


def untracked(paths: Paths) -> bool:
    return paths.join


def tags(params: Params, paths: Paths, ctx: StageContext) -> dict[str, Any]:
    return {
        "optuna.study": _study(params, paths),
        "optuna.storage": tuning.shown_storage(paths.storage),
    }


def _study(params: Params, paths: Paths) -> str:
    if paths.study_name is not None:
        return paths.study_name
    data_key = tracking.data_version([paths.tiles_dir, paths.lots, paths.splits])
    return study_name(params.tune, params.base, data_key.get("data.version", ""))


def run(params: Params, paths: Paths, ctx: StageContext | None = None) -> StageResult:
    ctx = ctx or StageContext()
    name = _study(params, paths)
    n_workers = paths.n_workers or params.tune.n_workers
    job = WorkerJob(
        storage=paths.storage,
        study_name=name,
        tune=params.tune,
        base=params.base,
        tiles_dir=paths.tiles_dir,
        lots_csv=paths.lots,
        splits=paths.splits,
    )
    if paths.join:
        return _join(job, paths, n_workers)
    if paths.out is None or paths.reports is None:
        raise ParamsError("tune_regressor: --out and --reports are required (unless --join)")
    study = create_study(paths.storage, name, params.tune)
    job = replace(
        job,
        since=dt.datetime.now(),
        tracking=tuning.TrialTracking(
            stage=NAME,
            study_name=name,
            tracking_uri=tracking.configure() if ctx.run_id else None,
            experiment_id=ctx.experiment_id,
            parent_run_id=ctx.run_id,
            execution=tracking.execution_id(),
        ),
    )
    print(
        f"tune_regressor: study {name!r} in {tuning.shown_storage(paths.storage)}, "
        f"{params.tune.n_trials} trials, {n_workers} worker(s); MLflow parent run {ctx.run_id}"
    )
    started = time.perf_counter()
    run_study(job, n_workers)  # batch-synchronous: reproducible
    wall = time.perf_counter() - started

    best = best_trial(study)
    overrides = overrides_from_params(best.params)
    about = (
        f"study {name!r}, trial {best.number}: {METRIC} {best.value:.3f} MPa, mean over CV folds"
    )
    tuning.write_tuned(paths.out, overrides, written_by=NAME, about=about)
    reports = Path(paths.reports)
    summary = study_summary(study, best)
    write_json(reports / "study.json", summary | {"overrides": overrides})
    for figure_name, figure in study_figures(study).items():
        save_figure(figure, reports / figure_name)
    states = summary["states"]
    metrics = {
        f"tune/best_{METRIC.split('/')[1]}": best.value,
        "tune/best_trial": best.number,
        "tune/n_trials": summary["n_trials"],
        "tune/n_complete": states.get("COMPLETE", 0),
        "tune/n_pruned": states.get("PRUNED", 0),
        "tune/wall_s": wall,
    }
    line = (
        f"best trial {best.number} ({METRIC} {best.value:.3f}); {states}; {wall:.0f} s; "
        f"wrote {paths.out}"
    )
    return StageResult(metrics, {"tune_regressor": reports}, [line])


def _join(job: WorkerJob, paths: Paths, n_workers: int) -> StageResult:
    """Worker-only mode for other machines: the study must exist (the coordinator made it)."""
    if paths.parent_run_id:
        from mlflow import MlflowClient

        uri = tracking.configure()
        experiment = MlflowClient().get_run(paths.parent_run_id).info.experiment_id
        job = replace(
            job,
            tracking=tuning.TrialTracking(
                stage=NAME,
                study_name=job.study_name,
                tracking_uri=uri,
                experiment_id=experiment,
                parent_run_id=paths.parent_run_id,
                execution=tracking.execution_id(),
            ),
        )
    if n_workers == 1:
        return StageResult(summary=[f"--join: ran {run_worker(job)} trial(s)"])
    run_workers(job, n_workers)
    return StageResult()
