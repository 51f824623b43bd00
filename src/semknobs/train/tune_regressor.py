"""Tuning the peak-stress regressor: an Optuna study scored by lot-level cross-validation.

Objective: ``val/lot_rmse`` -- for each CV fold of ``splits.json`` a model is trained on the other
folds' lots and predicts the fold's tiles; a lot's prediction is the mean of its tiles'; the
fold's score is the RMSE over its lots, and the trial's value is the mean over folds. The test
lots are never loaded. The folds train in lockstep, one epoch each, so after every epoch the
mean-over-folds score so far is reported (``trial.report``) and a median pruner can stop a trial
that is worse than the median of earlier trials at that epoch.

Search space: learning rate, weight decay, batch size, model preset, dropout before the head and
the augmentations of :mod:`semknobs.train.regressor` (flips, 90-degree rotations, mild affine
intensity jitter -- see there why these and no others).

Parallelism: batch-synchronous, so a study is reproducible (:func:`run_study`). The coordinator
asks its seeded TPE sampler for ``n_workers`` trials at once, ``n_workers`` local processes
(spawned) evaluate them in parallel, and the coordinator tells the results in trial order before
it asks the next batch. Every ask sees the same finished trials whatever the timing, and so does
the median pruner (it reads complete trials only, and a batch's trials are all running until the
batch ends): the same params, seed and ``n_workers`` give the same trials, values and choice on
every run. The price is idling: a worker whose trial was pruned early waits for its batch.
``n_workers`` shapes the search (a batch's trials are drawn without each other's results), so a
different ``n_workers`` gives another, equally valid, study.

Storage: a study lives in an Optuna storage -- by default a journal file
(``JournalStorage(JournalFileBackend(path))``, safe for several local processes and NFS), or an
RDB URL (PostgreSQL, MySQL, sqlite) through which workers on several machines share one study.
Workers on other machines (``--join``, :func:`run_workers`) run free: each has its own sampler
(seeded ``seed + 1 + worker index``) and takes trials until the study holds ``n_trials``
finished ones; a study they joined is not reproducible.

Study name: by default a hash of the search space, the base train params and the data version
(:func:`study_name`), so rerunning an interrupted tuning continues its study and a changed space
starts a fresh one instead of mixing trials.

MLflow: every trial is a run *nested* under the stage's run (``parent_run_id`` passed to the
workers), created in the stage's experiment by id. The coordinator creates the experiment, the
parent run and the study *before* any worker starts: workers that raced to create them would put
runs in MLflow's Default experiment or start duplicate studies.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime as dt
import hashlib
import json
import multiprocessing as mp
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna

from semknobs.config import deep_merge, from_mapping, to_mapping
from semknobs.errors import SemknobsError
from semknobs.train import tuning
from semknobs.train.regressor import (
    RegressorTrainParams,
    set_threads,
)
from semknobs.train.regressor_cv import Fold, cross_validate, load_folds

METRIC = "val/lot_rmse"
FINISHED = tuning.FINISHED


# --------------------------------------------------------------------------------------------
# params
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SearchSpace:
    """Declared in ``params.yaml`` only (``tune_regressor.space``): no defaults here."""

    lr: tuple[float, float]  # log-uniform
    weight_decay: tuple[float, float]  # log-uniform
    batch_size: tuple[int, ...]
    preset: tuple[str, ...]
    drop_rate: tuple[float, float]
    flips: tuple[bool, ...]
    rot90: tuple[bool, ...]
    intensity: tuple[float, ...]

    def __post_init__(self) -> None:
        for name in ("lr", "weight_decay", "drop_rate"):
            lo, hi = getattr(self, name)
            if not lo <= hi:
                raise ValueError(f"space.{name}: low {lo} above high {hi}")
        if not self.lr[0] > 0 or not self.weight_decay[0] > 0:
            raise ValueError("space.lr and space.weight_decay are log-uniform: need low > 0")
        for name in ("batch_size", "preset", "flips", "rot90", "intensity"):
            if not getattr(self, name):
                raise ValueError(f"space.{name}: needs at least one choice")


@dataclass(frozen=True)
class PrunerParams:
    """``optuna.pruners.MedianPruner``: prune below the median of earlier trials at an epoch."""

    n_startup_trials: int = 2  # complete trials before any pruning
    # Epochs before pruning starts in a trial. Measured on the default study: after 3 of 16
    # epochs the scores still swing with the warm-up (a later best trial ranked last), by
    # half-way they rank trials roughly as their final scores do.
    n_warmup_steps: int = 8


@dataclass(frozen=True)
class TuneRegressorParams:
    """The ``tune_regressor`` params section."""

    space: SearchSpace
    n_trials: int = 8
    n_workers: int = 2  # local worker processes (each with train.threads torch threads)
    seed: int = 0
    n_startup_trials: int = 4  # TPE's random trials before it models the space
    epochs: int | None = None  # per trial; null: train_regressor.train.epochs (same schedule)
    pruner: PrunerParams = field(default_factory=PrunerParams)

    def __post_init__(self) -> None:
        if self.n_trials < 1 or self.n_workers < 1:
            raise ValueError("n_trials and n_workers must be at least 1")
        if self.epochs is not None and self.epochs < 1:
            raise ValueError(f"epochs: expected at least 1 or null, got {self.epochs}")


def study_name(tune: TuneRegressorParams, base: RegressorTrainParams, data_key: str = "") -> str:
    """``semknobs-regressor-<hash>`` of everything that makes trials comparable.

    Same space, base params and data: the same study, so an interrupted tuning continues where
    it stopped and a larger ``n_trials`` adds trials. Anything else: a fresh study, never a mix
    of trials from different search spaces or data. ``n_trials``/``n_workers`` are left out.
    """
    keep = {k: v for k, v in to_mapping(tune).items() if k not in ("n_trials", "n_workers")}
    blob = json.dumps({"tune": keep, "base": base.fingerprint(data_key)}, sort_keys=True)
    return f"semknobs-regressor-{hashlib.sha256(blob.encode()).hexdigest()[:10]}"


# --------------------------------------------------------------------------------------------
# search space -> train params
# --------------------------------------------------------------------------------------------


def suggest(trial: optuna.Trial, space: SearchSpace) -> dict[str, Any]:
    """The overrides one trial tries, shaped like ``train_regressor.train`` (and the tuned file)."""
    return {
        "lr": trial.suggest_float("lr", *space.lr, log=True),
        "weight_decay": trial.suggest_float("weight_decay", *space.weight_decay, log=True),
        "batch_size": trial.suggest_categorical("batch_size", list(space.batch_size)),
        "model": {
            "preset": trial.suggest_categorical("preset", list(space.preset)),
            "drop_rate": trial.suggest_float("drop_rate", *space.drop_rate),
        },
        "augment": {
            "flips": trial.suggest_categorical("flips", list(space.flips)),
            "rot90": trial.suggest_categorical("rot90", list(space.rot90)),
            "intensity": trial.suggest_categorical("intensity", list(space.intensity)),
        },
    }


def overrides_from_params(p: dict[str, Any]) -> dict[str, Any]:
    """The overrides of a finished trial (from ``trial.params``), as plain YAML types."""
    return {
        "lr": float(p["lr"]),
        "weight_decay": float(p["weight_decay"]),
        "batch_size": int(p["batch_size"]),
        "model": {"preset": str(p["preset"]), "drop_rate": float(p["drop_rate"])},
        "augment": {
            "flips": bool(p["flips"]),
            "rot90": bool(p["rot90"]),
            "intensity": float(p["intensity"]),
        },
    }


def apply(
    base: RegressorTrainParams, overrides: dict[str, Any], epochs: int | None = None
) -> RegressorTrainParams:
    """``base`` with ``overrides`` laid over it (strictly checked), optionally other epochs."""
    merged = deep_merge(to_mapping(base), overrides)
    if epochs is not None:
        merged["epochs"] = epochs
    return from_mapping(RegressorTrainParams, merged, where="tuned overrides")


# --------------------------------------------------------------------------------------------
# storage, study, workers
# --------------------------------------------------------------------------------------------


def make_sampler(
    params: TuneRegressorParams, worker: int | None = None
) -> optuna.samplers.BaseSampler:
    """The coordinator's TPE sampler (``seed``), or a free-running ``--join`` worker's
    (``seed + 1 + worker``: never the coordinator's stream, so it draws other trials)."""
    seed = params.seed if worker is None else params.seed + 1 + worker
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=params.n_startup_trials)


def make_pruner(params: TuneRegressorParams) -> optuna.pruners.BasePruner:
    return optuna.pruners.MedianPruner(
        n_startup_trials=params.pruner.n_startup_trials,
        n_warmup_steps=params.pruner.n_warmup_steps,
    )


def create_study(
    storage: str | optuna.storages.BaseStorage, name: str, params: TuneRegressorParams
) -> optuna.Study:
    """Create (or reopen) the study; done once by the coordinator before workers start."""
    return tuning.create_study(
        storage,
        name,
        metric_names=[METRIC],
        directions=["minimize"],
        sampler=make_sampler(params),
        pruner=make_pruner(params),
    )


def n_counted(study: optuna.Study, since: dt.datetime) -> int:
    """Finished trials plus trials running since ``since`` (this execution's workers)."""
    running = optuna.trial.TrialState.RUNNING

    def counted(t: optuna.trial.FrozenTrial) -> bool:
        if t.state in FINISHED:
            return True
        return t.state == running and (t.datetime_start is None or t.datetime_start >= since)

    return sum(counted(t) for t in study.get_trials(deepcopy=False))


@dataclass(frozen=True)
class WorkerJob:
    """Everything a worker process needs (picklable: paths, params and ids only)."""

    storage: str
    study_name: str
    tune: TuneRegressorParams
    base: RegressorTrainParams
    tiles_dir: Path
    lots_csv: Path
    splits: Path
    worker: int = 0
    tracking: tuning.TrialTracking | None = None  # None: no MLflow logging
    since: dt.datetime = field(default_factory=lambda: dt.datetime.now())
    progress: bool = True


def evaluate(
    job: WorkerJob, folds: list[Fold], trial: optuna.Trial, overrides: dict[str, Any], worker: int
) -> float:
    """One trial: cross-validate ``overrides`` with a report (and a pruning check) per epoch,
    logged as a nested MLflow run; raises ``optuna.TrialPruned`` when pruned."""
    params = apply(job.base, overrides, job.tune.epochs or job.base.epochs)
    trial.set_user_attr("worker", worker)
    started = time.perf_counter()
    tracked = job.tracking or tuning.TrialTracking("tune_regressor", job.study_name)
    with tuning.trial_run(tracked, trial, overrides, worker) as run:

        def on_epoch(epoch: int, mean: float, per_fold: list[float]) -> None:
            trial.report(mean, epoch)
            if run is not None:
                from semknobs import tracking

                tracking.log_metrics(
                    {METRIC: mean, **{f"{METRIC}_fold{k}": v for k, v in enumerate(per_fold)}},
                    step=epoch,
                )
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {epoch} ({METRIC} {mean:.3f})")

        try:
            value, per_fold = cross_validate(
                params,
                folds,
                on_epoch=on_epoch,
                progress=f"trial {trial.number} (worker {worker})" if job.progress else None,
            )
        finally:
            if run is not None:
                from semknobs import tracking

                tracking.log_metrics({"trial/wall_s": time.perf_counter() - started})
        trial.set_user_attr("per_fold", per_fold)
        return value


def objective_factory(job: WorkerJob, folds: list[Fold]) -> Callable[[optuna.Trial], float]:
    """The trial function of a free-running worker: suggest, then :func:`evaluate`."""

    def objective(trial: optuna.Trial) -> float:
        return evaluate(job, folds, trial, suggest(trial, job.tune.space), job.worker)

    return objective


# --------------------------------------------------------------------------------------------
# the coordinator: batch-synchronous, reproducible
# --------------------------------------------------------------------------------------------


def _load(job: WorkerJob, sampler: optuna.samplers.BaseSampler) -> optuna.Study:
    try:
        return optuna.load_study(
            study_name=job.study_name,
            storage=tuning.make_storage(job.storage),
            sampler=sampler,
            pruner=make_pruner(job.tune),
        )
    except KeyError:
        raise SemknobsError(
            f"no study {job.study_name!r} in {job.storage}: the coordinator (the stage without "
            "--join) creates it; start that first"
        ) from None


_STATE: dict[str, Any] = {}  # the job, folds and study of a batch worker (see _init_process)


def _init_process(job: WorkerJob) -> None:  # pragma: no cover - runs in a child process
    os.environ.setdefault("MPLBACKEND", "Agg")
    set_threads(job.base.threads)  # the whole worker process
    if job.tracking is not None and job.tracking.tracking_uri is not None:
        import mlflow

        mlflow.set_tracking_uri(job.tracking.tracking_uri)
    # a batch worker never samples (the coordinator did); its study object only prunes
    study = _load(job, optuna.samplers.RandomSampler(seed=job.tune.seed))
    _STATE.update(job=job, study=study, folds=load_folds(job.tiles_dir, job.lots_csv, job.splits))


def _evaluate_asked(asked: tuning.Asked, trial: optuna.Trial | None = None) -> float:
    """:func:`evaluate` of an asked trial: in a batch worker (``trial`` None: rebuilt from the
    storage) or in the coordinator's process (``n_workers`` 1: the asked trial itself)."""
    trial = trial or optuna.trial.Trial(_STATE["study"], asked.trial_id)
    return evaluate(_STATE["job"], _STATE["folds"], trial, asked.params, asked.slot)


def run_study(job: WorkerJob, n_workers: int) -> int:
    """The coordinator's trials, batch-synchronous (:func:`semknobs.train.tuning.run_batches`,
    see the module docstring), until the study holds ``n_trials`` finished ones; returns the
    trials run here. ``n_workers`` spawned processes load the folds once and take a batch's
    trials; with one, trials run in this process."""
    study = _load(job, make_sampler(job.tune))
    pool = None
    if n_workers > 1:
        pool = concurrent.futures.ProcessPoolExecutor(
            max_workers=n_workers,
            mp_context=mp.get_context("spawn"),  # no fork of a process holding MLflow/torch
            initializer=_init_process,
            initargs=(job,),
        )
    else:
        folds = load_folds(job.tiles_dir, job.lots_csv, job.splits)
        _STATE.update(job=job, study=study, folds=folds)
    try:
        return tuning.run_batches(
            study,
            n_trials=job.tune.n_trials,
            n_workers=n_workers,
            suggest=lambda trial: suggest(trial, job.tune.space),
            evaluate=_evaluate_asked,
            pool=pool,
        )
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        _STATE.clear()


# --------------------------------------------------------------------------------------------
# free-running workers (--join, on other machines)
# --------------------------------------------------------------------------------------------


def run_worker(job: WorkerJob) -> int:
    """Run trials of the (existing) study until it holds ``n_trials``; returns trials run here.
    Free-running (``--join``): trials are drawn as workers become free, so not reproducible."""
    if job.tracking is not None and job.tracking.tracking_uri is not None:
        import mlflow

        mlflow.set_tracking_uri(job.tracking.tracking_uri)
    study = _load(job, make_sampler(job.tune, job.worker))
    target = job.tune.n_trials
    if n_counted(study, job.since) >= target:
        return 0
    folds = load_folds(job.tiles_dir, job.lots_csv, job.splits)
    ran = 0

    def enough(study: optuna.Study, _trial: optuna.trial.FrozenTrial) -> None:
        nonlocal ran
        ran += 1
        if n_counted(study, job.since) >= target:
            study.stop()

    study.optimize(
        objective_factory(job, folds),
        n_trials=target,  # an upper bound; `enough` stops at the study-wide count
        callbacks=[enough],
        catch=(),
    )
    return ran


def _worker_main(job: WorkerJob) -> None:  # pragma: no cover - runs in a child process
    os.environ.setdefault("MPLBACKEND", "Agg")
    set_threads(job.base.threads)  # the whole worker process
    try:
        run_worker(job)
    except SemknobsError as exc:
        raise SystemExit(f"tune_regressor worker {job.worker}: error: {exc}") from None


def run_workers(job: WorkerJob, n_workers: int) -> None:
    """Run ``n_workers`` free-running workers (``--join``): in this process for one, else as
    spawned processes. The coordinator runs :func:`run_study` instead."""
    if n_workers == 1:
        run_worker(job)
        return
    ctx = mp.get_context("spawn")  # no fork of a process holding MLflow/torch threads
    procs = [
        ctx.Process(
            target=_worker_main,
            args=(dataclasses.replace(job, worker=i),),
            name=f"tune_regressor-worker-{i}",
        )
        for i in range(n_workers)
    ]
    for p in procs:
        p.start()
    try:
        for p in procs:
            p.join()
    except KeyboardInterrupt:
        for p in procs:
            p.terminate()
        raise
    failed = [f"worker {i} (exit {p.exitcode})" for i, p in enumerate(procs) if p.exitcode != 0]
    if failed:
        raise SemknobsError(f"tune_regressor: {', '.join(failed)} failed; see the output above")


# --------------------------------------------------------------------------------------------
# results
# --------------------------------------------------------------------------------------------


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial:
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        raise SemknobsError(
            f"study {study.study_name!r} has no complete trial (all pruned or failed); "
            "raise n_trials or pruner.n_startup_trials"
        )
    return min(complete, key=lambda t: t.value)


def study_summary(study: optuna.Study, best: optuna.trial.FrozenTrial) -> dict[str, Any]:
    return {
        "study": study.study_name,
        "best_trial": best.number,
        "best_value": {METRIC: best.value},
        "best_per_fold": best.user_attrs.get("per_fold"),
        "n_trials": len(study.trials),
        "states": tuning.state_counts(study),
        "trials": tuning.trial_table(study),
    }


def study_figures(study: optuna.Study) -> dict[str, Any]:
    """Matplotlib figures: optimisation history, per-epoch curves, parameter importances.

    Importances need at least two complete trials with differing params; without, that figure is
    left out (and the reason printed) rather than failing the stage.
    """
    from optuna.visualization import matplotlib as vis

    figures: dict[str, Any] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        figures["optimization_history.png"] = vis.plot_optimization_history(
            study, target_name=METRIC
        ).figure
        figures["intermediate_values.png"] = vis.plot_intermediate_values(study).figure
        # the params named in a fixed order: Optuna iterates a set of names, so equally
        # important params would swap places with the interpreter's hash seed
        names = sorted({k for t in study.get_trials(deepcopy=False) for k in t.params})
        try:
            figures["param_importances.png"] = vis.plot_param_importances(
                study, target_name=METRIC, params=names
            ).figure
        except (ValueError, RuntimeError, ZeroDivisionError) as exc:
            print(f"tune_regressor: no parameter importances ({exc})")
    return figures
