"""What both tuners share: Optuna storage, the study (created before any worker starts), one
nested MLflow run per trial, the study summary and the tuned-file writer.

Storage: a journal file by default (``JournalStorage(JournalFileBackend(path))``, safe for
several local processes and NFS), or an RDB URL (PostgreSQL, MySQL, sqlite) through which
workers on several machines share one study. The coordinator creates the MLflow experiment, its
own run and the study *before* any worker starts; workers that raced to create them would put
runs in MLflow's Default experiment or start duplicate studies.

Batch-synchronous trials (:func:`run_batches`): ask a batch from the study's seeded sampler, run
it in parallel, tell the results in trial order, repeat. Each ask and each pruning decision sees
the same finished trials whatever the timing, so the study is reproducible. (Optuna's own
``study.optimize(n_jobs=k)`` and free-running workers on one storage are not: what a trial is
asked depends on which others happened to finish first.)

Trial runs: hand-written rather than ``optuna_integration.MLflowCallback``. The callback opens a
trial's run only after the trial has finished, in the process that runs the callback; ours log
per-epoch validation curves *during* a trial from spawned worker processes, nest under the
stage's run by id, and carry the lineage tags every run of this project has (stage, execution).
So the optuna-integration dependency is dropped.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import yaml

from semknobs.atomic import atomic_path, write_text


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


def shown_storage(storage: str) -> str:
    """The storage without a password (RDB URLs may carry one)."""
    if "://" in storage and "@" in storage:
        scheme, rest = storage.split("://", 1)
        return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
    return storage


def create_study(
    storage: optuna.storages.BaseStorage | str,
    name: str,
    *,
    metric_names: list[str],
    directions: list[str],
    sampler: optuna.samplers.BaseSampler,
    pruner: optuna.pruners.BasePruner | None = None,
) -> optuna.Study:
    """Create (or reopen) the study; done once by the coordinator before workers start."""
    if isinstance(storage, str):
        storage = make_storage(storage)
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        load_if_exists=True,
        directions=directions,
        sampler=sampler,
        pruner=pruner,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(metric_names)
    return study


FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


def n_finished(study: optuna.Study) -> int:
    """Complete or pruned trials (a trial left running by a killed execution does not count)."""
    return len(study.get_trials(deepcopy=False, states=FINISHED))


@dataclass(frozen=True)
class Asked:
    """One asked trial as a worker gets it (picklable): its storage id, the params the sampler
    chose (already in the storage) and its place in the batch."""

    trial_id: int
    params: dict[str, Any]
    slot: int


Value = float | Sequence[float]


def run_batches(
    study: optuna.Study,
    *,
    n_trials: int,
    n_workers: int,
    suggest: Callable[[optuna.Trial], dict[str, Any]],
    evaluate: Callable[..., Value],
    pool: concurrent.futures.Executor | None = None,
) -> int:
    """Run trials until ``study`` holds ``n_trials`` finished ones, ``n_workers`` at a time,
    batch-synchronously (see the module docstring); returns the trials run.

    ``suggest(trial)`` draws a trial's params (in this process, from the study's sampler);
    ``evaluate(asked)`` scores them in ``pool`` (a module-level function: it is pickled), or
    ``evaluate(asked, trial)`` here when ``pool`` is None; it raises ``optuna.TrialPruned`` to be
    pruned. Enqueued trials come first, with their fixed params. A trial that raises anything
    else is told FAIL, the rest of its batch as it ended, then the error propagates; a worker
    process that dies is a :class:`SemknobsError`.
    """
    from semknobs.errors import SemknobsError

    state = optuna.trial.TrialState
    ran = 0
    while (todo := n_trials - n_finished(study)) > 0:
        batch = [study.ask() for _ in range(min(n_workers, todo))]
        # Trial has no public id; the storage's id is what a worker process looks it up by
        asked = [Asked(t._trial_id, suggest(t), k) for k, t in enumerate(batch)]
        outcomes: list[Any] = []
        if pool is None:
            for a, trial in zip(asked, batch, strict=True):
                try:
                    outcomes.append(evaluate(a, trial))
                except Exception as exc:
                    outcomes.append(exc)
        else:
            futures = [pool.submit(evaluate, a) for a in asked]
            concurrent.futures.wait(futures)
            outcomes = [f.exception() or f.result() for f in futures]
        error: BaseException | None = None
        for trial, outcome in zip(batch, outcomes, strict=True):  # told in trial order
            if isinstance(outcome, optuna.TrialPruned):
                study.tell(trial, state=state.PRUNED)
            elif isinstance(outcome, BaseException):
                study.tell(trial, state=state.FAIL)
                error = error or outcome
            else:
                study.tell(trial, outcome)
        ran += len(batch)
        if isinstance(error, concurrent.futures.process.BrokenProcessPool):
            raise SemknobsError(
                "a tuning worker process died (killed, or out of memory?); see the output above"
            ) from error
        if error is not None:
            raise error
    return ran


@dataclass(frozen=True)
class TrialTracking:
    """Where a worker logs its trials (picklable); ``tracking_uri`` None: no MLflow logging."""

    stage: str
    study_name: str
    tracking_uri: str | None = None
    experiment_id: str | None = None
    parent_run_id: str | None = None
    execution: str = ""


@contextlib.contextmanager
def trial_run(
    tracking: TrialTracking, trial: optuna.Trial, params: Mapping[str, Any], worker: int = 0
) -> Iterator[Any]:
    """A nested MLflow run for one trial (None when not tracked), ended with the trial's
    outcome: ``FINISHED`` for complete or pruned trials (tag ``optuna.state``), else ``FAILED``.
    """
    if tracking.tracking_uri is None:
        yield None
        return
    import mlflow

    from semknobs import tracking as stage_tracking

    mlflow.set_tracking_uri(tracking.tracking_uri)
    run = mlflow.start_run(
        experiment_id=tracking.experiment_id,
        run_name=f"trial-{trial.number}",
        parent_run_id=tracking.parent_run_id,
        nested=True,  # in-process, the stage's run is active: nest under it
        tags={
            "semknobs.stage": tracking.stage,
            "semknobs.execution": tracking.execution,
            "optuna.study": tracking.study_name,
            "optuna.trial": str(trial.number),
            "optuna.worker": str(worker),
        },
    )
    mlflow.log_params(stage_tracking.params_for_mlflow(dict(params)))
    state = "COMPLETE"
    try:
        yield run
    except optuna.TrialPruned:
        state = "PRUNED"
        raise
    except BaseException:
        state = "FAIL"
        raise
    finally:
        mlflow.set_tag("optuna.state", state)
        mlflow.end_run("FAILED" if state == "FAIL" else "FINISHED")


def state_counts(study: optuna.Study) -> dict[str, int]:
    states: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        states[t.state.name] = states.get(t.state.name, 0) + 1
    return states


def trial_table(study: optuna.Study) -> list[dict[str, Any]]:
    """Every trial: number, state, value(s), last reported step, params, worker."""
    return [
        {
            "number": t.number,
            "state": t.state.name,
            "value": t.value if len(study.directions) == 1 else t.values,
            "last_epoch": t.last_step,
            "params": t.params,
            "worker": t.user_attrs.get("worker"),
        }
        for t in study.get_trials(deepcopy=False)
    ]


def write_tuned(path: Path, overrides: Mapping[str, Any], *, written_by: str, about: str) -> None:
    """The tuned-params file a training stage lays over its ``train`` section: a header naming
    the stage and the chosen trial (``about``), then the overrides as YAML."""
    trainer = written_by.replace("tune_", "train_")
    header = (
        f"# Written by the {written_by} stage ({about}).\n"
        f"# {trainer} lays these over params.yaml's {trainer}.train; do not edit by hand.\n"
    )
    with atomic_path(path) as tmp:
        tmp.write_text(header + yaml.safe_dump(dict(overrides), sort_keys=False))


def write_untuned(path: Path, written_by: str) -> None:
    """The empty tuned file of a tuner that has not run (no overrides)."""
    write_text(path, f"# {written_by} has not run (n_trials: 0): no overrides.\n{{}}\n")
