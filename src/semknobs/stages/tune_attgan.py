"""Stage ``tune_attgan``: a multi-objective Optuna study of the AttGAN (PSNR, concept control and
the regressor's reconstruction shift) on a validation fold (:mod:`semknobs.train.tune_attgan`);
writes the chosen params for ``train_attgan``.

Minutes per trial on a CPU, so ``tune_attgan.n_trials: 0`` (the default) leaves the committed
tuned file as it is; set it to N to run (or extend) the study to N trials. Every check of the
inputs (search space, meter readings, regressor, an existing study's objectives) runs before
the first trial trains.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import pandas as pd

from semknobs import tracking
from semknobs.attributes import AttributeScaler
from semknobs.config import from_mapping, load_params, section, to_mapping
from semknobs.data.dataset import TileSet, fit_scaler, load_tileset
from semknobs.data.schemas import read_lots
from semknobs.data.split import read_splits
from semknobs.errors import ParamsError
from semknobs.explain.gradient import KnobGradientParams
from semknobs.explain.measured import calibrated_readings, fit_from_files
from semknobs.explain.natural import MeterRegressionParams
from semknobs.meter import MeasureParams, MeterParams, readings_and_counts
from semknobs.models.regressor import PeakStressRegressor, predict
from semknobs.serving import regressor_model
from semknobs.stage import StageContext, StageResult, save_figure, write_json
from semknobs.train import tuning
from semknobs.train.attgan_params import AttGANTrainParams, TrainAttGANStageParams
from semknobs.train.attgan_space import baseline_trial, check_against, dimensions, nested
from semknobs.train.concept import MIN_COUNT_LOTS
from semknobs.train.sign_objective import AGREEMENT, SignReference, sign_reference
from semknobs.train.texture import MIN_TEXTURE_LOTS
from semknobs.train.tune_attgan import (
    BASELINE,
    CONTROL,
    TrialData,
    TuneAttGANParams,
    choose,
    objective_factory,
    objectives,
    study_name,
    study_summary,
)

NAME = "tune_attgan"
DEPS = ("tiles_dir", "lots", "splits", "measurements", "regressor_dir")


@dataclass(frozen=True)
class Params:
    tune: TuneAttGANParams
    base: AttGANTrainParams  # train_attgan.train: what the trials vary
    meter: MeterParams | None = None  # the measure stage's (the concept network learns from it)
    # the explain stage's: the sign-agreement objective compares what explain reports
    knob_gradient: KnobGradientParams = field(default_factory=KnobGradientParams)
    meter_regression: MeterRegressionParams = field(default_factory=MeterRegressionParams)


@dataclass(frozen=True)
class Paths:
    tiles_dir: Path
    lots: Path
    splits: Path
    out: Path = field(metadata={"help": "tuned params YAML to write"})
    reports: Path
    measurements: Path | None = field(
        default=None, metadata={"help": "the measure stage's readings (for the concept loss)"}
    )
    regressor_dir: Path | None = field(
        default=None,
        metadata={"help": "the trained regressor (the shift objective; the feature loss)"},
    )
    storage: str = field(
        default="optuna/attgan.journal",
        metadata={"help": "journal file, or an RDB URL shared by workers"},
    )
    study_name: str | None = field(
        default=None, metadata={"help": "default: semknobs-attgan-<hash of params and data>"}
    )


def load(params_file: Path, paths: Paths) -> Params:
    params = load_params(params_file)
    where = f"{params_file}: train_attgan"
    base = from_mapping(TrainAttGANStageParams, params.get("train_attgan", {}), where=where)
    explain = params.get("explain", {})
    return Params(
        section(TuneAttGANParams, params, NAME, params_file),
        base.train,
        section(MeasureParams, params, "measure", params_file).meter,
        from_mapping(
            KnobGradientParams,
            explain.get("knob_gradient", {}),
            where=f"{params_file}: explain.knob_gradient",
        ),
        from_mapping(
            MeterRegressionParams,
            explain.get("meter_regression", {}),
            where=f"{params_file}: explain.meter_regression",
        ),
    )


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

    dims = dimensions(space.space)
    check_against(dims, params.base)
    splits = read_splits(paths.splits)
    folds = splits.cv_folds(str(paths.splits))
    if not 0 <= space.val_fold < len(folds):
        raise ParamsError(
            f"tune_attgan.val_fold: {space.val_fold} is not a fold of {paths.splits} "
            f"(0..{len(folds) - 1})"
        )
    fit_lots, val_lots = folds[space.val_fold]
    tuned_keys = {d.key for d in dims}
    texture = params.base.lambda_texture > 0 or "lambda_texture" in tuned_keys
    if texture and len(fit_lots) < MIN_TEXTURE_LOTS:
        raise ParamsError(
            f"tune_attgan: the texture loss needs at least {MIN_TEXTURE_LOTS} fitting lots, "
            f"fold {space.val_fold} of {paths.splits} leaves {len(fit_lots)}; set "
            "train_attgan.train.lambda_texture: 0 and leave it out of tune_attgan.space"
        )
    concept = params.base.lambda_concept > 0 or "lambda_concept" in tuned_keys
    if concept and paths.measurements is None:
        raise ParamsError("tune_attgan: the concept loss needs --measurements (measure)")
    count = concept and (params.base.lambda_count > 0 or "lambda_count" in tuned_keys)
    if count and len(fit_lots) < MIN_COUNT_LOTS:
        raise ParamsError(
            f"tune_attgan: the particle-count read needs at least {MIN_COUNT_LOTS} fitting lots, "
            f"fold {space.val_fold} of {paths.splits} leaves {len(fit_lots)}; set "
            "train_attgan.train.lambda_count: 0 and leave it out of tune_attgan.space"
        )
    regressor = _regressor(params, paths, tuned_keys)
    labels = read_lots(paths.lots)
    stress_range = _stress_range(labels, paths.lots, splits.train)
    scaler = fit_scaler(paths.lots, fit_lots)
    train = load_tileset(
        tiles_dir=paths.tiles_dir, lots_csv=paths.lots, lots=fit_lots, scaler=scaler
    )
    val = load_tileset(tiles_dir=paths.tiles_dir, lots_csv=paths.lots, lots=val_lots, scaler=scaler)
    reference, notes = None, []
    if regressor is not None and paths.measurements is not None:
        reference = _sign_reference(params, paths, labels, fit_lots, val, scaler, regressor)
        if reference is None:
            notes.append(
                "no sign-agreement objective: no validation lot has "
                f"{params.meter_regression.min_tiles} tiles the meter reads fully "
                "(explain.meter_regression.min_tiles)"
            )
    names, directions = objectives(regressor is not None, reference is not None)
    inputs = (paths.tiles_dir, paths.lots, paths.splits, paths.measurements, paths.regressor_dir)
    # a retrained regressor scores the shift differently: a new study, as for new data
    key = tracking.data_version([p for p in inputs if p]).get("data.version", "")
    name = paths.study_name or study_name(space, params.base, key, names, reference)
    storage = tuning.make_storage(paths.storage)
    _check_existing(storage, name, paths.storage, names, directions)
    readings = counts = None
    if concept:
        readings, counts = readings_and_counts(paths.measurements, train.manifest, count)
    data = TrialData(
        train_images=train.images,
        train_attrs=train.attrs,
        val_images=val.images,
        val_attrs=val.attrs,
        reference=reference,
        readings=readings,
        counts=counts,
        lots=train.manifest["lot"].to_numpy(),
        meter=params.meter,
    )

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study = tuning.create_study(
            storage,
            name,
            metric_names=names,
            directions=directions,
            sampler=optuna.samplers.TPESampler(seed=space.seed),
        )
        _enqueue_baseline(study, baseline_trial(params.base, dims))
    # a baseline re-queued after a killed run runs even when n_trials is reached
    waiting = study.get_trials(deepcopy=False, states=[optuna.trial.TrialState.WAITING])
    remaining = max(space.n_trials - tuning.n_finished(study), int(bool(waiting)))
    if remaining > 0:
        trials = tuning.TrialTracking(
            stage=NAME,
            study_name=name,
            tracking_uri=tracking.configure() if ctx.run_id else None,
            experiment_id=ctx.experiment_id,
            parent_run_id=ctx.run_id,
            execution=tracking.execution_id(),
        )
        objective = objective_factory(
            space=space,
            dims=dims,
            base=params.base,
            data=data,
            regressor=regressor,
            stress_range=stress_range,
            tracking=trials,
        )
        study.optimize(objective, n_trials=remaining, show_progress_bar=True)
    chosen = choose(
        study, space.psnr_tolerance_db, space.shift_tolerance_pct, space.agreement_tolerance
    )
    overrides = nested(chosen.params)
    values = dict(zip(names, chosen.values, strict=True))
    about = f"study {name!r}, trial {chosen.number}: " + ", ".join(
        f"{k} {v:.3g}" for k, v in values.items()
    )
    summary = study_summary(study, chosen)
    write_json(
        reports / "study.json", summary | {"overrides": overrides, "space": to_mapping(space)}
    )
    _plot_fronts(study, names, reports)
    tuning.write_tuned(paths.out, overrides, written_by=NAME, about=about)  # last: all or nothing
    metrics = {f"tune/chosen_{k.split('/')[-1]}": v for k, v in values.items()}
    return StageResult(
        metrics,
        {"figures": reports},
        [*notes, f"chose trial {chosen.number} ({about}); wrote {paths.out}"],
    )


def _plot_fronts(study: optuna.Study, names: list[str], reports: Path) -> None:
    """``pareto_front.png`` over the first three objectives (Optuna draws at most three) and,
    with the sign agreement, ``pareto_front_agreement.png``: control against agreement. Optuna
    marks the trials on the study's front over every objective, so a marked point may look
    dominated on the plotted axes."""
    from optuna.visualization.matplotlib import plot_pareto_front

    plots = {"pareto_front.png": names[:3]}
    if AGREEMENT in names:
        plots["pareto_front_agreement.png"] = [CONTROL, AGREEMENT]
    for file, shown in plots.items():
        index = [names.index(k) for k in shown]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            axes = plot_pareto_front(
                study,
                targets=lambda t, index=index: tuple(t.values[i] for i in index),
                target_names=shown,
            )
        save_figure(axes.figure, reports / file)


def _regressor(params: Params, paths: Paths, tuned_keys: set[str]) -> PeakStressRegressor | None:
    """The trained regressor of the shift objective (and the feature loss), checked against the
    AttGAN's tiles; None without ``--regressor-dir``, which the feature loss refuses."""
    if paths.regressor_dir is None:
        if params.base.lambda_regressor > 0 or "lambda_regressor" in tuned_keys:
            raise ParamsError("tune_attgan: lambda_regressor > 0 needs --regressor-dir")
        return None
    regressor, _ = regressor_model.load(paths.regressor_dir)
    if regressor.cfg.img_size != params.base.model.img_size:
        raise ParamsError(
            f"tune_attgan: the regressor in {paths.regressor_dir} reads "
            f"{regressor.cfg.img_size}-px tiles, the AttGAN makes "
            f"{params.base.model.img_size}-px ones (train_attgan.train.model.img_size)"
        )
    return regressor


def _sign_reference(
    params: Params,
    paths: Paths,
    labels: pd.DataFrame,
    fit_lots: list[str],
    val: TileSet,
    scaler: AttributeScaler,
    regressor: PeakStressRegressor,
) -> SignReference | None:
    """The validation lots' meter regression (the regressor on all their tiles against the
    meter's readings, calibrated on the fitting lots' labels as ``explain`` calibrates on the
    training lots'), and which of their tiles each trial's knob gradient reads."""
    calib = fit_from_files(
        paths.measurements, labels, fit_lots, scaler, params.meter or MeterParams()
    )
    return sign_reference(
        predict(regressor, val.images, params.tune.eval.batch_size),
        calibrated_readings(paths.measurements, val.manifest, calib),
        val.manifest["lot"].to_numpy(),
        tiles_per_lot=params.tune.agreement_tiles,
        knob_gradient=params.knob_gradient,
        meter_regression=params.meter_regression,
        seed=params.tune.seed,
    )


def _stress_range(labels: pd.DataFrame, lots_csv: Path, train_lots: list[str]) -> float:
    """The training lots' peak-stress range (``labels`` read from ``lots_csv``), which only
    scales the shift (a constant), as in ``explain``; NaN or 0 is refused."""
    stress = labels.loc[labels["lot"].isin(train_lots), "peak_stress"]
    value = float(stress.max() - stress.min())
    if not value > 0:
        raise ParamsError(
            f"tune_attgan: the training lots' peak_stress in {lots_csv} has no range "
            f"({value}); the shift objective needs one"
        )
    return value


def _enqueue_baseline(study: optuna.Study, params: dict[str, Any]) -> None:
    """Queue ``train_attgan``'s own params (marked as the baseline) unless a baseline trial is
    complete or already waiting: a run killed during the baseline runs it again."""
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.WAITING)
    if not any(t.user_attrs.get(BASELINE) for t in study.get_trials(states=states)):
        study.enqueue_trial(params, user_attrs={BASELINE: True})


def _check_existing(
    storage: optuna.storages.BaseStorage,
    name: str,
    shown: str,
    names: list[str],
    directions: list[str],
) -> None:
    """An existing study of other objectives (e.g. an explicit ``--study-name`` scored before
    ``--regressor-dir``) cannot be extended: say so before any trial trains."""
    if name not in optuna.get_all_study_names(storage):
        return
    old = optuna.load_study(study_name=name, storage=storage)
    old_directions = [d.name.lower() for d in old.directions]
    if list(old.metric_names or []) != names or old_directions != directions:
        raise ParamsError(
            f"tune_attgan: study {name!r} in {shown} scores {old.metric_names} "
            f"({old_directions}), this run {names}; start a new study (--study-name or "
            "--storage), or delete the old one"
        )
