"""The ``register`` stage's work: new registry versions of the AttGAN, the regressor and the
explainer bundle, alias ``candidate``, each traceable to the run that produced it.

The training stages *log* their models (MLflow LoggedModels linked to the training run) and write
a reference (``logged_model.json``); registering them here makes the registry's version links
point at the training runs. Every version carries:

* ``semknobs.run_id`` / ``semknobs.model_id`` and the run's ``git.*``, ``data.version`` and
  ``semknobs.execution`` tags (see :func:`semknobs.registry.register`);
* ``semknobs.register_execution``: the pipeline execution that registered it;
* ``metric.<key>`` for every metric of its metrics file: the promotion gates read these;
* a description with its key metrics.

If a logged model is missing from the tracking store (a fresh store, models restored with
``dvc pull``), the folder is logged again in the ``register`` run and the version says so
(``semknobs.relogged = true``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from semknobs import registry
from semknobs.errors import ModelError

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
    alias: str = "candidate"
    names: dict[str, str] = field(
        default_factory=lambda: {
            "attgan": "semknobs-attgan",
            "regressor": "semknobs-regressor",
            "explainer": "semknobs-explainer",
        }
    )


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
    return registry.log_model(model_dir, name=kind, kind=kind), True


def register_models(
    *,
    params: RegisterParams,
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
            registered_name=params.names[kind],
            alias=params.alias,
            tags=tags,
            description=describe(kind, metrics.get(kind, {}), descriptions[kind]),
        )
    ref = registry.log_model(model_dirs["explainer"], name="explainer", kind="explainer")
    tags = {
        **metric_tags(metrics.get("explainer", {})),
        "semknobs.register_execution": execution,
    }
    for kind in ("attgan", "regressor"):
        tags[f"semknobs.bundles.{kind}"] = f"{params.names[kind]}/{versions[kind].version}"
    versions["explainer"] = registry.register(
        ref,
        registered_name=params.names["explainer"],
        alias=params.alias,
        tags=tags,
        description=describe("explainer", metrics.get("explainer", {}), descriptions["explainer"]),
    )
    return versions
