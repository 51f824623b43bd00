"""How unlike real lot differences each knob's edits are, by region, without any truth.

``evaluate_attgan`` measures, on held-out tiles, how one knob unit moves the grey level and the
1 / 2 px bands of the crystal interiors, outlines and background (each tile's own Otsu mask)
against how the training lots' statistics move with their labels
(:func:`semknobs.train.texture.region_agreement`): ``texture/region_miss_<knob>`` =
||edit - lots|| / ||lots|| over the region statistics (Euclidean norms of the change per knob
unit, in spreads), 0 as real lots differ, :data:`NO_EDIT_MISS` as far off as an edit that
changes nothing. A knob past it edits its tiles in a way no real lot differs: the committed size
knob darkens the background about 15 times as much as the lots do (miss 3.1), and the regressor
reads that content (README, "Where the regressor reads the size edit").

What it is not: a warning about the sign of a knob's attribution. Over 17 editors of the default
study the miss does not track the held-out knob-gradient sign (Spearman -0.17; within a knob it
goes the other way, size +0.45: the edits with the most background content were read the right
way most often; ``benchmarks/region_flag_rules.md``, Rule Y). The knob read
(:mod:`semknobs.explain.knob_read`) is the sign alarm; this says whether the edit the attribution
is made of looks like a material change at all.

Where the regressor reads each knob's edits (``explain``, truth-free): the share of the knob
gradient that survives without the edits' background part (``knob_gradient_crystal/whole/
share_<knob>``, :func:`semknobs.explain.gradient.crystal_read`), flagged "read in the edits'
background" below :data:`CRYSTAL_MIN_SHARE` (less than half of the read left). On the default
study the committed size knob keeps 0.34 of its read, and the referee's held-out size sign falls
from 0.71 to 0.38 without the background part: the attribution's sign comes from a change a
real size change does not make there (README, "The explanations").

``register`` keeps these metrics in the explainer bundle and names the caveats in the
registered explainer's description (:func:`caveat_summary`); ``semknobs explain`` and the served
explainer report them beside the knob read (:func:`checks`, :func:`caveats`), the ``explain``
stage from ``metrics/attgan.json`` (:func:`from_file`); both print :func:`summary_line`. Not in
the paper.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from semknobs.attributes import ATTRIBUTES
from semknobs.errors import DataError
from semknobs.explain import knob_read

NO_EDIT_MISS = 1.0  # the miss of an edit that changes nothing: set by its meaning, not tuned
CRYSTAL_MIN_SHARE = 0.5  # half the read left without the background part: set by its meaning
CRYSTAL = "knob_gradient_crystal/whole"  # the knob gradient without the edits' background part


def region_miss_key(attribute: str) -> str:
    """The metric key of one knob's region miss, as
    :func:`semknobs.train.texture.region_agreement` writes it."""
    return f"texture/region_miss_{attribute}"


KEYS = {a: region_miss_key(a) for a in ATTRIBUTES}


def crystal_share_key(attribute: str) -> str:
    """The metric key of the share of one knob's read kept without the edits' background part,
    as :func:`semknobs.explain.gradient.crystal_read` writes it."""
    return f"{CRYSTAL}/share_{attribute}"


def crystal_from_metrics(metrics: Mapping[str, Any]) -> dict[str, dict[str, float | bool]] | None:
    """``{knob: {"crystal_share": float, "background_read": bool}}`` (below
    :data:`CRYSTAL_MIN_SHARE`; a NaN share is not flagged), or None without all four shares (an
    explain run before the crystal read)."""
    return _per_knob(
        metrics, crystal_share_key, "crystal_share", "background_read",
        lambda share: share < CRYSTAL_MIN_SHARE,
    )  # fmt: skip


def _per_knob(
    metrics: Mapping[str, Any],
    key: Callable[[str], str],
    value: str,
    flag: str,
    flagged: Callable[[float], bool],
) -> dict[str, dict[str, float | bool]] | None:
    """``{knob: {value: metrics[key(knob)], flag: flagged(it)}}`` (a NaN stored as null reads as
    NaN), or None unless all four knobs' keys are there."""
    keys = {a: key(a) for a in ATTRIBUTES}
    if not all(k in metrics for k in keys.values()):
        return None
    numbers = {a: knob_read.metric_number(metrics[k]) for a, k in keys.items()}
    return {a: {value: v, flag: bool(flagged(v))} for a, v in numbers.items()}


def region_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The ``texture/region_miss_<knob>`` entries of ``metrics`` (e.g. ``metrics/attgan.json``);
    empty when it has not all four (an editor evaluated before the region report)."""
    if not all(key in metrics for key in KEYS.values()):
        return {}
    return {key: knob_read.metric_number(metrics[key]) for key in KEYS.values()}


def from_metrics(metrics: Mapping[str, Any]) -> dict[str, dict[str, float | bool]] | None:
    """``{knob: {"region_miss": float, "unlike_lots": bool}}`` (past :data:`NO_EDIT_MISS`; a
    NaN miss is not flagged), or None without the metrics."""
    return _per_knob(
        metrics, region_miss_key, "region_miss", "unlike_lots", lambda miss: miss > NO_EDIT_MISS
    )


def texture_line(entry: Mapping[str, Mapping[str, Any]]) -> str:
    """``size 3.13 (unlike the lots), porosity 0.87, ...`` from :func:`from_metrics`."""
    return ", ".join(
        f"{a} {v['region_miss']:.2f}" + " (unlike the lots)" * bool(v["unlike_lots"])
        for a, v in entry.items()
    )


def summary_line(entry: Mapping[str, Mapping[str, Any]]) -> str:
    """The printed line of :func:`texture_line`, with what the number means."""
    return (
        "how unlike real lot differences each knob's edits are, by region (truth-free; past "
        f"{NO_EDIT_MISS:g}: the edit is no material change a lot shows, whatever its sign): "
        f"{texture_line(entry)}"
    )


def from_file(path: Path) -> dict[str, dict[str, float | bool]] | None:
    """:func:`from_metrics` of a metrics file (``metrics/attgan.json``)."""
    return from_metrics(read_metrics_file(path))


def read_metrics_file(path: Path) -> dict[str, Any]:
    """A metrics file's JSON object (``metrics/*.json``); a :class:`DataError` naming the file
    when it is unreadable or not an object."""
    try:
        metrics = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable ({exc})") from None
    if not isinstance(metrics, dict):
        raise DataError(f"{path}: not a JSON object of metrics")
    return metrics


def checks(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """A bundle's stored checks of its knobs: ``{"knob_read": {knob: {"read", "low"}},
    "edit_texture": {knob: {"region_miss", "unlike_lots"}}, "crystal_read": {knob:
    {"crystal_share", "background_read"}}}``, each left out where absent."""
    found = {
        "knob_read": knob_read.from_metrics(metrics),
        "edit_texture": from_metrics(metrics),
        "crystal_read": crystal_from_metrics(metrics),
    }
    return {key: value for key, value in found.items() if value is not None}


CAVEATS = (  # (checks section, its flag, the caveat's words)
    ("knob_read", "low", "low read"),
    ("edit_texture", "unlike_lots", "edits unlike lots"),
    ("crystal_read", "background_read", "read in the edits' background"),
)


def caveats(knob: str, found: Mapping[str, Any] | None) -> list[str]:
    """The caveats :func:`checks` gives one knob: "low read" (its sign deserves little trust),
    "edits unlike lots" (its edits are no change a real lot shows, whatever their sign), "read
    in the edits' background" (most of its read is in the edits' background, where a real
    change of that attribute need not be)."""
    found = found or {}
    return [
        words for section, flag, words in CAVEATS if found.get(section, {}).get(knob, {}).get(flag)
    ]


def caveat_summary(found: Mapping[str, Any]) -> str:
    """``low read: none; edits unlike lots: size, facetness`` for the checks present; empty
    without any."""
    parts = []
    for key, _, word in CAVEATS:
        if key in found:
            named = [a for a in ATTRIBUTES if word in caveats(a, {key: found[key]})]
            parts.append(f"{word}: {', '.join(named) or 'none'}")
    return "; ".join(parts)


def crystal_line(entry: Mapping[str, Mapping[str, Any]]) -> str:
    """The printed line of :func:`crystal_from_metrics`, with what the number means."""
    shares = ", ".join(
        f"{a} {v['crystal_share']:+.2f}" + " (read in the edits' background)" * v["background_read"]
        for a, v in entry.items()
    )
    return (
        "share of each knob's read kept without the edits' background part (truth-free; under "
        f"{CRYSTAL_MIN_SHARE:g}: the sign comes mostly from the background): {shares}"
    )
