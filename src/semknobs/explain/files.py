"""``semknobs explain``: run a registered explainer bundle on tiles or whole scans.

An input whose size is the model's tile size is one tile; anything else is a scan, tiled with
the pipeline's own code and the bundle's tiling settings (information bar cropped, non-overlapping
tiles resized to the training resolution). For each input ``<stem>`` the output folder gets
``<stem>.csv`` (one row per tile and target), ``<stem>.json`` (per target: mean prediction, mean
knob change with a 95 % interval, success rate; and the input's knob gradient, the input taken
as one lot: :mod:`semknobs.explain.lot_gradient`), ``<stem>.png`` (tiles with their raised and
lowered edits, and the mean knob changes), ``<stem>_gradient.csv`` (each tile's knob gradient and
its edits' meter-read gains) and ``<stem>_gradient.png`` (the input's knob gradient with its
intervals, beside the input's meter regression: :mod:`semknobs.explain.natural`, also in the
JSON as ``meter_regression`` when the bundle has a meter, with the signs the two agree on as
``agreed_signs``: :mod:`semknobs.explain.agreement`), and the bundle's knob read as
``knob_read`` (how strongly the regressor reads each knob's edits, over the lots the explain
stage explained: :func:`semknobs.explain.knob_read.from_metrics`) and its AttGAN's region misses
as ``edit_texture`` (how unlike real lot differences each knob's edits are, by region:
:mod:`semknobs.explain.edit_texture`) and the share of each knob's read kept without the edits'
background part as ``crystal_read`` (the same module). Files are written under temporary names
and renamed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from scipy import stats

from semknobs.atomic import atomic_path
from semknobs.attributes import ATTRIBUTES
from semknobs.explain import edit_texture
from semknobs.explain.agreement import WORDS, lot_agreement, sign_words
from semknobs.explain.bundle import Explanation, KnobExplainer
from semknobs.pixels import model_to_uint8
from semknobs.stage import save_figure, write_json

FIGURE_TILES = 4


def read_tiles(path: Path, explainer: KnobExplainer) -> tuple[np.ndarray, pd.DataFrame]:
    """(uint8 tiles (n, S, S), where each came from) for one image file."""
    from semknobs.config import from_mapping
    from semknobs.data.scans import read_scan
    from semknobs.data.tiles import TileParams, tile_scan, tile_to_uint8

    image = read_scan(path)  # DataError naming the file when unreadable
    size = explainer.img_size
    params = from_mapping(TileParams, explainer.tile, where="explainer config: tile")
    if image.shape == (size, size):
        tiles, rc = tile_to_uint8(image, params.percentiles)[None], np.zeros((1, 2), int)
    else:
        tiles, rc = tile_scan(image, params, path)
    return tiles, pd.DataFrame({"row": rc[:, 0], "col": rc[:, 1]})


UNITS = {
    "*_mpa": "MPa",
    "start_*, new_*, change_*": "the experts' label scale (as in lots.csv)",
    "knob_delta_*, measured_delta_*": "knob units: share of the training lots' label range",
}
GRADIENT_UNITS = {
    "gradient*, gain_corrected*, corrected*": "MPa per knob unit (share of the label range)",
    "per_label_unit": "MPa per unit of the experts' label scale",
    "gain": "measured change per requested change (1: the edit did what was asked)",
}


def summarise(table: pd.DataFrame) -> dict[str, Any]:
    """Per target: tiles, mean prediction/baseline/achieved, success rate, mean requested knob
    change + 95 % CI (and the mean measured change when the bundle has a meter)."""
    out: dict[str, Any] = {}
    for target, g in table.groupby("target", sort=False):
        deltas = {}
        for a in ATTRIBUTES:
            v = g[f"knob_delta_{a}"].to_numpy()
            half = (
                float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))
                if len(v) > 1
                else None
            )
            deltas[a] = {"mean": float(v.mean()), "ci95_half_width": half}
        out[str(target)] = {
            "tiles": len(g),
            "prediction_mpa": float(g["prediction_mpa"].mean()),
            "baseline_mpa": float(g["baseline_mpa"].mean()),
            "achieved_mpa": float(g["achieved_mpa"].mean()),
            "success_rate": float(g["success"].mean()),
            "knob_delta": deltas,
            "units": UNITS,
        }
        if f"measured_delta_{ATTRIBUTES[0]}" in g:
            out[str(target)]["measured_delta"] = {
                a: _nanmean(g[f"measured_delta_{a}"]) for a in ATTRIBUTES
            }
    return out


def _nanmean(values: pd.Series) -> float | None:
    v = values.to_numpy(float)
    return float(np.nanmean(v)) if np.isfinite(v).any() else None


def figure(name: str, tiles: np.ndarray, runs: dict[str, Explanation]) -> Figure:
    """Up to four tiles with their edits per target, and the mean knob changes."""
    shown = min(FIGURE_TILES, len(tiles))
    fig = Figure(figsize=(2.0 * (len(runs) + 1) + 4.0, 2.1 * shown + 0.4), layout="constrained")
    axes = fig.subplots(shown, len(runs) + 2, squeeze=False)
    for r in range(shown):
        first = next(iter(runs.values())).table.iloc[r]
        panels = [(tiles[r], f"tile {r}: {first['prediction_mpa']:.1f} MPa")]
        for target, run in runs.items():
            edited = model_to_uint8(run.result.edited[r, 0])
            panels.append((edited, f"{target}: {run.table.iloc[r]['achieved_mpa']:.1f} MPa"))
        for c, (img, title) in enumerate(panels):
            axes[r, c].imshow(img, cmap="gray", vmin=0, vmax=255)
            axes[r, c].set_title(title, fontsize=8)
            axes[r, c].set_axis_off()
        ax = axes[r, -1]
        x = np.arange(len(ATTRIBUTES))
        width = 0.8 / len(runs)
        for k, (target, run) in enumerate(runs.items()):
            values = run.table.iloc[r][[f"knob_delta_{a}" for a in ATTRIBUTES]].to_numpy(float)
            ax.bar(x + (k - (len(runs) - 1) / 2) * width, values, width, label=target)
        ax.axhline(0, color="0.4", lw=0.5)
        ax.set_xticks(x, ATTRIBUTES, fontsize=7)
        ax.set_ylabel("knob change", fontsize=8)
        if r == 0:
            ax.legend(fontsize=7)
    fig.suptitle(f"{name}: knob changes that move the predicted peak stress", fontsize=10)
    return fig


def gradient_figure(name: str, lot: pd.DataFrame, checks: dict[str, Any] | None = None) -> Figure:
    """The input's knob gradient with 95 % intervals: as the edits give it and gain-corrected
    (the headline, left), and in measured concept units (right, its own scale: dividing by small
    gains makes it large). Hatched: the interval spans zero, or the value is flagged. Under each
    attribute on the left, with a meter regression: the sign it and the gain-corrected knob
    gradient agree on, or "undetermined"; and the bundle's caveats from ``checks``
    (:func:`semknobs.explain.edit_texture.checks`): "low read" (its sign deserves little
    trust), "edits unlike lots" (the edit is no change a real lot shows, whatever its sign)."""
    fig = Figure(figsize=(9.0, 3.4), layout="constrained")
    left, right = fig.subplots(1, 2, width_ratios=[3, 2])
    natural = "meter_regression" in lot.columns
    panels = [
        (
            left,
            [("gradient", "knob gradient", "0.7"), ("gain_corrected", "gain-corrected", "C0")]
            + [("meter_regression", "meter regression (no AttGAN)", "C2")] * natural,
        ),
        (right, [("corrected", "J$^{-T}$-corrected (measured units)", "C1")]),
    ]
    x = np.arange(len(lot))
    for ax, kinds in panels:
        width = 0.8 / len(kinds)
        for k, (col, label, color) in enumerate(kinds):
            value = lot[col].to_numpy(float)
            low, high = lot[f"{col}_low"], lot[f"{col}_high"]
            err = np.abs(np.stack([low, high]) - value)
            bars = ax.bar(
                x + (k - (len(kinds) - 1) / 2) * width, np.nan_to_num(value), width, color=color,
                yerr=np.where(np.isfinite(err), err, 0.0), capsize=2, label=label,
            )  # fmt: skip
            unsure = ~((low > 0) | (high < 0))  # NaN: no interval, not settled either
            if col == "corrected":
                unsure |= lot["corrected_flag"].astype(bool)
            for bar, hatch in zip(bars, unsure):
                bar.set_hatch("///" if hatch else None)
        ax.axhline(0, color="0.3", lw=0.6)
        ticks = lot["attribute"]
        if "agreed_sign" in lot.columns and ax is left:  # the sign both explainers give
            words = [f"both {WORDS[v]}" if v else "undetermined" for v in lot["agreed_sign"]]
            ticks = [f"{a}\n{w}" for a, w in zip(ticks, words)]
        if ax is left:  # the bundle's caveats on each knob
            ticks = [
                t + "".join(f"\n{w}" for w in edit_texture.caveats(a, checks))
                for a, t in zip(lot["attribute"], ticks)
            ]
        ax.set_xticks(x, ticks, fontsize=8)
        ax.legend(fontsize=7)
    left.set_ylabel("MPa per knob unit")
    right.set_ylabel("MPa per measured knob unit")
    tiles = int(lot["tiles"].iloc[0])
    fig.suptitle(
        f"{name} ({tiles} tile(s)): which knob changes raise the predicted stress "
        "(hatched: interval spans zero, or flagged)",
        fontsize=9,
    )
    return fig


def gradient_line(section: dict[str, Any], value: str = "gain_corrected") -> str:
    """``size +1.2 [-0.3, 2.7], ...`` from a summary's ``knob_gradient`` section (or, with
    ``value="slope"``, its ``meter_regression`` section)."""
    low, high = ("low", "high") if value == "slope" else (f"{value}_low", f"{value}_high")

    def number(v: float | None) -> str:
        return "n/a" if v is None else f"{v:+.3g}"

    return ", ".join(
        f"{a} {number(v[value])} [{number(v[low])}, {number(v[high])}]"
        for a, v in section.items()
        if a in ATTRIBUTES
    )


def read_line(entry: dict[str, dict[str, Any]]) -> str:
    """``size 0.73, ..., facetness -0.30 (low)`` from a summary's ``knob_read`` section."""
    return ", ".join(f"{a} {v['read']:.2f}" + " (low)" * v["low"] for a, v in entry.items())


def _stem(name: str, taken: set[str]) -> str:
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", name).lstrip(".") or "input"
    candidate, k = stem, 2
    while candidate in taken:
        candidate, k = f"{stem}_{k}", k + 1
    taken.add(candidate)
    return candidate


def explain_paths(
    paths: Sequence[Path],
    *,
    explainer: KnobExplainer,
    out_dir: Path,
    targets: Sequence[str] = ("higher", "lower"),
    settings: dict[str, Any] | None = None,
    attributes: Sequence[float] | None = None,
    progress: bool = True,
    gradient: bool = True,
    one_lot: str | None = None,
) -> list[dict[str, Any]]:
    """Explain every input; returns one summary per input (also written as ``<stem>.json``).

    ``attributes``: the inputs' expert scores (size, porosity, dispersity, facetness), used as
    every tile's starting point; without them the bundle estimates each tile's. ``gradient``:
    also the input's knob gradient (``knob_gradient`` in the summary, ``<stem>_gradient.*``).
    ``one_lot``: the inputs are tiles of one lot of that name; the last summary (also
    ``<one_lot>_lot.json``, ``<one_lot>_lot_gradient.*``) is that lot's knob gradient and meter
    regression over all their tiles.

    All inputs are read and checked before anything is written, so a bad or missing file stops
    the run with nothing half-done (:func:`read_scan` names it).
    """
    from tqdm.auto import tqdm

    if one_lot is not None and not gradient:
        raise ValueError("one_lot (--one-lot) reports the lot's knob gradient: drop --no-gradient")
    searches = {t: explainer.settings(target=t, **(settings or {})) for t in targets}
    checks = edit_texture.checks(explainer.metrics)  # the bundle's: the same for every input
    inputs = [(Path(p), *read_tiles(Path(p), explainer)) for p in paths]
    out_dir.mkdir(parents=True, exist_ok=True)
    taken: set[str] = set()
    summaries, known = [], []  # known: each input's meter readings and R(I), for the lot
    for path, tiles, where in tqdm(inputs, desc="explain", unit="input", disable=not progress):
        stem = _stem(path.stem, taken)
        start = None
        if attributes is not None:
            start = np.tile(np.asarray(attributes, float), (len(tiles), 1))
        readings = explainer.read_meter(tiles) if attributes is None or gradient else None
        found = explainer.attribute_all(tiles, start, list(searches.values()), None, readings)
        runs = dict(zip(searches, found))
        known.append((readings, found[0].table["prediction_mpa"].to_numpy()))
        table = pd.concat(
            [
                where.assign(input=str(path), tile=np.arange(len(tiles)), target=t).join(r.table)
                for t, r in runs.items()
            ],
            ignore_index=True,
        )
        summary = {"input": str(path), "tiles": len(tiles), "targets": summarise(table)}
        summary |= checks
        with atomic_path(out_dir / f"{stem}.csv") as tmp:
            table.to_csv(tmp, index=False, float_format="%.6g")
        if gradient:
            per_tile = where.assign(input=str(path), tile=np.arange(len(tiles)))
            summary |= lot_outputs(
                explainer, stem, path.name, tiles, start, per_tile, out_dir, *known[-1],
                checks=checks,
            )  # fmt: skip
        write_json(out_dir / f"{stem}.json", summary)
        save_figure(figure(path.name, tiles, runs), out_dir / f"{stem}.png")
        summaries.append(summary)
    if gradient and one_lot is not None:  # every input's tiles as one lot
        name = _stem(f"{one_lot}_lot", taken)
        readings = None if known[0][0] is None else np.concatenate([r for r, _ in known])
        predictions = np.concatenate([p for _, p in known])
        tiles = np.concatenate([t for _, t, _ in inputs])
        start = None
        if attributes is not None:
            start = np.tile(np.asarray(attributes, float), (len(tiles), 1))
        per_tile = pd.concat(
            [w.assign(input=str(p), tile=np.arange(len(w))) for p, _, w in inputs],
            ignore_index=True,
        )
        summary = {"lot": one_lot, "inputs": [str(p) for p, _, _ in inputs], "tiles": len(tiles)}
        summary |= checks
        summary |= lot_outputs(
            explainer, name, f"lot {one_lot}", tiles, start, per_tile, out_dir, readings,
            predictions, checks=checks,
        )  # fmt: skip
        write_json(out_dir / f"{name}.json", summary)
        summaries.append(summary)
    return summaries


def lot_outputs(
    explainer: KnobExplainer,
    stem: str,
    title: str,
    tiles: np.ndarray,
    start: np.ndarray | None,
    per_tile: pd.DataFrame,
    out_dir: Path,
    readings: np.ndarray | None = None,
    predictions: np.ndarray | None = None,
    checks: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The knob gradient and meter regression of ``tiles`` taken as one lot: writes
    ``<stem>_gradient.csv`` and ``<stem>_gradient.png``, returns the summary's entries
    (``readings``, ``predictions``: the tiles' meter readings and R(I), when already known;
    ``checks``: the bundle's knob checks, written under the figure's bars)."""
    lot = explainer.knob_gradient(tiles, start, [stem] * len(tiles), None, readings)
    out: dict[str, Any] = {"knob_gradient": {**lot.summary(stem), "units": GRADIENT_UNITS}}
    with atomic_path(out_dir / f"{stem}_gradient.csv") as tmp:
        table = per_tile.reset_index(drop=True).join(lot.tiles.drop(columns="lot"))
        table.to_csv(tmp, index=False, float_format="%.6g")
    natural = explainer.meter_regression(
        tiles, [stem] * len(tiles), readings=readings, predictions=predictions
    )
    shown = lot.lots
    if natural is not None:
        out["meter_regression"] = natural.summary(stem)
        row = natural.table.iloc[0]
        signs = lot_agreement(lot, natural).iloc[0][[f"agreed_sign_{a}" for a in ATTRIBUTES]]
        out["agreed_signs"] = sign_words(signs.to_numpy(float))
        shown = shown.assign(
            **{
                f"meter_regression{end}": [row[f"{k}_{a}"] for a in ATTRIBUTES]
                for end, k in (("", "slope"), ("_low", "low"), ("_high", "high"))
            },
            agreed_sign=signs.to_numpy(float),
        )
    save_figure(gradient_figure(title, shown, checks), out_dir / f"{stem}_gradient.png")
    return out
