"""The skeleton both trainers share: a fingerprint of what changes the result, checkpoints with
exact resume, training-time accounting over every run behind a model, the progress bar and the
DDP rank-0 duties (only rank 0 logs, shows progress and checkpoints).

A trainer (:class:`Trainer` subclass) owns its models, optimizers and one seeded
``torch.Generator`` for all of its randomness, and advances by one *unit* (an AttGAN step, a
regressor epoch); :func:`fit` drives it. Because every random number comes from the saved
generator, a resumed run on the CPU ends with exactly the weights of an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from tqdm import tqdm

from semknobs.config import to_mapping
from semknobs.train.checkpoint import load_checkpoint, read_meta, save_checkpoint
from semknobs.train.distributed import World

LogFn = Callable[[dict[str, float], int], None]


def fingerprint(params: Any, data_key: str = "", ignore: Iterable[str] = ()) -> str:
    """Identifies the run a checkpoint belongs to: every param that changes the result (all but
    ``ignore``) plus the data version."""
    skip = set(ignore)
    keep = {k: v for k, v in to_mapping(params).items() if k not in skip}
    blob = json.dumps(keep, sort_keys=True) + data_key
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class Trainer:
    """Base of the AttGAN and regressor trainers.

    Subclasses set ``name`` (messages), ``unit`` ("step"/"epoch"), ``params``, ``device``,
    ``world`` and ``rng`` and define :meth:`parts` (modules and optimizers by name),
    :attr:`position` (units done) and :meth:`position_meta`/:meth:`restore_position`.
    """

    name = "train"
    unit = "step"

    def __init__(self, world: World | None = None) -> None:
        self.world = world or World()
        # training seconds over all runs that led here; None after resuming a checkpoint that
        # did not record them (then the total is unknown, not the last run's share)
        self.train_seconds: float | None = 0.0
        self.replica_gap = 0.0  # under DDP: max |weight - rank 0's| at the end (0.0: in sync)

    # -- what a subclass defines -------------------------------------------------------------
    def parts(self) -> dict[str, dict[str, Any]]:
        raise NotImplementedError

    @property
    def position(self) -> int:
        raise NotImplementedError

    def position_meta(self) -> dict[str, int]:
        raise NotImplementedError

    def restore_position(self, meta: Mapping[str, Any]) -> None:
        raise NotImplementedError

    def distribute(self) -> None:
        """Wrap the trained passes in DDP (called after resuming)."""

    # -- shared ------------------------------------------------------------------------------
    def save(self, path: Path, fingerprint: str) -> None:
        meta = {**self.position_meta(), "fingerprint": fingerprint}
        meta["train_seconds"] = self.train_seconds
        save_checkpoint(path, **self.parts(), rng=self.rng, meta=meta)

    def try_resume(self, path: Path, fingerprint: str) -> bool:
        meta = read_meta(path)
        if meta is None or meta.get("fingerprint") != fingerprint:
            return False
        meta = load_checkpoint(path, **self.parts(), rng=self.rng)
        self.restore_position(meta)
        self.train_seconds = meta.get("train_seconds")
        return True

    def add_time(self, seconds: float) -> None:
        if self.train_seconds is not None:
            self.train_seconds += seconds


def fit(
    trainer: Trainer,
    advance: Callable[[], dict[str, float]],
    *,
    total: int,
    end: int,
    fingerprint: str,
    checkpoint_dir: Path | None = None,
    checkpoint_every: int = 1,
    log: LogFn | None = None,
    log_every: int = 1,
    rate: str | None = None,
    on_checkpoint: Callable[[Any], None] | None = None,
    progress: bool = True,
    postfix: Callable[[dict[str, float]], dict[str, str]] | None = None,
) -> None:
    """Resume ``trainer`` from ``checkpoint_dir`` if it holds this run, then ``advance()`` it one
    unit at a time until ``end`` (of ``total``).

    Every ``log_every`` units (and at the end) ``log`` receives the mean of the units' metrics,
    plus ``rate`` (units per second in this run) when given; every ``checkpoint_every`` units
    (and at the end) the state is saved and ``on_checkpoint(trainer)`` called. The training
    seconds are accounted at each checkpoint and at the end. Under DDP, ranks other than 0
    neither log, checkpoint nor show progress.
    """
    world = trainer.world
    resumed = checkpoint_dir is not None and trainer.try_resume(checkpoint_dir, fingerprint)
    if resumed and world.is_main:
        print(
            f"{trainer.name}: resuming from {checkpoint_dir} at {trainer.unit} {trainer.position}"
        )
    trainer.distribute()
    if not world.is_main:
        log, on_checkpoint, checkpoint_dir, progress = None, None, None, False
    bar = tqdm(
        total=total,
        initial=trainer.position,
        desc=trainer.name,
        unit=trainer.unit,
        disable=not progress,
    )
    started = mark = time.perf_counter()
    first = trainer.position
    window: dict[str, list[float]] = {}
    while trainer.position < end:
        metrics = advance()
        bar.update(1)
        if postfix is not None:
            bar.set_postfix(postfix(metrics))
        for key, value in metrics.items():
            window.setdefault(key, []).append(value)
        done = trainer.position
        if log is not None and (done % log_every == 0 or done == end):
            mean = {k: sum(v) / len(v) for k, v in window.items()}
            if rate is not None:
                mean[rate] = (done - first) / max(time.perf_counter() - started, 1e-9)
            log(mean, done)
            window.clear()
        if checkpoint_dir is not None and (done % checkpoint_every == 0 or done == end):
            trainer.add_time(time.perf_counter() - mark)
            mark = time.perf_counter()
            trainer.save(checkpoint_dir, fingerprint)
            if on_checkpoint is not None:
                on_checkpoint(trainer)
    trainer.add_time(time.perf_counter() - mark)
    bar.close()
    modules = trainer.parts()["modules"].values()
    trainer.replica_gap = max((world.replica_gap(m, trainer.device) for m in modules), default=0.0)
