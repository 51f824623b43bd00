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

The search space is declared in ``params.yaml`` only (``tune_attgan.space``): each key names a
``train_attgan.train`` parameter (the architecture's under ``model:``) and gives ``[low, high]``
for a number (floats log-uniform, integers uniform) or the choices for a true/false or text
parameter. ``model.enc_layers`` is drawn first and sets ``dec_layers`` too, and
``model.shortcut_layers`` is kept below the trial's number of layers; keys that are not
hyperparameters (``FIXED``) are refused.

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
import typing
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
from semknobs.explain.bundle import in_batches
from semknobs.meter import MeterParams
from semknobs.models.attgan import AttGANConfig
from semknobs.models.regressor import PeakStressRegressor
from semknobs.pixels import to_model
from semknobs.train import tuning
from semknobs.train.attgan import AttGANTrainParams, train_attgan
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
    length, fold, evaluation, the trained params, the data, the objectives, the knob gradient's
    settings): a changed space or base never extends an old study. ``n_trials`` and the choice's
    tolerances are left out."""
    knob = "" if reference is None else repr(reference.knob_gradient)
    key = f"{base.fingerprint(data_key)}:{','.join(names)}:{knob}"
    ignore = ("n_trials", "psnr_tolerance_db", "shift_tolerance_pct", "agreement_tolerance")
    return f"semknobs-attgan-{fingerprint(tune, key, ignore=ignore)}"


# train params a study may not vary, and why
FIXED = {
    "steps": "trials train trial_steps",
    "seed": "trials must differ in the params only",
    "device": "not a hyperparameter",
    "checkpoint_every": "not a hyperparameter",
    "log_every": "not a hyperparameter",
    "model.img_size": "the tiles' size",
    "model.channels": "the tiles' channels",
    "model.n_attrs": "the four concepts",
    "model.dec_layers": "follows model.enc_layers",
}


@dataclass(frozen=True)
class Dimension:
    """One tuned parameter: ``key`` as in the space, its type and its range or choices."""

    key: str
    kind: type
    values: tuple[Any, ...]


def dimensions(space: dict[str, Any], where: str = "tune_attgan.space") -> list[Dimension]:
    """The space checked against ``AttGANTrainParams``: known keys, typed, finite, in order.
    Architecture keys sit under ``model:`` as in ``train_attgan.train``; a dimension's key (and
    its Optuna name) is ``model.<name>``."""
    train_types = typing.get_type_hints(AttGANTrainParams)
    model_types = typing.get_type_hints(AttGANConfig)
    del train_types["model"], train_types["concept"]  # nested sections: not tunable here
    dims = []
    model = space.get("model", {})
    if not isinstance(model, dict):
        raise ParamsError(f"{where}.model: expected a mapping of architecture keys, got {model!r}")
    dotted = [k for k in space if "." in k]
    if dotted:
        raise ParamsError(f"{where}.{dotted[0]}: nest architecture keys under model:")
    flat = {k: v for k, v in space.items() if k != "model"}
    flat |= {f"model.{k}": v for k, v in model.items()}
    for key in flat:
        if key in FIXED:
            raise ParamsError(f"{where}.{key}: not tunable ({FIXED[key]})")
    if "model.enc_layers" in flat:  # drawn first: shortcut_layers is bounded by it
        flat = {"model.enc_layers": flat.pop("model.enc_layers"), **flat}
    for key, values in flat.items():
        types = model_types if key.startswith("model.") else train_types
        name = key.removeprefix("model.")
        kind = types.get(name)
        if kind is None:
            known = sorted(train_types) + [f"model.{k}" for k in sorted(model_types)]
            raise ParamsError(f"{where}.{key}: not a train_attgan.train parameter; known: {known}")
        at = f"{where}.{key}"
        if not isinstance(values, list):
            raise ParamsError(f"{at}: expected [low, high] or a list of choices, got {values!r}")
        if kind in (int, float):
            if len(values) != 2 or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in values
            ):
                raise ParamsError(f"{at}: expected [low, high] numbers, got {values!r}")
            low, high = values
            if not (math.isfinite(low) and math.isfinite(high) and low <= high):
                raise ParamsError(f"{at}: expected finite low <= high, got {values!r}")
            if kind is int and not all(isinstance(v, int) for v in values):
                raise ParamsError(
                    f"{at}: an integer parameter needs integer bounds, got {values!r}"
                )
            if kind is float and low <= 0:
                raise ParamsError(f"{at}: log-uniform needs low > 0, got {values!r}")
            dims.append(Dimension(key, kind, (kind(low), kind(high))))
        else:
            allowed = typing.get_args(kind) if typing.get_origin(kind) is typing.Literal else None
            if not values or len(set(map(repr, values))) != len(values):
                raise ParamsError(f"{at}: expected distinct choices, got {values!r}")
            if not all(v in allowed if allowed else type(v) is kind for v in values):
                expected = list(allowed) if allowed else kind.__name__
                raise ParamsError(f"{at}: choices must be {expected}, got {values!r}")
            dims.append(Dimension(key, object, tuple(values)))
    if not dims:
        raise ParamsError(f"{where}: empty; declare at least one parameter to tune")
    return dims


def check_against(dims: list[Dimension], base: AttGANTrainParams) -> None:
    """Every bound and choice builds valid train params on ``base`` (e.g. a known ``condition``,
    ``shortcut_layers`` below the layers): a bad space fails here, before any trial trains."""
    layers = {d.key: d for d in dims}.get("model.enc_layers")
    for d in dims:
        for value in d.values:
            flat = {d.key: value}
            if layers is not None and d.key == "model.shortcut_layers":
                # the clamp in suggest keeps high below a trial's layers; low must fit the fewest
                flat["model.enc_layers"] = layers.values[0 if value == d.values[0] else 1]
            try:
                apply(base, nested(flat), base.steps)
            except (ValueError, TypeError) as exc:
                raise ParamsError(
                    f"tune_attgan.space.{d.key}: {value!r} is not valid: {exc}"
                ) from None


def suggest(trial: optuna.Trial, dims: list[Dimension], base: AttGANTrainParams) -> dict[str, Any]:
    """The flat overrides one trial tries (``model.<name>`` keys for the architecture)."""
    out: dict[str, Any] = {}
    for d in dims:
        if d.kind is float:
            out[d.key] = trial.suggest_float(d.key, *d.values, log=True)
        elif d.kind is int:
            low, high = d.values
            if d.key == "model.shortcut_layers":  # fewer than the trial's layers
                layers = out.get("model.enc_layers", base.model.enc_layers)
                high = max(low, min(high, layers - 1))
            out[d.key] = trial.suggest_int(d.key, low, high)
        else:
            out[d.key] = trial.suggest_categorical(d.key, list(d.values))
    return out


def baseline_trial(base: AttGANTrainParams, dims: list[Dimension]) -> dict[str, Any]:
    """Optuna params of ``base`` itself (enqueued first, so the study includes the default)."""
    return {
        d.key: getattr(base.model if d.key.startswith("model.") else base, d.key.split(".")[-1])
        for d in dims
    }


def nested(flat: dict[str, Any]) -> dict[str, Any]:
    """Flat trial params as the tuned-params file's mapping (``model.x`` -> ``{model: {x}}``)."""
    out: dict[str, Any] = {}
    model: dict[str, Any] = {}
    for key, value in flat.items():
        if key.startswith("model."):
            model[key.removeprefix("model.")] = value
        else:
            out[key] = value
    if "enc_layers" in model:
        model["dec_layers"] = model["enc_layers"]
    if model:
        out["model"] = model
    return out


def apply(base: AttGANTrainParams, overrides: dict[str, Any], steps: int) -> AttGANTrainParams:
    """``base`` with a trial's nested overrides, trained for ``steps``."""
    model = dataclasses.replace(base.model, **overrides.get("model", {}))
    flat = {k: v for k, v in overrides.items() if k != "model"}
    return dataclasses.replace(base, model=model, steps=steps, **flat)


@dataclass(frozen=True)
class TrialData:
    """What every trial trains on and is scored on (uint8 tiles, attributes in [0, 1])."""

    train_images: np.ndarray
    train_attrs: np.ndarray
    val_images: np.ndarray
    val_attrs: np.ndarray
    reference: SignReference | None = None  # the val lots' meter regression (sign agreement)
    readings: np.ndarray | None = None  # meter readings of the training tiles (concept loss)
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
    direct = None if regressor is None else predict_mpa(regressor, images, space.eval.batch_size)
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
            shifted = predict_mpa(regressor, rec, space.eval.batch_size)
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


def predict_mpa(regressor: PeakStressRegressor, images: np.ndarray, batch_size: int) -> np.ndarray:
    """The regressor's MPa on uint8 tiles, on whatever device it sits (a trial with the feature
    loss moves it to the trainer's)."""
    device = next(regressor.parameters()).device
    regressor.eval()
    return in_batches(regressor.predict_mpa, to_model(images, device), batch_size).cpu().numpy()


BASELINE = "baseline"  # the user attr that marks train_attgan's own params


def choose(
    study: optuna.Study,
    psnr_tolerance_db: float,
    shift_tolerance_pct: float,
    agreement_tolerance: float = 0.0,
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
    guards = {PSNR: (psnr_tolerance_db, 1), SHIFT: (shift_tolerance_pct, -1)}
    guards[AGREEMENT] = (agreement_tolerance, 1)
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
