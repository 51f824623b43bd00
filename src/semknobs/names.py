"""Every name the project shares, defined once: registered models, the tracking store, the
experiment, the telemetry switches.

The registered model names are part of the project's contract with downstream users
(``models:/semknobs-regressor@champion``), so they live in code, not in ``params.yaml``.
"""

from __future__ import annotations

import os

# Registered models, by model kind (the ``kind`` of a model folder).
MODEL_NAMES: dict[str, str] = {
    "attgan": "semknobs-attgan",
    "regressor": "semknobs-regressor",
    "explainer": "semknobs-explainer",
}
CANDIDATE = "candidate"  # the alias a pipeline run registers
CHAMPION = "champion"  # the alias promotion moves
EXPLAINER_URI = f"models:/{MODEL_NAMES['explainer']}@{CHAMPION}"

# MLflow: MLflow 3 refuses the plain file store, so the default is sqlite; MLFLOW_TRACKING_URI
# overrides it (e.g. a team server).
TRACKING_DB = "mlruns/mlflow.db"
DEFAULT_TRACKING_URI = f"sqlite:///{TRACKING_DB}"
EXPERIMENT = "semknobs"

# Telemetry of the tools we run, off everywhere (the Makefile and .ci/run export the same).
TELEMETRY_OFF: dict[str, str] = {
    "DVC_NO_ANALYTICS": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "GX_ANALYTICS_ENABLED": "false",
}


def telemetry_off() -> None:
    """Switch the tools' telemetry off for this process and its children."""
    os.environ.update(TELEMETRY_OFF)


def model_name(kind: str) -> str:
    try:
        return MODEL_NAMES[kind]
    except KeyError:
        raise KeyError(
            f"no registered model for kind {kind!r} (known: {sorted(MODEL_NAMES)})"
        ) from None
