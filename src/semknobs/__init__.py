"""semknobs: concept knobs that explain deep regressors of SEM micrographs."""

import os as _os

# Telemetry off before any tool is imported (MLflow starts its telemetry on import).
for _key, _value in {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DVC_NO_ANALYTICS": "1",
    "GX_ANALYTICS_ENABLED": "false",
}.items():
    _os.environ.setdefault(_key, _value)

__version__ = "0.1.0"
