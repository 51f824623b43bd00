"""Stage ``register``: build the explainer bundle and register the AttGAN, the regressor and
the explainer as new versions (alias ``register.alias``, default ``candidate``) in the MLflow
model registry.

The training stages *log* their models (MLflow LoggedModels linked to the training run, tagged
with their folder's digest); this stage finds them by the digest of the model folders it is given
(:func:`semknobs.registry.find_logged`), so registering them here makes the registry's version
links point at the training runs, and no DVC out holds an MLflow id. Every version carries:

* ``semknobs.run_id`` / ``semknobs.model_id`` and the run's ``git.*``, ``data.version`` and
  ``semknobs.execution`` tags (see :func:`semknobs.registry.register`);
* ``semknobs.register_execution``: the pipeline execution that registered it;
* ``metric.<key>`` for every metric of its metrics files: the promotion gates read these;
* a description with its key metrics.

If no logged model of the folder is in the tracking store (a fresh store, models restored with
``dvc pull``), the folder is logged again in this run and the version says so
(``semknobs.relogged = true``). ``out`` (the versions registered, with their run ids) is a record
of this run, not a DVC out: version numbers and run ids depend on the store, not the inputs.
The bundle carries the ``explain`` stage's search and knob-gradient settings, its meter-read
knob gains (for the gain-corrected lot gradient) and the ``tile`` stage's tiling, so
``semknobs explain`` and the served explainer reproduce the stage's numbers. It also keeps the
AttGAN's region misses from ``evaluate_attgan`` (:mod:`semknobs.explain.edit_texture`), which
they report beside every explanation, and the explainer's description names the knobs that the
knob read or the region misses flag. Promotion to ``champion`` is a separate, gated step:
``semknobs promote``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from semknobs import registry, tracking
from semknobs.attributes import ATTRIBUTES, AttributeScaler
from semknobs.config import from_mapping, load_params, section
from semknobs.data.schemas import read_lots
from semknobs.data.split import read_splits
from semknobs.data.tiles import TileParams
from semknobs.explain.counterfactual import CounterfactualParams, search_params_from
from semknobs.explain.edit_texture import (
    caveat_summary,
    checks,
    read_metrics_file,
    region_metrics,
)
from semknobs.explain.folder import save_explainer_dir
from semknobs.explain.gradient import KnobGradientParams
from semknobs.explain.limits import SearchLimits
from semknobs.explain.lot_gradient import GradientSettings
from semknobs.explain.measured import CorrectedParams, fit_from_files
from semknobs.explain.natural import MeterRegressionParams
from semknobs.meter import MeasureParams, MeterParams
from semknobs.model_folder import read_config
from semknobs.names import CANDIDATE, CHAMPION, MODEL_NAMES
from semknobs.serving import attgan_model, explainer_model, regressor_model
from semknobs.stage import StageContext, StageResult, write_json

NAME = "register"
DEPS = ("attgan_dir", "regressor_dir", "lots", "splits")
SPECS = {"attgan": attgan_model.SPEC, "regressor": regressor_model.SPEC}
KEY_METRICS = {
    "attgan": ("test/psnr", "control/mean_spearman", "control/max_leakage"),
    "regressor": ("test/lot_r2", "test/lot_rmse", "baseline_rf/lot_r2"),
    "explainer": (
        "knob_gradient/er/cosine_median",
        "knob_gradient/er/centred_cosine",
        "counterfactual/validity_model",
        "counterfactual/validity_law",
        "recon/shift_pct_range",
    ),
}


@dataclass(frozen=True)
class RegisterParams:
    alias: str = CANDIDATE  # the alias the new versions get

    def __post_init__(self) -> None:
        # checked before anything is registered (MLflow's own rules, and the gates' alias)
        if not re.fullmatch(r"[\w-]{1,255}", self.alias):
            raise ValueError(
                f"register.alias must be 1-255 letters, digits, '_' or '-', got {self.alias!r}"
            )
        if re.fullmatch(r"[vV]\d+", self.alias) or self.alias.lower() == "latest":
            raise ValueError(
                f"register.alias cannot be {self.alias!r}: MLflow reserves 'latest' and v<number>"
            )
        if self.alias.lower() == CHAMPION:
            raise ValueError(
                f"register.alias cannot be {self.alias!r}: only `semknobs promote` moves "
                f"@{CHAMPION}, behind the quality gates"
            )


@dataclass(frozen=True)
class Params:
    register: RegisterParams
    counterfactual: CounterfactualParams  # explain.counterfactual: the bundle's search defaults
    tile: TileParams  # how the bundle tiles whole scans
    limits: SearchLimits = field(default_factory=SearchLimits)  # explain.limits
    meter: MeterParams = field(default_factory=MeterParams)  # measure.meter: reads the edits
    knob_gradient: KnobGradientParams = field(default_factory=KnobGradientParams)  # explain.
    corrected: CorrectedParams = field(default_factory=CorrectedParams)  # explain.corrected
    natural: MeterRegressionParams = field(default_factory=MeterRegressionParams)  # explain.


@dataclass(frozen=True)
class Paths:
    attgan_dir: Path
    regressor_dir: Path
    attgan_metrics: list[Path] = field(metadata={"help": "evaluation + training metrics"})
    regressor_metrics: Path
    explain_metrics: Path
    lots: Path
    splits: Path
    explainer_dir: Path
    out: Path = field(metadata={"help": "registered versions (JSON)"})
    measurements: Path | None = field(
        default=None, metadata={"help": "the measure stage's readings (calibrate the meter)"}
    )


def load(params_file: Path, paths: Paths) -> Params:
    raw = load_params(params_file)
    explain = raw.get("explain") or {}

    def part(cls, key: str):  # a subsection of ``explain`` (defaults where absent)
        return from_mapping(cls, explain.get(key), f"{params_file}: explain.{key}")

    return Params(
        register=section(RegisterParams, raw, NAME, params_file),
        counterfactual=search_params_from(raw, str(params_file)),
        tile=section(TileParams, raw, "tile", params_file),
        limits=part(SearchLimits, "limits"),
        meter=section(MeasureParams, raw, "measure", params_file).meter,
        knob_gradient=part(KnobGradientParams, "knob_gradient"),
        corrected=part(CorrectedParams, "corrected"),
        natural=part(MeterRegressionParams, "meter_regression"),
    )


def logged_params(params: Params) -> dict[str, Any]:
    return {
        "register": params.register,
        "explain.counterfactual": params.counterfactual,
        "explain.limits": params.limits,
        "explain.knob_gradient": params.knob_gradient,
        "explain.corrected": params.corrected,
        "explain.meter_regression": params.natural,
    }


def run(params: Params, paths: Paths, ctx: StageContext | None = None) -> StageResult:
    labels = read_lots(paths.lots)
    train_lots = list(read_splits(paths.splits).train)
    train = labels[labels["lot"].isin(train_lots)]
    stress_range = float(train["peak_stress"].max() - train["peak_stress"].min())
    metrics = {
        "attgan": {k: v for p in paths.attgan_metrics for k, v in read_metrics_file(p).items()},
        "regressor": read_metrics_file(paths.regressor_metrics),
        "explainer": read_metrics_file(paths.explain_metrics),
    }
    experiment = (ctx.experiment_id if ctx else None) or tracking.ensure_experiment()
    logged = {
        kind: registry.find_logged(folder, experiment)
        for kind, folder in (("attgan", paths.attgan_dir), ("regressor", paths.regressor_dir))
    }
    meter = None
    if paths.measurements is not None:
        gan = read_config(paths.attgan_dir)
        meter = fit_from_files(
            paths.measurements,
            labels,
            train_lots,
            AttributeScaler.from_dict(gan["scaler"]),
            params.meter,
        )
    bundled = {**metrics["explainer"], **region_metrics(metrics["attgan"])}
    caveats = caveat_summary(checks(bundled))
    save_explainer_dir(
        paths.explainer_dir,
        attgan_dir=paths.attgan_dir,
        regressor_dir=paths.regressor_dir,
        stress_range=stress_range,
        counterfactual=params.counterfactual,
        tile={k: v for k, v in asdict(params.tile).items() if k != "n_jobs"},
        metrics=bundled,
        limits=params.limits,
        meter=meter,
        gradient=GradientSettings(
            params.knob_gradient, params.corrected, study_gain(metrics["explainer"])
        ),
        natural=params.natural,
    )
    size = read_config(paths.explainer_dir)["img_size"]
    versions = register_models(
        alias=params.register.alias,
        model_dirs={
            "attgan": paths.attgan_dir,
            "regressor": paths.regressor_dir,
            "explainer": paths.explainer_dir,
        },
        logged=logged,
        metrics=metrics,
        descriptions={
            "attgan": f"AttGAN knob editor for {size}-px SEM tiles",
            "regressor": f"Peak-stress regressor for {size}-px SEM tiles",
            "explainer": "AttGAN + regressor + Eq. 2 knob search"
            + (f" (knob caveats: {caveats})" if caveats else ""),
        },
        execution=tracking.execution_id(),
    )
    summary = {
        kind: {
            "name": v.name,
            "version": str(v.version),
            "alias": params.register.alias,
            "uri": f"models:/{v.name}/{v.version}",
            "run_id": v.run_id,
        }
        for kind, v in versions.items()
    }
    write_json(paths.out, {"register_run": ctx.run_id if ctx else None, "versions": summary})
    lines = [
        f"{v['name']} v{v['version']} @{v['alias']} (run {v['run_id']})" for v in summary.values()
    ]
    lines.append("promote with `semknobs promote --all` (gates in params.yaml: promote)")
    return StageResult({}, {}, lines)


def study_gain(explain_metrics: Mapping[str, Any]) -> tuple[float, ...] | None:
    """The ``explain`` stage's meter-read knob gains (``corrected_gradient/gain_<a>``), or
    None when it measured none (no meter readings, or a knob it could not read)."""
    gains = [explain_metrics.get(f"corrected_gradient/gain_{a}") for a in ATTRIBUTES]
    if not all(isinstance(g, int | float) and math.isfinite(g) for g in gains):
        return None
    return tuple(float(g) for g in gains)


def metric_tags(metrics: Mapping[str, Any]) -> dict[str, str]:
    """``metric.<key>`` = value for every numeric metric (NaN/None left out)."""
    tags = {}
    for key, value in metrics.items():
        if isinstance(value, (int, float)) and value == value:  # not NaN
            tags[f"metric.{key}"] = repr(float(value))
    return tags


def describe(kind: str, metrics: Mapping[str, Any], what: str) -> str:
    shown = [f"{k} = {metrics[k]:.4g}" for k in KEY_METRICS[kind] if metrics.get(k) is not None]
    return f"{what}; " + ", ".join(shown) if shown else what


def _ensure_logged(
    ref: registry.LoggedModelRef | None, model_dir: Path, kind: str
) -> tuple[registry.LoggedModelRef, bool]:
    """``ref`` if its logged model is in the store, else the folder logged in the active run."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    if ref is not None:
        try:
            MlflowClient().get_logged_model(ref.model_id)
            return ref, False
        except MlflowException:
            print(f"register: {ref.model_uri} is not in this tracking store; logging {model_dir}")
    else:
        print(f"register: no logged model of {model_dir} in this tracking store; logging it")
    return registry.log_model(model_dir, name=kind, spec=SPECS[kind]), True


def register_models(
    *,
    alias: str,
    model_dirs: Mapping[str, Path],
    logged: Mapping[str, registry.LoggedModelRef | None],
    metrics: Mapping[str, Mapping[str, Any]],
    descriptions: Mapping[str, str],
    execution: str,
) -> dict[str, Any]:
    """Register the ``attgan`` and ``regressor`` logged models and log + register the
    ``explainer`` bundle (in the active run); returns ``{kind: ModelVersion}``.

    ``model_dirs``/``metrics``/``descriptions`` are keyed by kind; ``logged`` holds the
    training stages' references (None: log the folder here).
    """
    from semknobs.errors import ModelError

    missing = {"attgan", "regressor", "explainer"} - set(model_dirs)
    if missing:
        raise ModelError(f"register needs model folders for {sorted(missing)}")
    versions: dict[str, Any] = {}
    for kind in ("attgan", "regressor"):
        ref, relogged = _ensure_logged(logged.get(kind), Path(model_dirs[kind]), kind)
        tags = {**metric_tags(metrics.get(kind, {})), "semknobs.register_execution": execution}
        if relogged:
            tags["semknobs.relogged"] = "true"
        versions[kind] = registry.register(
            ref,
            registered_name=MODEL_NAMES[kind],
            alias=alias,
            tags=tags,
            description=describe(kind, metrics.get(kind, {}), descriptions[kind]),
        )
    ref = registry.log_model(model_dirs["explainer"], name="explainer", spec=explainer_model.SPEC)
    tags = {
        **metric_tags(metrics.get("explainer", {})),
        "semknobs.register_execution": execution,
    }
    for kind in ("attgan", "regressor"):
        tags[f"semknobs.bundles.{kind}"] = f"{MODEL_NAMES[kind]}/{versions[kind].version}"
    versions["explainer"] = registry.register(
        ref,
        registered_name=MODEL_NAMES["explainer"],
        alias=alias,
        tags=tags,
        description=describe("explainer", metrics.get("explainer", {}), descriptions["explainer"]),
    )
    return versions
