"""Multi-objective tuning of the AttGAN: reconstruction PSNR, concept control and, given the
trained regressor, the regressor's reconstruction shift.

Each trial trains a short AttGAN (``trial_steps``; ``trial_seeds`` times, from the trained
params' seed on, each objective the mean over them) on the training folds except ``val_fold``
and scores it on tiles of ``val_fold`` (the test lots are never touched):

* ``val/psnr``: reconstruction PSNR (dB), maximised;
* ``val/mean_control``: mean over attributes of the meter-measured control rho, maximised;
* ``val/recon_shift_pct_range``: mean |R(G(I; A)) - R(I)| as a % of the training lots' stress range,
  minimised (only with a regressor). The regressor reads the validation tiles and their
  reconstructions, never a label, so nothing here reads the truth;
* ``val/sign_agreement``: the share of validation lot-attributes where the trial's lot knob
  gradient and the meter regression share a sign (:mod:`semknobs.train.sign_objective`),
  maximised (with a regressor and meter readings): the truth-free stand-in for fidelity.

The search space (``tune_attgan.space``, params.yaml only) is :mod:`semknobs.train.attgan_space`.

The chosen trial is the Pareto-optimal one with the best mean control among those whose PSNR
is at most ``psnr_tolerance_db`` below the baseline trial's (``train_attgan``'s own params,
queued first and marked with the ``baseline`` user attr), whose shift is at most
``shift_tolerance_pct`` above it and whose sign agreement is at most ``agreement_tolerance``
below it. Its params
are written to a YAML file that ``train_attgan`` reads (``--tuned``), so nobody copies numbers by
hand.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
import torch

from semknobs.errors import ParamsError, SemknobsError
from semknobs.evaluation.attgan import (
    AttGANEvalParams,
    control_matrix,
    control_metrics,
    reconstruction_metrics,
    shift_metrics,
)
from semknobs.evaluation.samples import generate
from semknobs.meter import MeterParams
from semknobs.models.regressor import PeakStressRegressor, predict
from semknobs.train import tuning
from semknobs.train.attgan import train_attgan
from semknobs.train.attgan_params import AttGANTrainParams
from semknobs.train.attgan_space import Dimension, apply, nested, suggest
from semknobs.train.base import fingerprint
from semknobs.train.sign_objective import AGREEMENT, SignReference, sign_agreement

PSNR, CONTROL, SHIFT = "val/psnr", "val/mean_control", "val/recon_shift_pct_range"


def objectives(with_regressor: bool, with_agreement: bool = False) -> tuple[list[str], list[str]]:
    """(metric names, directions) of a study: PSNR and control, with a regressor its shift, and
    with meter readings of the validation lots too the sign agreement."""
    names, directions = [PSNR, CONTROL], ["maximize", "maximize"]
    if with_regressor:
        names, directions = [*names, SHIFT], [*directions, "minimize"]
        if with_agreement:
            names, directions = [*names, AGREEMENT], [*directions, "maximize"]
    return names, directions


@dataclass(frozen=True)
class TuneAttGANParams:
    """The ``tune_attgan`` params section (``space``: no default, declared in params.yaml)."""

    space: dict[str, Any]
    n_trials: int = 0
    trial_steps: int = 1000
    seed: int = 0
    val_fold: int = 0
    psnr_tolerance_db: float = 0.5
    shift_tolerance_pct: float = 0.5
    agreement_tolerance: float = 0.05
    agreement_tiles: int = 8  # tiles per validation lot whose knob gradients meet its regression
    trial_seeds: int = 1  # seeds each trial trains; its objectives are their means
    eval: AttGANEvalParams = field(default_factory=lambda: AttGANEvalParams(n_tiles=48, points=4))

    def __post_init__(self) -> None:
        for name, value, ok in (
            ("n_trials", self.n_trials, self.n_trials >= 0),
            ("trial_steps", self.trial_steps, self.trial_steps >= 1),
            ("psnr_tolerance_db", self.psnr_tolerance_db, 0 <= self.psnr_tolerance_db < math.inf),
            (
                "shift_tolerance_pct",
                self.shift_tolerance_pct,
                0 <= self.shift_tolerance_pct < math.inf,
            ),
            ("agreement_tolerance", self.agreement_tolerance, 0 <= self.agreement_tolerance <= 1),
            ("agreement_tiles", self.agreement_tiles, 1 <= self.agreement_tiles <= 1000),
            ("trial_seeds", self.trial_seeds, 1 <= self.trial_seeds <= 16),
            ("eval.n_tiles", self.eval.n_tiles, self.eval.n_tiles >= 2),
            ("eval.points", self.eval.points, self.eval.points >= 2),
        ):
            if not ok:
                raise ParamsError(f"tune_attgan.{name}: {value!r} is out of range")


def study_name(
    tune: TuneAttGANParams,
    base: AttGANTrainParams,
    data_key: str,
    names: list[str],
    reference: SignReference | None = None,
) -> str:
    """``semknobs-attgan-<hash>`` of everything that makes trials comparable (space, trial
    length, fold, evaluation, the trained params, the data, the objectives, and what the sign
    agreement is scored against): a changed space or base never extends an old study.
    ``n_trials`` and the choice's tolerances are left out."""
    scored = "" if reference is None else reference.key()  # agreement_tiles is in its rows
    key = f"{base.fingerprint(data_key)}:{','.join(names)}:{scored}"
    ignore = (
        "n_trials",
        "psnr_tolerance_db",
        "shift_tolerance_pct",
        "agreement_tolerance",
        "agreement_tiles",
    )
    return f"semknobs-attgan-{fingerprint(tune, key, ignore=ignore)}"


@dataclass(frozen=True)
class TrialData:
    """What every trial trains on and is scored on (uint8 tiles, attributes in [0, 1])."""

    train_images: np.ndarray
    train_attrs: np.ndarray
    val_images: np.ndarray
    val_attrs: np.ndarray
    reference: SignReference | None = None  # the val lots' meter regression (sign agreement)
    readings: np.ndarray | None = None  # meter readings of the training tiles (concept loss)
    counts: np.ndarray | None = None  # the meter's particle counts of them (count read)
    lots: np.ndarray | None = None  # their lot ids (concept calibration, texture fit)
    meter: MeterParams | None = None


def objective_factory(
    *,
    space: TuneAttGANParams,
    dims: list[Dimension],
    base: AttGANTrainParams,
    data: TrialData,
    regressor: PeakStressRegressor | None = None,
    stress_range: float = float("nan"),
    tracking: tuning.TrialTracking | None = None,
) -> Callable[[optuna.Trial], tuple[float, ...]]:
    """The study's objective over ``dims`` (:func:`dimensions` of ``space.space``);
    ``regressor`` (with the training lots' ``stress_range``) adds the shift objective, and
    ``data.reference`` with it the sign agreement."""
    rng = np.random.default_rng(space.seed)
    n_val = len(data.val_images)
    pick = rng.choice(n_val, min(space.eval.n_tiles, n_val), replace=False)
    images, attrs = data.val_images[pick], data.val_attrs[pick]
    direct = None if regressor is None else predict(regressor, images, space.eval.batch_size)
    reference = data.reference if regressor is not None else None
    names, _ = objectives(regressor is not None, reference is not None)
    tracked = tracking or tuning.TrialTracking("tune_attgan", "")

    def objective(trial: optuna.Trial) -> tuple[float, ...]:
        overrides = nested(suggest(trial, dims, base))
        with tuning.trial_run(tracked, trial, overrides) as run:
            metrics = _score(overrides)
            for key, value in metrics.items():
                trial.set_user_attr(key, value)
            if run is not None:
                from semknobs import tracking as stage_tracking

                stage_tracking.log_metrics(metrics)
        return tuple(metrics[k] for k in names)

    def _score(overrides: dict[str, Any]) -> dict[str, float]:
        """Every metric as the mean over the trial's seeds (``train_attgan.train.seed`` and the
        next ``trial_seeds - 1``), and with several seeds each objective's spread over them
        (``<objective>_seed_sd``)."""
        params = apply(base, overrides, space.trial_steps)
        runs = [
            _score_seed(dataclasses.replace(params, seed=base.seed + i))
            for i in range(space.trial_seeds)
        ]
        out = {k: float(np.mean([r[k] for r in runs])) for k in runs[0]}
        if len(runs) > 1:
            out |= {f"{k}_seed_sd": float(np.std([r[k] for r in runs], ddof=1)) for k in names}
        return out

    def _score_seed(params: AttGANTrainParams) -> dict[str, float]:
        trainer = train_attgan(
            params=params,
            images=torch.from_numpy(data.train_images),
            attrs=torch.from_numpy(data.train_attrs),
            progress=False,
            readings=data.readings,
            counts=data.counts,
            lots=data.lots,
            meter=data.meter,
            regressor=regressor if params.lambda_regressor > 0 else None,
        )
        rec = generate(trainer.generator, images, attrs, attrs)
        realism = reconstruction_metrics(images, rec)
        matrix, _ = control_matrix(trainer.generator, images, attrs, space.eval, data.meter)
        control = control_metrics(matrix)
        metrics = {
            PSNR: realism["test/psnr"],
            "val/ssim": realism["test/ssim"],
            **{k.replace("control/", "val/control_"): v for k, v in control.items()},
            CONTROL: control["control/mean_spearman"],
        }
        if direct is not None:  # with a regressor
            shifted = predict(regressor, rec, space.eval.batch_size)
            shift = shift_metrics(direct, shifted, stress_range)
            metrics |= {k.replace("recon/", "val/recon_"): v for k, v in shift.items()}
        if reference is not None:
            metrics |= sign_agreement(
                trainer.generator,
                regressor,
                data.val_images,
                data.val_attrs,
                reference,
                space.eval.batch_size,
            )
        return metrics

    return objective


BASELINE = "baseline"  # the user attr that marks train_attgan's own params


def choose(
    study: optuna.Study,
    psnr_tolerance_db: float,
    shift_tolerance_pct: float,
    agreement_tolerance: float,
) -> optuna.trial.FrozenTrial:
    """The Pareto-optimal trial with the best control among those at most the tolerances worse
    than the baseline (``train_attgan``'s own params) on PSNR, shift and sign agreement (the
    objectives the study has). The baseline qualifies itself, so the choice is never more than
    the tolerances worse on them than the defaults."""
    done = study.get_trials(deepcopy=False, states=[optuna.trial.TrialState.COMPLETE])
    base = next((t for t in done if t.user_attrs.get(BASELINE)), None)
    if base is None:
        raise SemknobsError(
            f"tune_attgan: study {study.study_name!r} has no completed baseline trial "
            "(train_attgan's own params); rerun the stage to run it"
        )
    n = len(study.directions)
    names = list(study.metric_names or objectives(n >= 3, n >= 4)[0])
    # how far each guarded objective may fall short of the baseline (+: larger is better)
    guards = {
        PSNR: (psnr_tolerance_db, 1),
        SHIFT: (shift_tolerance_pct, -1),
        AGREEMENT: (agreement_tolerance, 1),
    }
    guarded = [(names.index(k), tol, sign) for k, (tol, sign) in guards.items() if k in names]

    def qualifies(t: optuna.trial.FrozenTrial) -> bool:
        return all(sign * (t.values[i] - base.values[i]) >= -tol for i, tol, sign in guarded)

    control = names.index(CONTROL)
    good = [t for t in study.best_trials if qualifies(t)] or [base]
    return max(good, key=lambda t: (t.values[control], -t.number))


def study_summary(study: optuna.Study, chosen: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """The study's record for ``reports/tune_attgan/study.json``."""
    names = study.metric_names or [f"value_{i}" for i in range(len(study.directions))]
    return {
        "chosen_trial": chosen.number,
        "values": dict(zip(names, chosen.values, strict=True)),
        "pareto_trials": [t.number for t in study.best_trials],
        "n_trials": len(study.trials),
        "states": tuning.state_counts(study),
        "trials": tuning.trial_table(study),
    }
