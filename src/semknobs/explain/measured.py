"""What the edits did, as the meter reads it: leakage-aware outputs for every explanation.

A knob is a request; the edit is what happened. The attribute meter (:mod:`semknobs.meter`,
classical image analysis that works on any SEM tile) reads the edited tiles, and a per-attribute
line fitted on the training lots (lot-mean reading -> lot label, in knob units: the same
calibration the concept network learns from) puts its readings in knob units. With it:

* :meth:`MeterCalibration.read` -- calibrated readings of tiles, knob units (NaN where the meter
  has no reading, e.g. dispersity of a tile with fewer than three whole particles);
* :func:`measured_jacobian` -- ``J[i, j] = d measured_i / d requested_j`` of one-knob edits
  (central differences), per tile: the knobs' real gains (diagonal) and leakage (off-diagonal);
* :func:`gain_corrected` -- the lot's knob gradient divided by how far the knob moved its own
  reading *in that lot*, relative to the study: a knob that adds no pores to a pore-free lot
  gets no response from the regressor there, which says nothing about what more porosity
  would do;
* :func:`corrected_attribution` -- the knob gradient mapped to measured concept units,
  ``s = J^-T g`` (``g = J^T s`` when the regressor responds to what the meter reads), with the
  condition number of ``J``, a lot-bootstrap interval, and a flag per attribute when it cannot be
  trusted (``J`` ill-conditioned, or the interval of the mean spans zero).

Departure from the paper: the paper reports requested knob changes only. Nothing here reads the
synthetic renderer or the truth; on user data the same meter and labels exist.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from semknobs.attributes import ATTRIBUTES, AttributeScaler
from semknobs.errors import DataError
from semknobs.explain.counterfactual import check_deadline
from semknobs.explain.gradient import lot_mean
from semknobs.meter import MeterParams, calibration, measure_tiles, read_measurements
from semknobs.pixels import to_uint8

K = len(ATTRIBUTES)
SINGULAR = 1e6  # condition number of J beyond which it is not inverted
GAIN_CLIP = (0.25, 4.0)  # a lot's gain is taken within these multiples of the study's


@dataclass(frozen=True)
class CorrectedParams:
    """``explain.corrected``: the meter-corrected knob gradient."""

    step: float = 0.25  # one-knob edits A +- step e_j, knob units
    gain_min: float = 0.5  # knob_gradient_gain corrects only knobs with a study gain >= this
    gain_clip: tuple[float, float] = GAIN_CLIP  # ... within these multiples of the study gain
    max_condition: float = 10.0  # flag every attribute when cond(J) exceeds this
    bootstrap: int = 500  # lot resamples for the interval
    seed: int = 0
    tile_weight: float = 0.5  # knob_gradient_tile_gain: a tile's gain, this much its own

    def __post_init__(self) -> None:
        if not 0 <= self.gain_min < 1e3:
            raise ValueError(f"corrected.gain_min must be in [0, 1000), got {self.gain_min}")
        if not 0 <= self.tile_weight <= 1:
            raise ValueError(f"corrected.tile_weight must be in [0, 1], got {self.tile_weight}")
        low, high = self.gain_clip
        if not 0 < low <= 1 <= high < 1e3:
            raise ValueError(f"corrected.gain_clip must be 0 < low <= 1 <= high, got {low, high}")


@dataclass(frozen=True)
class MeterCalibration:
    """The meter in knob units: ``knob = alpha * reading + beta`` per attribute."""

    alpha: tuple[float, ...]
    beta: tuple[float, ...]
    meter: MeterParams = field(default_factory=MeterParams)

    @classmethod
    def fit(
        cls, readings: pd.DataFrame, knob_labels: pd.DataFrame, meter: MeterParams | None = None
    ) -> MeterCalibration:
        """From per-tile readings (columns ``lot`` + the four attributes) and the lots' labels
        in knob units (``lot`` + the four attributes), over the lots both name."""
        labels = knob_labels.set_index("lot")[list(ATTRIBUTES)]
        readings = readings[readings["lot"].isin(labels.index)]
        if readings.empty:
            raise ValueError("meter calibration: no readings of the given lots")
        per_lot = {str(lot): labels.loc[lot].to_numpy(float) for lot in readings["lot"].unique()}
        alpha, beta = calibration(
            readings[list(ATTRIBUTES)].to_numpy(float), readings["lot"].to_numpy(), per_lot
        )
        return cls(tuple(map(float, alpha)), tuple(map(float, beta)), meter or MeterParams())

    def read(self, tiles: np.ndarray, n_jobs: int = 1) -> np.ndarray:
        """uint8 tiles (n, S, S) -> calibrated readings (n, 4), knob units, NaN = no reading."""
        raw = measure_tiles(tiles, self.meter, n_jobs=n_jobs, progress=False)
        return self.calibrate(raw[list(ATTRIBUTES)].to_numpy(float))

    def calibrate(self, raw: np.ndarray) -> np.ndarray:
        """Raw meter readings (n, 4) -> knob units."""
        return np.asarray(raw, dtype=float) * np.array(self.alpha) + np.array(self.beta)


def fit_from_files(
    measurements: str | Path,
    labels: pd.DataFrame,
    train_lots: list[str],
    scaler: AttributeScaler,
    meter: MeterParams,
) -> MeterCalibration:
    """The calibration the pipeline stores: the measure stage's readings of the training lots'
    tiles against those lots' labels in the AttGAN's knob units."""
    try:
        readings = pd.read_csv(measurements, dtype={"lot": str})
    except (OSError, ValueError) as exc:
        raise DataError(f"{measurements}: unreadable meter readings ({exc})") from None
    missing = sorted({"lot", *ATTRIBUTES} - set(readings.columns))
    if missing:
        raise DataError(f"{measurements}: lacks column(s) {missing}")
    knob = labels[labels["lot"].isin(train_lots)].copy()
    knob[list(ATTRIBUTES)] = scaler.transform(knob[list(ATTRIBUTES)].to_numpy())
    try:
        return MeterCalibration.fit(readings, knob, meter)
    except ValueError as exc:
        raise DataError(f"{measurements}: {exc}") from None


def calibrated_readings(
    measurements: str | Path, tiles: pd.DataFrame, calib: MeterCalibration
) -> np.ndarray:
    """The measure stage's readings of ``tiles`` (a manifest: ``tile``, ``lot``), knob units."""
    return calib.calibrate(read_measurements(measurements, tiles).to_numpy())


def measured_change(
    calib: MeterCalibration, before: torch.Tensor, after: torch.Tensor, n_jobs: int = 1
) -> np.ndarray:
    """Calibrated reading of ``after`` minus that of ``before`` (images in [-1, 1]), (n, 4)."""
    both = calib.read(np.concatenate([to_uint8(before), to_uint8(after)]), n_jobs)
    return both[len(before) :] - both[: len(before)]


def measured_jacobian(
    gen: nn.Module,
    images: torch.Tensor,
    attrs: torch.Tensor,
    calib: MeterCalibration,
    step: float = 0.25,
    n_jobs: int = 1,
    batch_size: int = 64,
    progress: bool = True,
    deadline: float | None = None,
) -> np.ndarray:
    """Per tile ``J[n, i, j]``: measured change of attribute ``i`` per unit of knob ``j``, by
    central differences of one-knob edits ``A +- step e_j`` (knob units; NaN where the meter
    has no reading at either end). ``deadline`` (``time.monotonic()``) is checked per batch."""
    from tqdm.auto import tqdm

    gen.eval()
    jac = np.full((len(images), K, K), np.nan)
    batches = [slice(i, i + batch_size) for i in range(0, len(images), batch_size)]
    with torch.no_grad():
        for j in tqdm(range(K), desc="measured jacobian", unit="knob", disable=not progress):
            shift = torch.zeros_like(attrs)
            shift[:, j] = step
            ends = []
            for sign in (1, -1):
                edited = []
                for sl in batches:
                    check_deadline(deadline, "the measured Jacobian")
                    edited.append(gen(images[sl], (attrs + sign * shift)[sl], attrs[sl]))
                ends.append(torch.cat(edited))
            check_deadline(deadline, "the measured Jacobian")
            jac[:, :, j] = measured_change(calib, ends[1], ends[0], n_jobs) / (2 * step)
    return jac


@dataclass
class CorrectedAttribution:
    attribution: np.ndarray  # (n, 4) dR per unit of *measured* concept change, MPa
    jacobian: np.ndarray  # (4, 4) mean J over the tiles (rows: measured, columns: knobs)
    condition: float  # of the mean J; large = the knobs' measured effects are nearly collinear
    interval: np.ndarray  # (2, 4) lot-bootstrap 95 % interval of the mean attribution
    flags: np.ndarray  # (4,) bool: do not trust this attribute's corrected value

    def table(self) -> pd.DataFrame:
        mean = self.attribution.mean(axis=0)
        return pd.DataFrame(
            {
                "attribute": list(ATTRIBUTES),
                "mean_attribution": mean,
                "low": self.interval[0],
                "high": self.interval[1],
                "gain": np.diag(self.jacobian),
                "condition": self.condition,
                "flag": self.flags,
            }
        )


def corrected_attribution(
    gradient: np.ndarray,
    jacobian: np.ndarray,
    lots: np.ndarray,
    *,
    max_condition: float = 10.0,
    bootstrap: int = 500,
    seed: int = 0,
) -> CorrectedAttribution:
    """``s = J^-T g`` per tile with the tiles' mean ``J`` (a per-tile ``J`` of four meter
    readings is too noisy to invert); the interval resamples lots (tiles of a lot share its
    look), re-estimating ``J`` and the mean attribution each time."""
    lots = np.asarray(lots)
    mean_j = _mean_jacobian(jacobian)
    condition = float(np.linalg.cond(mean_j))
    if not condition < SINGULAR:  # the edits did not move the meter (e.g. an untrained G)
        nothing = np.full_like(gradient, np.nan, dtype=float)
        return CorrectedAttribution(
            nothing, mean_j, condition, np.full((2, K), np.nan), np.ones(K, dtype=bool)
        )
    attribution = _solve(mean_j, gradient)
    names = np.unique(lots)
    members = {lot: np.flatnonzero(lots == lot) for lot in names}
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(bootstrap):
        pick = np.concatenate([members[lot] for lot in rng.choice(names, len(names))])
        j = _mean_jacobian(jacobian[pick])
        if np.isfinite(j).all() and np.linalg.cond(j) < SINGULAR:
            draws.append(_solve(j, gradient[pick]).mean(axis=0))
    interval = np.percentile(draws, [2.5, 97.5], axis=0) if draws else np.full((2, K), np.nan)
    spans_zero = ~((interval[0] > 0) | (interval[1] < 0))
    flags = spans_zero | (condition > max_condition)
    return CorrectedAttribution(attribution, mean_j, condition, interval, flags)


def gain_corrected(
    gradient: np.ndarray,
    jacobian: np.ndarray,
    lots: np.ndarray,
    clip: tuple[float, float] = GAIN_CLIP,
    min_gain: float = 0.0,
    study: np.ndarray | None = None,
) -> np.ndarray:
    """Per lot L and knob k: ``mean_L(g_k) * G_k / clip(mean_L(J_kk), clip * G_k)``, with ``G_k``
    the mean gain over all the tiles (or ``study``, the study's gains measured elsewhere: one
    scan has no study of its own); a knob whose ``G_k`` is below ``min_gain`` (or not
    positive) keeps its lot mean. Only the gain's *variation* between lots is divided out, so the
    study-mean scale of each knob stays the knob gradient's; each row gets its lot's value.

    The edits' meter-read gains differ between lots (on the default study the porosity knob's
    gain follows the lot's own porosity: it scales the pores a tile has), and the knob gradient
    inherits that. A lot's mean gain over its tiles is steadier than one tile's (``nan``
    readings are skipped; a lot with no reading of a knob keeps its mean gradient); each tile's
    own gain, in part, is :func:`tile_gain_corrected`'s.
    A knob with a small gain is left alone (``min_gain``): dividing by it multiplies what its
    edits do through texture the meter does not read (measured on the study suite: README).
    """
    lots = np.asarray(lots)
    if lots.shape != (len(gradient),):
        raise ValueError(f"gain_corrected: {len(gradient)} gradients, lot ids {lots.shape}")
    return lot_mean(gradient, lots) * gain_factor(jacobian, lots, clip, min_gain, study)


def corrected_knobs(study: np.ndarray, min_gain: float) -> np.ndarray:
    """(K,) bool: the knobs :func:`gain_corrected` divides (a positive study gain >= min_gain)."""
    return (study > 0) & (study >= min_gain)


def tile_gain_corrected(
    gradient: np.ndarray,
    jacobian: np.ndarray,
    lots: np.ndarray,
    weight: float,
    clip: tuple[float, float] = GAIN_CLIP,
    min_gain: float = 0.0,
) -> np.ndarray:
    """Per tile and knob k: ``g_k * G_k / clip(weight * J_kk + (1 - weight) * mean_L(J_kk))``,
    :func:`gain_corrected` with each tile's own gradient and (part of) its own gain, not its lot's.

    Within a lot the tiles' own levels differ, and the edits' gain follows the level (Rule N,
    ``benchmarks/gain_level_rules.md``). Measured with every knob corrected (``min_gain`` 0) on
    the default study's training lots (6 tiles each), the per-tile centred cosine against the
    oracle goes from -0.005 to 0.26 at weight 0.5 (0.25 at 1: one tile's gain is noisy, not too
    noisy to use); the lot's gain-corrected value (:func:`gain_corrected`) still follows a tile's
    oracle better where the lot has several tiles.
    """
    lots = np.asarray(lots)
    if lots.shape != (len(gradient),):
        raise ValueError(f"tile_gain_corrected: {len(gradient)} gradients, lot ids {lots.shape}")
    return gradient * gain_factor(jacobian, lots, clip, min_gain, tile_weight=weight)


def gain_factor(
    jacobian: np.ndarray,
    lots: np.ndarray,
    clip: tuple[float, float] = GAIN_CLIP,
    min_gain: float = 0.0,
    study: np.ndarray | None = None,
    tile_weight: float = 0.0,
) -> np.ndarray:
    """(n, K): what :func:`gain_corrected` multiplies each row's lot mean by,
    ``G_k / clip(mean_L(J_kk), clip * G_k)`` on :func:`corrected_knobs`, 1 elsewhere; with
    ``tile_weight`` w, the gain divided is ``w J_kk + (1 - w) mean_L(J_kk)`` (an unread tile: its
    lot's; :func:`tile_gain_corrected`)."""
    lots = np.asarray(lots)
    if lots.shape != (len(jacobian),) or jacobian.shape[1:] != (K, K):
        raise ValueError(f"gain_corrected: lot ids {lots.shape}, J {jacobian.shape}")
    gain = np.diagonal(jacobian, axis1=1, axis2=2)  # (n, K)
    if study is None:
        read = np.isfinite(gain).sum(axis=0)
        study = np.where(read > 0, np.nansum(gain, axis=0) / np.maximum(read, 1), 0.0)
    study = np.nan_to_num(np.asarray(study, dtype=float), nan=0.0)
    if study.shape != (K,):
        raise ValueError(f"gain_corrected: study gains of shape {study.shape}, not ({K},)")
    factor, lot_gain = np.ones_like(gain), lot_mean(gain, lots)  # the mean skips NaN
    if tile_weight:
        own = np.where(np.isfinite(gain), gain, lot_gain)
        lot_gain = tile_weight * own + (1 - tile_weight) * lot_gain
    for k in np.flatnonzero(corrected_knobs(study, min_gain)):
        used = np.clip(np.nan_to_num(lot_gain[:, k], nan=study[k]), *(c * study[k] for c in clip))
        factor[:, k] = study[k] / used
    return factor


def _solve(jacobian: np.ndarray, gradient: np.ndarray) -> np.ndarray:
    """``s = J^-T g`` for every row of ``gradient`` (n, 4)."""
    return np.linalg.solve(jacobian.T, gradient.T).T


def _mean_jacobian(jacobian: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():  # an entry no tile could read is 0, not a warning
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(jacobian, axis=0)
    return np.where(np.isfinite(mean), mean, 0.0)
