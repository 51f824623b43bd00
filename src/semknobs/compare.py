"""``semknobs compare`` / ``make compare``: the headline metrics and the changed params of the
last pipeline executions, as a table that fits a narrow terminal (metrics and params as rows,
executions as columns).

Where the numbers come from, and why:

* **Executions** are the ``semknobs.execution`` ids of the MLflow store (one per ``make repro``,
  ``dvc repro`` or ``dvc exp run``) that *registered models*: the ``register`` stage ends every
  complete run of the pipeline, so an execution that failed half-way is not a result to compare
  (those are counted under the table). DVC experiments need not exist: plain ``make repro``
  leaves no experiment behind, but every execution leaves its MLflow runs.
* **Metrics** are the registered versions' ``metric.<key>`` tags: the ``register`` stage copies
  every metrics file there, so they are complete even when DVC reran only some stages (a stage's
  own run exists only in the executions that reran it). The rows are the metrics that the
  promotion gates of ``params.yaml`` (``promote.gates``) name, with their bounds; a value that
  fails a gate ends in ``!``. ``--metric`` adds rows (glob patterns over the keys).
* **Params** are the stage runs' params, in effect at each execution: a stage that DVC skipped
  keeps the params of its latest earlier run; the trained models' params are those of the exact
  training runs their versions link to. Only params that differ between the shown executions
  are listed.
* Only runs made from this repository's commits count (``git rev-list --all``): the study
  workspaces of ``make science`` are separate repositories that log to the same store.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import json
import math
import re
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from semknobs.errors import SemknobsError
from semknobs.lifecycle.promote import (
    Gate,
    PromoteParams,
    bound_text,
    check_gates,
    version_metrics,
)
from semknobs.lineage import run_git
from semknobs.names import MODEL_NAMES

KINDS = ("regressor", "attgan", "explainer")  # row order: prediction, editor, explanations
TRAINING_STAGE = {"attgan": "train_attgan", "regressor": "train_regressor"}
MISSING = "–"
_REPR = re.compile(r"^[A-Z]\w*\(.*\)$", re.S)  # an object's repr: a section logged unflattened


@dataclass
class Execution:
    """One pipeline execution that registered models."""

    id: str
    time_ms: int  # when it registered (the register run's start)
    versions: dict[str, str]  # kind -> registered version
    metrics: dict[str, dict[str, float]]  # kind -> metric.* tags of that version
    model_runs: dict[str, str] = field(default_factory=dict)  # kind -> run that logged it
    params: dict[str, str] = field(default_factory=dict)  # "<stage>.<key>" in effect
    stages: list[str] = field(default_factory=list)  # the stages that ran in it
    git: str = ""  # short commit, "+" when the tree was dirty

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "time": _when(self.time_ms, seconds=True),
            "git": self.git,
            "versions": self.versions,
            "stages_run": self.stages,
        }


@dataclass(frozen=True)
class Row:
    label: str
    values: list[str]


@dataclass(frozen=True)
class Comparison:
    executions: list[Execution]
    metric_rows: dict[str, list[tuple[str, list[float | None], list[bool]]]]  # kind -> rows
    gates: dict[str, list[tuple[int, int]]]  # kind -> (passed, checked) per execution
    changed: dict[str, list[str | None]]  # param -> value per execution (None: not logged)
    partial: dict[str, list[str | None]]  # params logged by some executions only, else equal
    not_shown: list[str]  # newer executions that registered nothing

    def to_dict(self) -> dict[str, Any]:
        return {
            "executions": [e.to_dict() for e in self.executions],
            "metrics": {
                kind: {label: values for label, values, _ in rows}
                for kind, rows in self.metric_rows.items()
            },
            "gates_passed": {
                kind: [{"passed": p, "checked": c} for p, c in per]
                for kind, per in self.gates.items()
            },
            "changed_params": self.changed,
            "params_logged_by_some": self.partial,
            "not_registered": self.not_shown,
        }


# --------------------------------------------------------------------------------------------
# reading the store
# --------------------------------------------------------------------------------------------


def repo_commits(root: Path | str = ".") -> set[str] | None:
    """Every commit reachable from any ref of the git repository at ``root`` (None: no git)."""
    out = run_git(Path(root), "rev-list", "--all", timeout=30)
    return set(out.split()) or None if out is not None else None


def _all_runs(client: Any, experiment_id: str) -> list[Any]:
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _versions_by_execution(client: Any) -> dict[str, dict[str, Any]]:
    """execution id -> kind -> the newest version that execution registered."""
    out: dict[str, dict[str, Any]] = {}
    for kind, name in MODEL_NAMES.items():
        for mv in client.search_model_versions(f"name = '{name}'"):
            tags = mv.tags or {}
            execution = tags.get("semknobs.register_execution")
            if not execution:
                continue
            known = out.setdefault(execution, {}).get(kind)
            if known is None or int(mv.version) > int(known.version):
                out[execution][kind] = mv
    return out


def load_executions(
    client: Any,
    experiment_id: str,
    *,
    last: int,
    only: Sequence[str] = (),
    commits: set[str] | None = None,
) -> tuple[list[Execution], list[str]]:
    """The executions to compare, oldest first, and the ids of newer executions in the store
    that registered nothing. ``only`` picks executions by id; ``commits`` (None: all) keeps the
    runs made from those git commits."""
    runs = [
        r
        for r in _all_runs(client, experiment_id)
        if r.info.status == "FINISHED"
        and r.data.tags.get("semknobs.stage")
        and "mlflow.parentRunId" not in r.data.tags  # tuning trials
        and (commits is None or r.data.tags.get("git.commit") in commits)
    ]
    runs.sort(key=lambda r: r.info.start_time)
    by_id = {r.info.run_id: r for r in runs}
    executions = []
    registered = _versions_by_execution(client)
    for execution, versions in registered.items():
        register = by_id.get(versions.get("explainer").run_id) if "explainer" in versions else None
        if register is None and commits is not None:
            continue  # registered from another workspace (or its run was deleted)
        when = (
            register.info.start_time
            if register is not None
            else max(mv.creation_timestamp for mv in versions.values())
        )
        executions.append(
            Execution(
                id=execution,
                time_ms=int(when),
                versions={k: str(mv.version) for k, mv in versions.items()},
                metrics={k: version_metrics(mv.tags or {}) for k, mv in versions.items()},
                model_runs={k: mv.run_id for k, mv in versions.items() if mv.run_id},
            )
        )
    executions.sort(key=lambda e: e.time_ms)
    if only:
        known = {e.id: e for e in executions}
        unknown = [i for i in only if i not in known]
        if unknown:
            recent = ", ".join(e.id for e in executions[-5:]) or "none"
            raise SemknobsError(
                f"no execution that registered models is called {', '.join(unknown)} "
                f"(recent ones: {recent})"
            )
        executions = sorted((known[i] for i in dict.fromkeys(only)), key=lambda e: e.time_ms)
    else:
        executions = executions[-last:] if last > 0 else executions
    for e in executions:
        _fill_params(e, runs, by_id)
    if only or not executions:
        return executions, []
    later = dict.fromkeys(
        r.data.tags.get("semknobs.execution", "")
        for r in runs
        if r.info.start_time > executions[0].time_ms
    )
    return executions, [i for i in later if i and i not in registered]


def _fill_params(execution: Execution, runs: Sequence[Any], by_id: Mapping[str, Any]) -> None:
    """The params of every stage as they were when ``execution`` registered its models, the
    stages that ran in it and the commit of its register run."""
    in_effect: dict[str, Any] = {}
    for run in runs:  # oldest first: the latest run of each stage wins
        if run.info.start_time <= execution.time_ms:
            stage = run.data.tags["semknobs.stage"]
            in_effect[stage] = run
            if run.data.tags.get("semknobs.execution") == execution.id:
                execution.stages.append(stage)
    for kind, stage in TRAINING_STAGE.items():  # the exact runs that trained the models
        run = by_id.get(execution.model_runs.get(kind, ""))
        if run is not None:
            in_effect[stage] = run
    execution.stages = list(dict.fromkeys(execution.stages))
    for stage, run in sorted(in_effect.items()):
        for key, value in run.data.params.items():
            if not _REPR.match(value):
                execution.params[f"{stage}.{key}"] = value
    register = by_id.get(execution.model_runs.get("explainer", ""))
    if register is not None:
        tags = register.data.tags
        execution.git = tags.get("git.commit", "")[:7] + (
            "+" if tags.get("git.dirty") == "true" else ""
        )


# --------------------------------------------------------------------------------------------
# the comparison
# --------------------------------------------------------------------------------------------


def _gate_label(metric: str, gates: Iterable[Gate]) -> str:
    bounds = []
    for g in gates:
        for op, bound in ((">=", g.min), ("<=", g.max)):
            if bound is not None:
                bounds.append(f"{op}{bound_text(bound)}")
    return " ".join([metric, *bounds])


def compare(
    executions: list[Execution],
    promote: PromoteParams,
    extra_metrics: Sequence[str] = (),
    not_shown: Sequence[str] = (),
) -> Comparison:
    """Headline metric rows (gates' metrics + ``extra_metrics`` patterns) and changed params."""
    metric_rows: dict[str, list] = {}
    gates_passed: dict[str, list[tuple[int, int]]] = {}
    for kind in KINDS:
        gates = promote.gates.get(kind, [])
        keys = list(dict.fromkeys(g.metric for g in gates))
        present = sorted({k for e in executions for k in e.metrics.get(kind, {})})
        for pattern in extra_metrics:
            scope, _, pat = pattern.rpartition(":")
            if scope and scope not in (kind, MODEL_NAMES[kind]):
                continue
            keys += [k for k in present if fnmatch.fnmatchcase(k, pat) and k not in keys]
        rows = []
        results = [check_gates(gates, e.metrics.get(kind, {})) for e in executions]
        for key in keys:
            mine = [g for g in gates if g.metric == key]
            values = [e.metrics.get(kind, {}).get(key) for e in executions]
            fails = [
                any(not r.passed and not r.skipped for r in res if r.gate.metric == key)
                and e.metrics.get(kind) is not None
                for res, e in zip(results, executions)
            ]
            rows.append((_gate_label(key, mine), values, fails))
        if rows:
            metric_rows[kind] = rows
        if gates:
            gates_passed[kind] = [
                (sum(r.passed for r in res), sum(not r.skipped for r in res)) for res in results
            ]
    keys = sorted({k for e in executions for k in e.params})
    changed, partial = {}, {}
    for key in keys:
        values = [e.params.get(key) for e in executions]
        present = {v for v in values if v is not None}
        if len(present) > 1:
            changed[key] = values
        elif None in values:  # a param the code added or removed meanwhile
            partial[key] = values
    return Comparison(executions, metric_rows, gates_passed, changed, partial, list(not_shown))


# --------------------------------------------------------------------------------------------
# the table
# --------------------------------------------------------------------------------------------


def _when(ms: int, seconds: bool = False) -> str:
    t = dt.datetime.fromtimestamp(ms / 1000, dt.UTC).astimezone()  # local time
    return t.strftime("%Y-%m-%d %H:%M:%S" if seconds else "%m-%d %H:%M")


def _number(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    return f"{value:.4g}"


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(width - 1, 0)] + "…"


def _cell(value: str, width: int) -> str:
    """A value in ``width`` characters: numbers lose digits before anything is cut off."""
    if len(value) <= width:
        return value
    try:
        number = float(value.rstrip("!"))
    except ValueError:
        return _fit(value, width)
    mark = "!" if value.endswith("!") else ""
    for digits in range(10, 2, -1):
        text = f"{number:.{digits}g}{mark}"
        if len(text) <= width:
            return text
    return _fit(value, width)


def _shorten_key(key: str, width: int) -> str:
    """A dotted name in ``width`` characters, keeping its first part and its end."""
    if len(key) <= width:
        return key
    head = key.split(".", 1)[0]
    tail = width - len(head) - 2
    if tail < 6:
        return _fit(key, width)
    return f"{head}.…{key[-tail:]}"


def _layout(label_need: int, metric_w: int, all_w: int, n: int, width: int) -> tuple[int, int, int]:
    """(label width, column width, columns per band) for ``n`` columns in ``width``.

    Columns are 8 to 16 characters: wide enough for every metric value, wider for long params
    while the labels still fit. Then labels are cut (down to 24 characters) before the columns
    are split into bands.
    """
    low = max(8, min(metric_w, 16))
    for col_w in range(max(low, min(all_w, 16)), low - 1, -1):
        if label_need + n * (col_w + 1) <= width:
            return label_need, col_w, n
    if width - n * (low + 1) >= 24:
        return width - n * (low + 1), low, n
    label_w = min(label_need, max(24, width // 2))
    return label_w, low, max(1, (width - label_w) // (low + 1))


def _legend(comparison: Comparison, keys: Sequence[str], width: int) -> list[str]:
    execs = comparison.executions
    head = "executions, oldest first: id, time, commit (+: uncommitted changes), versions "
    head += "(attgan/regressor/explainer), stages that ran"
    lines = textwrap.wrap(head, width, subsequent_indent="  ")
    rest = [
        (
            f"{_when(e.time_ms)}  {e.git or '?':<8}  v"
            + "/".join(e.versions.get(k, "-") for k in ("attgan", "regressor", "explainer"))
            + f"  {len(e.stages)}"
        )
        for e in execs
    ]
    id_w = max(12, min(max(len(e.id) for e in execs), width - 8 - max(map(len, rest))))
    for key, e, tail in zip(keys, execs, rest):
        lines.append(_fit(f"{key:>4}  {_fit(e.id, id_w):<{id_w}}  {tail}", width))
    return lines


def render(comparison: Comparison, width: int = 100) -> str:
    """The comparison as text no wider than ``width``: a legend of the executions, then one
    block of rows per group, executions as columns (in several bands if they do not fit)."""
    execs = comparison.executions
    keys = [f"#{i + 1}" for i in range(len(execs))]
    groups: list[tuple[str, list[Row]]] = []
    for kind, rows in comparison.metric_rows.items():
        out = [
            Row(label, [_number(v) + ("!" if bad else "") for v, bad in zip(values, fails)])
            for label, values, fails in rows
        ]
        if kind in comparison.gates:
            out.append(Row("gates passed", [f"{p}/{c}" for p, c in comparison.gates[kind]]))
        groups.append((f"{kind} ({MODEL_NAMES[kind]})", out))
    params = [
        Row(k, [MISSING if v is None else v for v in values])
        for k, values in comparison.changed.items()
    ]
    groups.append(("params that differ", params or [Row("(none)", [""] * len(execs))]))
    rows = [r for _, group in groups for r in group]
    metric_w = max([len(v) for _, group in groups[:-1] for r in group for v in r.values] + [0])
    label_w, col_w, per_band = _layout(
        max(len(r.label) + 2 for r in rows),
        max(metric_w, *(len(k) for k in keys)),
        max(len(v) for r in rows for v in r.values),
        len(execs),
        width,
    )
    lines = _legend(comparison, keys, width)
    for start in range(0, len(execs), per_band):
        band = range(start, min(start + per_band, len(execs)))
        lines.append("")
        lines.append(" " * label_w + "".join(f" {keys[i]:>{col_w}}" for i in band))
        for title, group in groups:
            lines.append(_fit(title, width))
            for r in group:
                label = "  " + _shorten_key(r.label, label_w - 2)
                cells = "".join(f" {_cell(r.values[i], col_w):>{col_w}}" for i in band)
                lines.append(f"{label:<{label_w}}{cells}")
    notes = [f"! fails a promotion gate (params.yaml promote.gates); {MISSING}: no value"]
    if comparison.partial:
        notes.append(
            f"not listed: {len(comparison.partial)} params that only some of these executions "
            "logged (added or removed by code changes); --json lists them"
        )
    if comparison.not_shown:
        more = " ..." if len(comparison.not_shown) > 3 else ""
        notes.append(
            f"not shown: {len(comparison.not_shown)} newer executions that registered no models "
            f"(failed or partial runs): {', '.join(comparison.not_shown[:3])}{more}"
        )
    lines.append("")
    wrap = textwrap.TextWrapper(width, subsequent_indent="  ", break_on_hyphens=False)
    lines += [wrap.fill(n) for n in notes]
    return "\n".join(lines)


def to_json(comparison: Comparison) -> str:
    return json.dumps(comparison.to_dict(), indent=2)
