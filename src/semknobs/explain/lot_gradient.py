"""A lot's knob gradient and what its edits did: what ``semknobs explain`` and the served
explainer report beside the Eq. 2 counterfactuals.

The question asked of a scan (or of any tiles of one lot) is "which knob changes raise its
predicted stress, and how strongly". :func:`lot_gradient` answers it per lot, as the ``explain``
stage's ``knob_gradient_gain`` does (README, "The explanations"), and says how far to trust it:

* ``gradient``: the mean over the lot's tiles of ``d R(G(I; A)) / d A`` (the stage's
  ``explain.knob_gradient`` settings), MPa per knob unit, with a t-interval over the tiles;
* ``gain``: how far each knob's edits moved the meter's reading of their own attribute in this
  lot (the diagonal of the measured Jacobian, lot mean; 1 = the edit did what was asked). Not
  measured for a lot of fewer than :data:`MIN_TILES` tiles: one tile's gain is too noisy to
  divide by, so such a lot is not corrected (and a one-tile request stays fast);
* ``gain_corrected`` (the headline): ``gradient * study_gain / gain`` (the lot's gain clipped to
  ``explain.corrected.gain_clip`` times the study's) for knobs whose study gain is at least
  ``explain.corrected.gain_min``; other knobs keep the gradient. The study gains are the
  ``explain`` stage's (measured on its held-out tiles, stored in the bundle): one scan has no
  study of its own. Its interval is the gradient's, scaled by the same factor (the lot gain's
  own uncertainty is not in it). ``per_label_unit`` is the same per unit of the experts' scale;
* ``corrected``: ``J^-T g`` with the lot's mean measured Jacobian ``J`` (MPa per unit of
  *measured* concept change), its condition number, a bootstrap interval over the lot's tiles and
  a flag when it cannot be trusted (the issue's leakage-aware attribution; on the synthetic study
  it follows the regressor between lots less well than the headline: README).

``note`` says in words what limits each value: no meter in the bundle, a knob whose edits deliver
less than ``gain_min`` of a requested change (its gradient is the response to that weak edit),
too few tiles for an interval, an interval spanning zero, an ill-conditioned ``J``.

Not in the paper (which explains by sweeps and Eq. 2 only). Nothing here reads the renderer or
the truth: the meter and the labels exist on user data too.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy import stats
from torch import nn

from semknobs.attributes import ATTRIBUTES, AttributeScaler
from semknobs.explain.gradient import KnobGradient, KnobGradientParams
from semknobs.explain.measured import (
    CorrectedParams,
    MeterCalibration,
    corrected_attribution,
    corrected_knobs,
    gain_factor,
    measured_jacobian,
)

K = len(ATTRIBUTES)
MIN_TILES = 3  # fewer tiles in a lot: no interval (every value flagged)
# per-lot values the served explainer repeats on each of the lot's rows as lot_<column>_<a>
SERVED = ("gain_corrected", "gain_corrected_low", "gain_corrected_high", "gain", "corrected")
SERVED += ("corrected_low", "corrected_high", "corrected_flag")


@dataclass(frozen=True)
class GradientSettings:
    """What a bundle needs to explain lots by their knob gradient: the ``explain`` stage's
    settings, and the study's meter-read knob gains (None: no gain correction)."""

    knob_gradient: KnobGradientParams = field(default_factory=KnobGradientParams)
    corrected: CorrectedParams = field(default_factory=CorrectedParams)
    study_gain: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.study_gain is not None:
            gain = np.asarray(self.study_gain, dtype=float)
            if gain.shape != (K,) or not np.isfinite(gain).all():
                raise ValueError(f"study_gain must be {K} finite gains, got {self.study_gain}")


@dataclass
class LotGradient:
    tiles: pd.DataFrame  # one row per tile: lot, gradient_<a>, gain_<a> (NaN without a meter)
    lots: pd.DataFrame  # one row per lot and attribute (columns: see the module docstring)

    def summary(self, lot: str) -> dict[str, dict[str, Any]]:
        """One lot's values per attribute, JSON-ready (NaN -> None)."""
        rows = self.lots[self.lots["lot"] == lot].drop(columns=["lot"]).set_index("attribute")
        return {
            a: {k: _plain(v) for k, v in row.items()} for a, row in rows.to_dict("index").items()
        }

    def served_columns(self) -> pd.DataFrame:
        """Per tile, its lot's :data:`SERVED` values as ``lot_<column>_<a>`` (+ condition)."""
        by_lot = self.lots.set_index(["lot", "attribute"])
        columns = {
            f"lot_{col}_{a}": by_lot[col].xs(a, level="attribute")  # keeps each column's dtype
            for col in SERVED
            for a in ATTRIBUTES
        }
        columns["lot_condition"] = self.lots.groupby("lot", sort=False)["condition"].first()
        per_lot = pd.DataFrame(columns)
        return per_lot.loc[self.tiles["lot"]].reset_index(drop=True)


def lot_gradient(
    gen: nn.Module,
    reg: nn.Module,
    images: torch.Tensor,
    attrs: torch.Tensor,
    lots: Sequence[str] | np.ndarray,
    settings: GradientSettings,
    *,
    meter: MeterCalibration | None = None,
    scaler: AttributeScaler | None = None,
    batch_size: int = 64,
    deadline: float | None = None,
) -> LotGradient:
    """Per-lot knob gradients of ``images`` (in [-1, 1]) edited from ``attrs`` (knob units);
    ``reg`` gives MPa; ``lots`` names each tile's lot. ``deadline`` (``time.monotonic()``)
    stops the work with :class:`~semknobs.explain.counterfactual.SearchDeadline`."""
    lots = np.asarray(lots).astype(str)
    if lots.shape != (len(images),):
        raise ValueError(f"{len(images)} tiles but lot names of shape {lots.shape}")
    explainer = KnobGradient(gen, reg, settings.knob_gradient)
    grad = explainer.attribute(images, attrs, batch_size, deadline).gradient
    jac = np.full((len(images), K, K), np.nan)
    names, counts = np.unique(lots, return_counts=True)
    read = np.isin(lots, names[counts >= MIN_TILES])  # a lot of 1-2 tiles: gains too noisy
    if meter is not None and read.any():
        rows = torch.from_numpy(np.flatnonzero(read))
        jac[read] = measured_jacobian(
            gen,
            images[rows],
            attrs[rows],
            meter,
            settings.corrected.step,
            batch_size=batch_size,
            progress=False,
            deadline=deadline,
        )
    gain = np.diagonal(jac, axis1=1, axis2=2)
    tiles = pd.DataFrame({"lot": lots})
    for j, a in enumerate(ATTRIBUTES):
        tiles[f"gradient_{a}"] = grad[:, j]
        tiles[f"gain_{a}"] = gain[:, j]
    names = list(dict.fromkeys(lots))  # in order of first appearance
    rows = [
        summarise_lot(
            name,
            grad[lots == name],
            jac[lots == name],
            settings,
            measured=meter is not None,
            scaler=scaler,
        )
        for name in names
    ]
    return LotGradient(tiles, pd.concat(rows, ignore_index=True))


def summarise_lot(
    name: str,
    grad: np.ndarray,
    jac: np.ndarray,
    settings: GradientSettings,
    *,
    measured: bool = True,
    scaler: AttributeScaler | None = None,
) -> pd.DataFrame:
    """One lot's rows (one per attribute) from its tiles' knob gradients (n, 4) and measured
    Jacobians (n, 4, 4); ``measured=False``: the bundle has no meter (``jac`` is not used)."""
    n, c = len(grad), settings.corrected
    mean, half = grad.mean(axis=0), _t_half_width(grad)
    notes: list[list[str]] = [[] for _ in range(K)]
    if n < MIN_TILES:
        for note in notes:
            note.append(f"{n} tile(s): no interval below {MIN_TILES}")
    factor = np.ones(K)
    gain = np.full(K, np.nan)
    corrected = np.full((3, K), np.nan)  # value, low, high
    flags, condition = np.ones(K, dtype=bool), np.nan
    if not measured:
        for note in notes:
            note.append("no meter in the bundle: gains and corrections not measured")
    elif n < MIN_TILES:
        for note in notes:
            note.append("gains not measured below that (too noisy): not corrected")
    else:
        with warnings.catch_warnings():  # a knob no tile could read: NaN, not a warning
            warnings.simplefilter("ignore", RuntimeWarning)
            gain = np.nanmean(np.diagonal(jac, axis1=1, axis2=2), axis=0)
        if settings.study_gain is not None:
            study = np.asarray(settings.study_gain, dtype=float)
            factor = gain_factor(jac, np.zeros(n, dtype=int), c.gain_clip, c.gain_min, study)[0]
            corrects = corrected_knobs(study, c.gain_min)
            for k in np.flatnonzero(corrects):
                low, high = (f * study[k] for f in c.gain_clip)
                if not np.isfinite(gain[k]):
                    notes[k].append("no reading of this knob's edits: the study gain is used")
                elif not low <= gain[k] <= high:
                    notes[k].append(
                        f"lot gain {gain[k]:.2f} outside {low:.2f}-{high:.2f} (gain_clip x the "
                        f"study's {study[k]:.2f}): correction capped at x{factor[k]:.2f}"
                    )
            for k in np.flatnonzero(~corrects):
                notes[k].append(
                    f"edits deliver {study[k]:.2f} of a requested change in the study "
                    f"(gain_min {c.gain_min:g}): not gain-corrected, a weak edit's response"
                )
        else:
            for note in notes:
                note.append("no study gains in the bundle: not gain-corrected")
        resamples = c.bootstrap if n >= MIN_TILES else 0  # too few tiles: flagged anyway
        res = corrected_attribution(
            grad, jac, np.arange(n), max_condition=c.max_condition, bootstrap=resamples,
            seed=c.seed,
        )  # fmt: skip
        corrected[0], corrected[1:] = res.attribution.mean(axis=0), res.interval
        condition = res.condition
        flags = res.flags | (n < MIN_TILES)
        if not condition <= c.max_condition:
            for note in notes:
                note.append(
                    f"J^-T-corrected flagged: J condition {condition:.3g} > {c.max_condition:g}"
                )
    headline = mean * factor
    rows = pd.DataFrame(
        {
            "lot": name,
            "attribute": list(ATTRIBUTES),
            "tiles": n,
            "gradient": mean,
            "gradient_low": mean - half,
            "gradient_high": mean + half,
            "gain": gain,
            "gain_factor": factor,
            "gain_corrected": headline,
            "gain_corrected_low": (mean - half) * factor,
            "gain_corrected_high": (mean + half) * factor,
            "corrected": corrected[0],
            "corrected_low": corrected[1],
            "corrected_high": corrected[2],
            "condition": condition,
            "corrected_flag": flags,
        }
    )
    if scaler is not None:
        rows.insert(
            rows.columns.get_loc("gain_corrected") + 1,
            "per_label_unit",
            headline / (np.array(scaler.high) - np.array(scaler.low)),
        )
    for k in range(K):
        low, high = rows.loc[k, "gain_corrected_low"], rows.loc[k, "gain_corrected_high"]
        if np.isfinite(low) and low <= 0 <= high:
            notes[k].append("interval spans zero: sign not settled")
    rows["note"] = ["; ".join(note) for note in notes]
    return rows


def _plain(value: Any) -> Any:
    if isinstance(value, np.bool_ | bool):
        return bool(value)
    if isinstance(value, np.integer | int):
        return int(value)
    if isinstance(value, np.floating | float):
        return float(value) if np.isfinite(value) else None
    return value


def _t_half_width(values: np.ndarray) -> np.ndarray:
    """Half width of the 95 % t-interval of the column means (NaN below :data:`MIN_TILES`)."""
    n = len(values)
    if n < MIN_TILES:
        return np.full(values.shape[1], np.nan)
    return stats.t.ppf(0.975, n - 1) * values.std(axis=0, ddof=1) / np.sqrt(n)
