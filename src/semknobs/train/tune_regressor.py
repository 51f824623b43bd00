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

Parallelism and storage: a study lives in an Optuna storage -- by default a journal file
(``JournalStorage(JournalFileBackend(path))``, safe for several local processes and NFS), or an
RDB URL (PostgreSQL, MySQL, sqlite) through which workers on several machines share one study.
``n_workers`` local worker processes (spawned) each run trials until the study holds ``n_trials``
finished (complete or pruned) trials, counting those running in this execution, so the study ends
with ``n_trials`` plus at most a few racing trials. Each worker's TPE sampler is seeded with
``seed + worker index``; with one worker the whole study is reproducible, with several the
trial-to-worker assignment depends on timing.

Study name: by default a hash of the search space, the base train params and the data version
(:func:`study_name`), so rerunning an interrupted tuning continues its study and a changed space
starts a fresh one instead of mixing trials.

MLflow: every trial is a run *nested* under the stage's run (``parent_run_id`` passed to the
workers), created in the stage's experiment by id. The coordinator creates the experiment, the
parent run and the study *before* any worker starts: workers that raced to create them would put
runs in MLflow's Default experiment or start duplicate studies.
"""

from __future__ import annotations

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

import numpy as np
import optuna
import torch
from tqdm import tqdm

from semknobs.config import deep_merge, from_mapping, to_mapping
from semknobs.data.dataset import fit_scaler, load_tileset, read_splits
from semknobs.errors import DataError, SemknobsError
from semknobs.evaluation.regressor import lot_rmse
from semknobs.models.regressor import predict
from semknobs.train.regressor import (
    RegressorTrainParams,
    make_trainer,
    set_threads,
    torch_threads,
)

METRIC = "val/lot_rmse"
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


# --------------------------------------------------------------------------------------------
# params
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SearchSpace:
    lr: tuple[float, float] = (3e-4, 1e-2)  # log-uniform
    weight_decay: tuple[float, float] = (1e-6, 1e-2)  # log-uniform
    batch_size: tuple[int, ...] = (32, 64)
    preset: tuple[str, ...] = ("tiny", "small")
    drop_rate: tuple[float, float] = (0.0, 0.3)
    flips: tuple[bool, ...] = (True, False)
    rot90: tuple[bool, ...] = (True, False)
    intensity: tuple[float, ...] = (0.0, 0.1)

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

    n_trials: int = 8
    n_workers: int = 2  # local worker processes (each with train.threads torch threads)
    seed: int = 0
    n_startup_trials: int = 4  # TPE's random trials before it models the space
    epochs: int | None = None  # per trial; null: train_regressor.train.epochs (same schedule)
    pruner: PrunerParams = field(default_factory=PrunerParams)
    space: SearchSpace = field(default_factory=SearchSpace)

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
# data: lot-wise CV folds
# --------------------------------------------------------------------------------------------


def cv_folds(splits: dict[str, Any], where: str = "splits") -> list[tuple[list[str], list[str]]]:
    """``[(fit lots, validation lots), ...]``, one per fold of ``splits``; checks for leaks.

    Refuses (naming the lot) a lot in two folds, a fold lot that is also a test lot, and a
    ``train`` list that is not exactly the union of the folds.
    """
    folds = [list(f) for f in splits["folds"]]
    test = set(splits["test"])
    if len(folds) < 2:
        raise DataError(f"{where}: need at least 2 CV folds, got {len(folds)}")
    seen: dict[str, int] = {}
    for k, fold in enumerate(folds):
        if not fold:
            raise DataError(f"{where}: fold {k} is empty")
        for lot in fold:
            if lot in test:
                raise DataError(f"{where}: lot {lot} is in fold {k} and in the test lots")
            if lot in seen:
                raise DataError(f"{where}: lot {lot} is in folds {seen[lot]} and {k}")
            seen[lot] = k
    if sorted(seen) != sorted(splits["train"]):
        raise DataError(f"{where}: 'train' is not the union of the folds")
    return [
        ([lot for j, f in enumerate(folds) if j != k for lot in f], list(fold))
        for k, fold in enumerate(folds)
    ]


def training_lots(splits: dict[str, Any], where: str = "splits") -> list[str]:
    """The lots the final model trains on (all folds), checked disjoint from the test lots."""
    cv_folds(splits, where)
    return sorted(splits["train"])


@dataclass
class Fold:
    fit_images: np.ndarray
    fit_stress: np.ndarray
    val_images: np.ndarray
    val_stress: np.ndarray
    val_lots: np.ndarray  # lot id per validation tile


def load_folds(tiles_dir: Path, lots_csv: Path, splits_path: Path) -> list[Fold]:
    """The tiles of the training lots, cut into the CV folds of ``splits_path``."""
    splits = read_splits(splits_path)
    folds = cv_folds(splits, str(splits_path))
    lots = training_lots(splits, str(splits_path))
    tiles = load_tileset(
        tiles_dir=tiles_dir, lots_csv=lots_csv, lots=lots, scaler=fit_scaler(lots_csv, lots)
    )
    tile_lots = tiles.manifest["lot"].to_numpy()
    out = []
    for fit, val in folds:
        f = np.isin(tile_lots, fit)
        v = np.isin(tile_lots, val)
        out.append(
            Fold(tiles.images[f], tiles.stress[f], tiles.images[v], tiles.stress[v], tile_lots[v])
        )
    return out


# --------------------------------------------------------------------------------------------
# cross-validation
# --------------------------------------------------------------------------------------------

EpochFn = Callable[[int, float, list[float]], None]


def cross_validate(
    params: RegressorTrainParams,
    folds: list[Fold],
    on_epoch: EpochFn | None = None,
    progress: str | None = None,
) -> tuple[float, list[float]]:
    """Train one model per fold in lockstep; returns (mean lot RMSE, per-fold lot RMSE).

    ``on_epoch(epoch, mean, per_fold)`` runs after every epoch (1-based) and may raise
    ``optuna.TrialPruned`` to stop early.
    """
    with torch_threads(params.threads):
        return _cross_validate(params, folds, on_epoch, progress)


def _cross_validate(
    params: RegressorTrainParams,
    folds: list[Fold],
    on_epoch: EpochFn | None,
    progress: str | None,
) -> tuple[float, list[float]]:
    trainers = [make_trainer(params, f.fit_stress) for f in folds]
    data = []
    for trainer, fold in zip(trainers, folds):
        x = torch.from_numpy(np.ascontiguousarray(fold.fit_images)).to(trainer.device)
        y = trainer.model.standardise(torch.as_tensor(fold.fit_stress)).to(trainer.device)
        data.append((x, y))
    scores: list[float] = []
    bar = tqdm(total=params.epochs, desc=progress, unit="epoch", disable=progress is None)
    for epoch in range(1, params.epochs + 1):
        scores = []
        for trainer, fold, (x, y) in zip(trainers, folds, data):
            trainer.train_epoch(x, y)
            pred = predict(trainer.model, fold.val_images, params.eval_batch_size)
            scores.append(lot_rmse(fold.val_lots, fold.val_stress, pred))
        mean = float(np.mean(scores))
        bar.update(1)
        bar.set_postfix(lot_rmse=f"{mean:.2f}")
        if not np.isfinite(mean):
            bar.close()
            raise optuna.TrialPruned(f"non-finite validation RMSE at epoch {epoch}")
        if on_epoch is not None:
            try:
                on_epoch(epoch, mean, scores)
            except optuna.TrialPruned:
                bar.close()
                raise
    bar.close()
    return float(np.mean(scores)), scores


# --------------------------------------------------------------------------------------------
# storage, study, workers
# --------------------------------------------------------------------------------------------


def make_storage(spec: str, heartbeat_s: int = 60) -> optuna.storages.BaseStorage:
    """A journal file (a path) or an RDB (a URL such as ``postgresql://...``/``sqlite:///...``).

    RDB storages get a heartbeat, so a trial whose worker died is failed instead of counting as
    running forever; journal files have no heartbeat in Optuna.
    """
    if "://" in spec:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                spec, heartbeat_interval=heartbeat_s, grace_period=3 * heartbeat_s
            )
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    Path(spec).parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(spec)))


def make_sampler(params: TuneRegressorParams, worker: int = 0) -> optuna.samplers.BaseSampler:
    return optuna.samplers.TPESampler(
        seed=params.seed + worker, n_startup_trials=params.n_startup_trials
    )


def make_pruner(params: TuneRegressorParams) -> optuna.pruners.BasePruner:
    return optuna.pruners.MedianPruner(
        n_startup_trials=params.pruner.n_startup_trials,
        n_warmup_steps=params.pruner.n_warmup_steps,
    )


def create_study(storage: optuna.storages.BaseStorage, name: str, params: TuneRegressorParams):
    """Create (or reopen) the study; done once by the coordinator before workers start."""
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        load_if_exists=True,
        direction="minimize",
        sampler=make_sampler(params),
        pruner=make_pruner(params),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([METRIC])
    return study


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
    tracking_uri: str | None = None  # None: no MLflow logging
    experiment_id: str | None = None
    parent_run_id: str | None = None
    execution: str = ""
    since: dt.datetime = field(default_factory=lambda: dt.datetime.now())
    progress: bool = True


def objective_factory(job: WorkerJob, folds: list[Fold]) -> Callable[[optuna.Trial], float]:
    """The trial function: suggest, cross-validate with per-epoch reports, log a nested run."""
    epochs = job.tune.epochs or job.base.epochs

    def objective(trial: optuna.Trial) -> float:
        overrides = suggest(trial, job.tune.space)
        params = apply(job.base, overrides, epochs)
        trial.set_user_attr("worker", job.worker)
        run = _start_trial_run(job, trial, overrides)
        started = time.perf_counter()
        state = "COMPLETE"

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
                progress=f"trial {trial.number} (worker {job.worker})" if job.progress else None,
            )
            trial.set_user_attr("per_fold", per_fold)
            return value
        except optuna.TrialPruned:
            state = "PRUNED"
            raise
        except Exception:
            state = "FAIL"
            raise
        finally:
            if run is not None:
                _end_trial_run(state, time.perf_counter() - started)

    return objective


def _start_trial_run(job: WorkerJob, trial: optuna.Trial, overrides: dict[str, Any]):
    if job.tracking_uri is None:
        return None
    import mlflow

    from semknobs import tracking

    run = mlflow.start_run(
        experiment_id=job.experiment_id,
        run_name=f"trial-{trial.number}",
        parent_run_id=job.parent_run_id,
        nested=True,  # in-process (one worker) the stage's run is active: nest under it
        tags={
            "semknobs.stage": "tune_regressor",
            "semknobs.execution": job.execution,
            "optuna.study": job.study_name,
            "optuna.trial": str(trial.number),
            "optuna.worker": str(job.worker),
        },
    )
    mlflow.log_params(tracking.params_for_mlflow(overrides))
    return run


def _end_trial_run(state: str, wall_s: float) -> None:
    import mlflow

    from semknobs import tracking

    tracking.log_metrics({"trial/wall_s": wall_s})
    mlflow.set_tag("optuna.state", state)
    mlflow.end_run("FAILED" if state == "FAIL" else "FINISHED")


def run_worker(job: WorkerJob) -> int:
    """Run trials of the (existing) study until it holds ``n_trials``; returns trials run here."""
    if job.tracking_uri is not None:
        import mlflow

        mlflow.set_tracking_uri(job.tracking_uri)
    storage = make_storage(job.storage)
    try:
        study = optuna.load_study(
            study_name=job.study_name,
            storage=storage,
            sampler=make_sampler(job.tune, job.worker),
            pruner=make_pruner(job.tune),
        )
    except KeyError:
        raise SemknobsError(
            f"no study {job.study_name!r} in {job.storage}: the coordinator (the stage without "
            "--join) creates it; start that first"
        ) from None
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
    """Run ``n_workers`` workers: in this process for one, else as spawned processes."""
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
    states: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        states[t.state.name] = states.get(t.state.name, 0) + 1
    return {
        "study": study.study_name,
        "best_trial": best.number,
        "best_value": {METRIC: best.value},
        "best_per_fold": best.user_attrs.get("per_fold"),
        "n_trials": len(study.trials),
        "states": states,
        "trials": [
            {
                "number": t.number,
                "state": t.state.name,
                "value": t.value,
                "last_epoch": t.last_step,
                "params": t.params,
                "worker": t.user_attrs.get("worker"),
            }
            for t in study.get_trials(deepcopy=False)
        ],
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
        try:
            figures["param_importances.png"] = vis.plot_param_importances(
                study, target_name=METRIC
            ).figure
        except (ValueError, RuntimeError, ZeroDivisionError) as exc:
            print(f"tune_regressor: no parameter importances ({exc})")
    return figures
