"""Stage ``tune_attgan``: a multi-objective Optuna study of the AttGAN (PSNR vs concept control)
on a validation fold (:mod:`semknobs.train.tune_attgan`); writes the chosen params for
``train_attgan``.

Minutes per trial on a CPU, so ``tune_attgan.n_trials: 0`` (the default) leaves the committed
tuned file as it is; set it to N to run (or extend) the study to N trials.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna

from semknobs import tracking
from semknobs.config import from_mapping, load_params, load_section, to_mapping
from semknobs.data.dataset import fit_scaler, load_tileset
from semknobs.data.split import read_splits
from semknobs.errors import ParamsError
from semknobs.stage import StageContext, StageResult, save_figure, write_json
from semknobs.train import tuning
from semknobs.train.attgan import AttGANTrainParams, TrainAttGANStageParams
from semknobs.train.tune_attgan import (
    METRICS,
    TuneAttGANParams,
    baseline_trial,
    choose,
    objective_factory,
    study_summary,
    tuned_overrides,
)

NAME = "tune_attgan"
DEPS = ("tiles_dir", "lots", "splits")


@dataclass(frozen=True)
class Params:
    tune: TuneAttGANParams
    base: AttGANTrainParams  # train_attgan.train: what the trials vary


@dataclass(frozen=True)
class Paths:
    tiles_dir: Path
    lots: Path
    splits: Path
    out: Path = field(metadata={"help": "tuned params YAML to write"})
    reports: Path
    storage: str = field(
        default="optuna/attgan.journal",
        metadata={"help": "journal file, or an RDB URL shared by workers"},
    )
    study_name: str = "semknobs-attgan"


def load(params_file: Path, paths: Paths) -> Params:
    section = load_params(params_file).get("train_attgan", {})
    base = from_mapping(TrainAttGANStageParams, section, where=f"{params_file}: train_attgan")
    return Params(load_section(TuneAttGANParams, NAME, params_file), base.train)


def logged_params(params: Params) -> Any:
    return params.tune


def run(params: Params, paths: Paths, ctx: StageContext | None = None) -> StageResult:
    ctx = ctx or StageContext()
    space = params.tune
    reports = Path(paths.reports)
    if space.n_trials == 0:
        if not Path(paths.out).exists():
            tuning.write_untuned(paths.out, NAME)
        write_json(reports / "study.json", {"n_trials": 0, "note": "tuning is off (n_trials: 0)"})
        return StageResult({}, {}, [f"n_trials is 0: keeping {paths.out} as it is (no tuning)"])

    # the trials would need the meter readings, the trained regressor and the lot ids too
    needs = [
        k
        for k in ("lambda_concept", "lambda_regressor", "lambda_texture")
        if getattr(params.base, k) > 0
    ]
    if needs:
        raise ParamsError(
            f"tune_attgan: tuning the concept-loss design (train_attgan.train.{needs[0]} > 0) "
            "is not supported yet; set tune_attgan.n_trials: 0, or tune the critic-head design "
            "with " + " ".join(f"-S train_attgan.train.{k}=0" for k in needs)
        )
    splits = read_splits(paths.splits)
    fit_lots, val_lots = splits.cv_folds(str(paths.splits))[space.val_fold]
    scaler = fit_scaler(paths.lots, fit_lots)
    train = load_tileset(
        tiles_dir=paths.tiles_dir, lots_csv=paths.lots, lots=fit_lots, scaler=scaler
    )
    val = load_tileset(tiles_dir=paths.tiles_dir, lots_csv=paths.lots, lots=val_lots, scaler=scaler)

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    study = tuning.create_study(
        paths.storage,
        paths.study_name,
        metric_names=METRICS,
        directions=["maximize", "maximize"],
        sampler=optuna.samplers.TPESampler(seed=space.seed),
    )
    if not study.trials:  # always score train_attgan's own params first
        study.enqueue_trial(baseline_trial(params.base))
    remaining = space.n_trials - len([t for t in study.trials if t.state.is_finished()])
    if remaining > 0:
        trials = tuning.TrialTracking(
            stage=NAME,
            study_name=paths.study_name,
            tracking_uri=tracking.configure() if ctx.run_id else None,
            experiment_id=ctx.experiment_id,
            parent_run_id=ctx.run_id,
            execution=tracking.execution_id(),
        )
        objective = objective_factory(
            space=space,
            base=params.base,
            train=(train.images, train.attrs),
            val=(val.images, val.attrs),
            tracking=trials,
        )
        study.optimize(objective, n_trials=remaining)
    chosen = choose(study, space.psnr_floor)
    overrides = tuned_overrides(chosen)
    about = (
        f"study {paths.study_name!r}, trial {chosen.number}: val/psnr {chosen.values[0]:.2f} dB, "
        f"val/mean_control {chosen.values[1]:.3f}"
    )
    tuning.write_tuned(paths.out, overrides, written_by=NAME, about=about)
    summary = study_summary(study, chosen)
    write_json(
        reports / "study.json", summary | {"overrides": overrides, "space": to_mapping(space)}
    )
    from optuna.visualization.matplotlib import plot_pareto_front

    axes = plot_pareto_front(study, target_names=["val/psnr (dB)", "val/mean_control"])
    save_figure(axes.figure, reports / "pareto_front.png")
    metrics = {"tune/chosen_psnr": chosen.values[0], "tune/chosen_control": chosen.values[1]}
    return StageResult(
        metrics, {"figures": reports}, [f"chose trial {chosen.number}; wrote {paths.out}"]
    )
