"""What every stage's ``run`` returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class StageResult:
    """Metrics (already written to the stage's metrics file), the folders to log to MLflow
    (artifact path -> local folder) and the lines the script prints at the end."""

    metrics: dict[str, float]
    artifacts: dict[str, Path] = field(default_factory=dict)
    summary: list[str] = field(default_factory=list)
