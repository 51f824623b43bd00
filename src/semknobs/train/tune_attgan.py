"""Multi-objective tuning of the AttGAN: reconstruction PSNR vs mean concept control.

Each trial trains a short AttGAN on the training folds except ``val_fold`` and scores it on the
tiles of ``val_fold`` (the test lots are never touched). The two objectives are ``val/psnr`` and
``val/mean_control`` (mean over attributes of the meter-measured control rho); both maximised.
The chosen trial is the Pareto-optimal one with the best mean control among those whose PSNR
reaches ``psnr_floor`` (else the best PSNR); its params are written to a YAML file that
``train_attgan`` reads (``--tuned``), so nobody copies numbers by hand.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
import torch

from semknobs.evaluation.attgan import (
    AttGANEvalParams,
    control_matrix,
    control_metrics,
    reconstruction_metrics,
)
from semknobs.evaluation.samples import generate
from semknobs.train import tuning
from semknobs.train.attgan import AttGANTrainParams, train_attgan

METRICS = ["val/psnr", "val/mean_control"]


@dataclass(frozen=True)
class AttGANSearchSpace:
    """Declared in ``params.yaml`` only (``tune_attgan.space``): no defaults here."""

    lambda_rec: tuple[float, float]  # log-uniform
    lambda_att_g: tuple[float, float]  # log-uniform
    lr: tuple[float, float]  # log-uniform
    enc_layers: tuple[int, int]
    shortcut_layers: tuple[int, int]


@dataclass(frozen=True)
class TuneAttGANParams:
    """The ``tune_attgan`` params section."""

    space: AttGANSearchSpace
    n_trials: int = 0
    trial_steps: int = 1000
    seed: int = 0
    val_fold: int = 0
    psnr_floor: float = 22.0
    eval: AttGANEvalParams = field(default_factory=lambda: AttGANEvalParams(n_tiles=48, points=4))


def suggest(trial: optuna.Trial, space: AttGANSearchSpace) -> dict[str, Any]:
    """The overrides one trial tries (the same shape as the tuned-params file)."""
    layers = trial.suggest_int("enc_layers", *space.enc_layers)
    shortcut_hi = min(space.shortcut_layers[1], layers - 1)
    return {
        "lambda_rec": trial.suggest_float("lambda_rec", *space.lambda_rec, log=True),
        "lambda_att_g": trial.suggest_float("lambda_att_g", *space.lambda_att_g, log=True),
        "lr": trial.suggest_float("lr", *space.lr, log=True),
        "model": {
            "enc_layers": layers,
            "dec_layers": layers,
            "shortcut_layers": trial.suggest_int(
                "shortcut_layers", space.shortcut_layers[0], shortcut_hi
            ),
        },
    }


def baseline_trial(base: AttGANTrainParams) -> dict[str, Any]:
    """Optuna params of ``base`` itself (enqueued first, so the study includes the default)."""
    return {
        "enc_layers": base.model.enc_layers,
        "lambda_rec": base.lambda_rec,
        "lambda_att_g": base.lambda_att_g,
        "lr": base.lr,
        "shortcut_layers": base.model.shortcut_layers,
    }


def apply(base: AttGANTrainParams, overrides: dict[str, Any], steps: int) -> AttGANTrainParams:
    model = dataclasses.replace(base.model, **overrides.get("model", {}))
    flat = {k: v for k, v in overrides.items() if k != "model"}
    return dataclasses.replace(base, model=model, steps=steps, **flat)


def objective_factory(
    *,
    space: TuneAttGANParams,
    base: AttGANTrainParams,
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    tracking: tuning.TrialTracking | None = None,
) -> Callable[[optuna.Trial], tuple[float, float]]:
    rng = np.random.default_rng(space.seed)
    pick = rng.choice(len(val[0]), min(space.eval.n_tiles, len(val[0])), replace=False)
    tracked = tracking or tuning.TrialTracking("tune_attgan", "")

    def objective(trial: optuna.Trial) -> tuple[float, float]:
        overrides = suggest(trial, space.space)
        with tuning.trial_run(tracked, trial, overrides) as run:
            metrics = _score(overrides)
            for key, value in metrics.items():
                trial.set_user_attr(key, value)
            if run is not None:
                from semknobs import tracking as stage_tracking

                stage_tracking.log_metrics(metrics)
        return metrics["val/psnr"], metrics["val/mean_control"]

    def _score(overrides: dict[str, Any]) -> dict[str, float]:
        params = apply(base, overrides, space.trial_steps)
        trainer = train_attgan(
            params=params,
            images=torch.from_numpy(train[0]),
            attrs=torch.from_numpy(train[1]),
            progress=False,
        )
        images, attrs = val[0][pick], val[1][pick]
        rec = reconstruction_metrics(images, generate(trainer.generator, images, attrs, attrs))
        control = control_metrics(control_matrix(trainer.generator, images, attrs, space.eval)[0])
        metrics = {
            "val/psnr": rec["test/psnr"],
            "val/ssim": rec["test/ssim"],
            **{k.replace("control/", "val/control_"): v for k, v in control.items()},
        }
        metrics["val/mean_control"] = control["control/mean_spearman"]
        return metrics

    return objective


def choose(study: optuna.Study, psnr_floor: float) -> optuna.trial.FrozenTrial:
    front = study.best_trials
    good = [t for t in front if t.values[0] >= psnr_floor]
    if good:
        return max(good, key=lambda t: t.values[1])
    return max(front, key=lambda t: t.values[0])


def tuned_overrides(trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    p = trial.params
    return {
        "lambda_rec": float(p["lambda_rec"]),
        "lambda_att_g": float(p["lambda_att_g"]),
        "lr": float(p["lr"]),
        "model": {
            "enc_layers": int(p["enc_layers"]),
            "dec_layers": int(p["enc_layers"]),
            "shortcut_layers": int(p["shortcut_layers"]),
        },
    }


def study_summary(study: optuna.Study, chosen: optuna.trial.FrozenTrial) -> dict[str, Any]:
    return {
        "chosen_trial": chosen.number,
        "values": {"val/psnr": chosen.values[0], "val/mean_control": chosen.values[1]},
        "pareto_trials": [t.number for t in study.best_trials],
        "n_trials": len(study.trials),
        "states": tuning.state_counts(study),
        "trials": tuning.trial_table(study),
    }
