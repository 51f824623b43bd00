"""semknobs: concept knobs that explain deep regressors of SEM micrographs."""

import os as _os

from semknobs.names import TELEMETRY_OFF as _TELEMETRY_OFF

# Telemetry off before any tool is imported (MLflow starts its telemetry on import).
for _key, _value in _TELEMETRY_OFF.items():
    _os.environ.setdefault(_key, _value)

__version__ = "0.1.0"
