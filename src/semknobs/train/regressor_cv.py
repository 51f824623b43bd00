"""Lot-level cross-validation of the peak-stress regressor over the CV folds of ``splits.json``
(the tuner's objective; the test lots are never loaded).

For each fold a model is trained on the other folds' lots and predicts the fold's tiles; a lot's
prediction is the mean of its tiles'; the fold's score is the RMSE over its lots. The folds
train in lockstep, one epoch each, so after every epoch the mean-over-folds score so far can be
reported (a pruner can stop a trial early).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
import torch
from tqdm import tqdm

from semknobs.data.dataset import fit_scaler, load_tileset
from semknobs.data.split import read_splits
from semknobs.evaluation.regressor import lot_rmse
from semknobs.models.regressor import predict
from semknobs.train.regressor import RegressorTrainParams, make_trainer, torch_threads

# --------------------------------------------------------------------------------------------
# data: lot-wise CV folds
# --------------------------------------------------------------------------------------------


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
    folds = splits.cv_folds(str(splits_path))
    lots = splits.training_lots(str(splits_path))
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
