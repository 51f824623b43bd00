"""Promotion: move alias ``champion`` to a registered version that passes its quality gates.

Gates come from ``params.yaml`` (section ``promote``), per registered model: a metric, read from
the version's ``metric.<key>`` tags (written by the ``register`` stage), with a ``min`` and/or
``max`` bound; a bound may be a number, another metric's key (e.g. the regressor's lot RMSE
must not exceed the random-forest baseline's), a scaled metric (``{of: key, times: k, plus: c}``:
k x key + c) or a list of these, of which the value must meet one (the issue's "control >= 0.8
or >= 90 % of its ceiling"; a bound whose metric is absent, such as a ceiling on data without a
ground truth, drops out of the list). A gate with ``needs_truth: true`` is skipped when the metric
is absent (fidelity exists only where a ground truth does); any other missing metric fails its
gate.

A refused promotion names every failed gate and its value. ``force`` with a ``reason`` promotes
anyway and records who and why. History stays on the versions: a promoted version gets
``champion.promoted_at``/``_by`` (and ``champion.forced``/``reason``/``failed_gates`` when
forced); the version it replaces gets ``champion.retired_at`` and ``champion.superseded_by``.
So every past champion is found with
``search_model_versions("name = '<model>' and tags.`champion.promoted_at` != ''")``.
"""

from __future__ import annotations

import datetime as dt
import getpass
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from semknobs.errors import ModelError, ParamsError
from semknobs.names import CANDIDATE, CHAMPION, MODEL_NAMES


@dataclass(frozen=True)
class Scaled:
    """A bound read off another metric: ``times`` x metric ``of`` + ``plus``."""

    of: str
    times: float = 1.0
    plus: float = 0.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.times) and math.isfinite(self.plus)):
            raise ValueError(f"bound on {self.of!r}: times and plus must be finite numbers")


Bound = float | str | Scaled
Bounds = Bound | tuple[Bound, ...]


@dataclass(frozen=True)
class Gate:
    metric: str
    min: Bounds | None = None
    max: Bounds | None = None
    needs_truth: bool = False

    def __post_init__(self) -> None:
        if self.min is None and self.max is None:
            raise ValueError(f"gate on {self.metric!r} needs a min or a max")
        for bound in (self.min, self.max):
            if isinstance(bound, tuple) and not bound:
                raise ValueError(f"gate on {self.metric!r}: an empty list of bounds")
            for one in bound if isinstance(bound, tuple) else (bound,):
                if isinstance(one, float) and not math.isfinite(one):
                    raise ValueError(f"gate on {self.metric!r}: bound {one} is not finite")


@dataclass(frozen=True)
class PromoteParams:
    alias: str = CHAMPION
    from_alias: str = CANDIDATE
    gates: dict[str, list[Gate]] = field(default_factory=dict)  # by model kind (names.MODEL_NAMES)

    def gates_of(self, name: str) -> list[Gate]:
        """The gates of registered model ``name``; ParamsError if it has none."""
        kinds = {n: k for k, n in MODEL_NAMES.items()}
        if kinds.get(name) not in self.gates:
            known = ", ".join(MODEL_NAMES[k] for k in sorted(self.gates) if k in MODEL_NAMES)
            raise ParamsError(
                f"no promotion gates for {name!r} in params (promote.gates covers: "
                f"{known or 'none'})"
            )
        return self.gates[kinds[name]]

    def names(self) -> list[str]:
        """The registered models that have gates."""
        return [MODEL_NAMES[k] for k in self.gates if k in MODEL_NAMES]


@dataclass(frozen=True)
class GateResult:
    gate: Gate
    value: float | None
    passed: bool
    skipped: bool
    text: str


@dataclass(frozen=True)
class Promotion:
    name: str
    version: str
    promoted: bool
    forced: bool
    previous: str | None
    results: list[GateResult]

    @property
    def failed(self) -> list[GateResult]:
        return [r for r in self.results if not r.passed and not r.skipped]


def version_metrics(tags: Mapping[str, str]) -> dict[str, float]:
    out = {}
    for key, value in tags.items():
        if key.startswith("metric."):
            try:
                out[key[len("metric.") :]] = float(value)
            except ValueError:
                continue
    return out


def bound_text(bounds: Bounds) -> str:
    """A gate's bound as written: ``0.8``, ``baseline_rf/lot_r2``,
    ``0.8|0.9 x control/ceiling_size``, ``control/ceiling_max_leakage + 0.1``."""
    if isinstance(bounds, tuple):
        return "|".join(bound_text(b) for b in bounds)
    if isinstance(bounds, Scaled):
        text = bounds.of if bounds.times == 1 else f"{bounds.times:g} x {bounds.of}"
        return text + (f" + {bounds.plus:g}" if bounds.plus else "")
    return bounds if isinstance(bounds, str) else f"{bounds:g}"


def _bound(bound: Bound, metrics: Mapping[str, float]) -> tuple[float | None, str]:
    if isinstance(bound, Scaled):
        value = metrics.get(bound.of)
        if value is None or math.isnan(value):
            return None, bound_text(bound)
        limit = bound.times * value + bound.plus
        return limit, f"{bound_text(bound)} ({limit:.4g})"
    if isinstance(bound, str):
        value = metrics.get(bound)
        return value, f"{bound} ({value:.4g})" if value is not None else bound
    return float(bound), f"{float(bound):g}"


def _meets(value: float, op: str, bounds: Bounds, metrics: Mapping[str, float]) -> tuple[bool, str]:
    """Whether ``value`` meets one of ``bounds`` (those whose metric is absent drop out)."""
    every = bounds if isinstance(bounds, tuple) else (bounds,)
    read = [_bound(b, metrics) for b in every]
    known = [(limit, shown) for limit, shown in read if limit is not None]
    one_of = "one of " if len(every) > 1 else ""
    if not known:
        return False, f"{op} {one_of}{', '.join(shown for _, shown in read)}: missing"
    ok = any(value >= limit if op == ">=" else value <= limit for limit, _ in known)
    return ok, f"{op} {one_of}{', '.join(shown for _, shown in known)}"


def check_gates(gates: Sequence[Gate], metrics: Mapping[str, float]) -> list[GateResult]:
    """Evaluate every gate against a version's metrics."""
    results = []
    for gate in gates:
        value = metrics.get(gate.metric)
        if value is None or math.isnan(value):
            if gate.needs_truth:
                text = f"{gate.metric}: skipped (no ground truth for this data)"
                results.append(GateResult(gate, None, False, True, text))
            else:
                results.append(GateResult(gate, None, False, False, f"{gate.metric}: missing"))
            continue
        checks, passed = [], True
        for op, bounds in ((">=", gate.min), ("<=", gate.max)):
            if bounds is None:
                continue
            ok, shown = _meets(value, op, bounds, metrics)
            passed &= ok
            checks.append(shown)
        verb = "is" if passed else "needs"
        text = f"{gate.metric} = {value:.4g} ({verb} {', '.join(checks)})"
        results.append(GateResult(gate, value, passed, False, text))
    return results


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


def promote(
    name: str,
    *,
    params: PromoteParams,
    version: str | None = None,
    force: bool = False,
    reason: str | None = None,
    user: str | None = None,
) -> Promotion:
    """Check ``name``'s gates on ``version`` (default: the ``from_alias`` version) and move
    ``params.alias`` to it when they pass or when forced. Raises ModelError for an unknown
    model/version/alias; returns the outcome either way (``promoted`` False when refused)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    if force and not (reason and reason.strip()):
        raise ParamsError("--force needs --reason TEXT (it is recorded on the version)")
    gates = params.gates_of(name)
    client = MlflowClient()
    try:
        registered = client.get_registered_model(name)
        aliases = registered.aliases or {}
        if version is None:
            if params.from_alias not in aliases:
                raise ModelError(
                    f"{name} has no version with alias {params.from_alias!r} "
                    f"(aliases: {aliases or 'none'}); run `dvc repro register` or pass --version"
                )
            version = str(aliases[params.from_alias])
        mv = client.get_model_version(name, str(version))
    except MlflowException as exc:
        raise ModelError(f"{name} version {version}: {exc.message}") from None

    results = check_gates(gates, version_metrics(mv.tags or {}))
    previous = aliases.get(params.alias)
    previous = str(previous) if previous is not None else None
    failed = [r for r in results if not r.passed and not r.skipped]
    if failed and not force:
        return Promotion(name, str(version), False, False, previous, results)

    who = user or getpass.getuser()
    now = _now()
    tags = {"champion.promoted_at": now, "champion.promoted_by": who}
    if force:
        tags |= {
            "champion.forced": "true",
            "champion.reason": reason.strip(),
            "champion.failed_gates": "; ".join(r.text for r in failed) or "none",
        }
    for key, value in tags.items():
        client.set_model_version_tag(name, str(version), key, value)
    if previous is not None and previous != str(version):
        client.set_model_version_tag(name, previous, "champion.retired_at", now)
        client.set_model_version_tag(name, previous, "champion.superseded_by", str(version))
    client.set_registered_model_alias(name, params.alias, str(version))
    return Promotion(name, str(version), True, force, previous, results)


def champions(name: str) -> list[dict[str, str]]:
    """Every version of ``name`` that was ever champion, oldest promotion first."""
    from mlflow import MlflowClient

    versions = MlflowClient().search_model_versions(f"name = '{name}'")
    rows = [
        {"version": str(mv.version), **(mv.tags or {})}
        for mv in versions
        if (mv.tags or {}).get("champion.promoted_at")
    ]
    return sorted(rows, key=lambda r: r["champion.promoted_at"])
