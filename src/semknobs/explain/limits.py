"""What one explanation request may ask (``explain.limits`` in params.yaml), checked before any
work: the served explainer, ``semknobs explain`` and the bundle refuse anything outside, naming
every setting at fault."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from semknobs.explain.counterfactual import OPTIMIZERS, CounterfactualParams

TARGETS = ("higher", "lower")
_WHOLE = ("steps", "restarts", "p", "seed")
_REAL = ("lam", "delta", "lr", "first_step", "value", "margin", "restart_spread", "tolerance")


@dataclass(frozen=True)
class SearchLimits:
    """What one explanation request may ask for (``explain.limits`` in params.yaml), checked
    before any work: the served explainer and ``semknobs explain`` refuse anything outside."""

    max_tiles: int = 256  # tiles per request
    max_steps: int = 1000  # optimiser steps per start
    max_restarts: int = 16  # starts per tile
    max_lam: float = 1e4  # Eq. 2 lambda, in [0, max_lam]
    max_delta: float = 1.0  # requested change: share of the stress range (or that many MPa)
    deadline_s: float = 30.0  # a served request's search stops after this many seconds

    def check(self, params: CounterfactualParams, stress_range: float) -> None:
        """Raise ValueError naming every setting out of range."""
        most_delta = self.max_delta * (stress_range if params.delta_unit == "mpa" else 1.0)
        ranges = {
            "steps": (params.steps, 1, self.max_steps),
            "restarts": (params.restarts, 1, self.max_restarts),
            "lam": (params.lam, 0.0, self.max_lam),
            "delta": (params.delta, 0.0, most_delta),
            "lr": (params.lr, 0.0, 1.0),
            "first_step": (params.first_step, 0.0, 1.0),
        }
        bad = [
            f"{name}={value!r} (allowed {lo:g}..{hi:g})"
            for name, (value, lo, hi) in ranges.items()
            if not (np.isfinite(value) and lo <= value <= hi)
            or (name in ("delta", "lr", "first_step") and value <= 0)
        ]
        if params.optimizer not in OPTIMIZERS:
            bad.append(f"optimizer={params.optimizer!r} (allowed {', '.join(OPTIMIZERS)})")
        if params.target == "value" and not (
            params.value is not None and np.isfinite(params.value) and params.value > 0
        ):
            bad.append(f"target={params.value!r} (a stress must be a finite number of MPa > 0)")
        if params.p not in (1, 2):
            bad.append(f"p={params.p!r} (allowed 1 or 2)")
        if bad:
            raise ValueError("search settings out of range: " + "; ".join(bad))


def search_params(
    defaults: CounterfactualParams,
    *,
    target: str | float | None = None,
    limits: SearchLimits | None = None,
    stress_range: float = 1.0,
    **overrides: Any,
) -> CounterfactualParams:
    """``defaults`` with ``target`` ("higher", "lower" or a stress in MPa, as text or a number)
    and other fields set, checked against ``limits`` (default :class:`SearchLimits`).

    ``None`` values are ignored, so callers can pass optional arguments straight through.
    Raises ValueError naming every unknown, non-numeric, non-finite or out-of-range setting.
    """
    changes = {k: v for k, v in overrides.items() if v is not None}
    unknown = set(changes) - {f.name for f in dataclasses.fields(CounterfactualParams)}
    if unknown:
        raise ValueError(f"unknown search settings: {sorted(unknown)}")
    if target is not None:
        text = str(target).strip().lower()
        if text in TARGETS:
            changes["target"] = text
        else:
            try:
                value = float(text)
            except ValueError:
                raise ValueError(
                    f"target must be 'higher', 'lower' or a stress in MPa, got {target!r}"
                ) from None
            changes |= {"target": "value", "value": value}
    for name, value in list(changes.items()):
        if name in _WHOLE or name in _REAL:
            if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
                raise ValueError(f"{name} must be a number, got {value!r}")
            if name in _WHOLE and not (np.isfinite(value) and float(value).is_integer()):
                raise ValueError(f"{name} must be a whole number, got {value!r}")
            changes[name] = int(value) if name in _WHOLE else float(value)
    params = dataclasses.replace(defaults, **changes)
    (limits or SearchLimits()).check(params, stress_range)
    return params
