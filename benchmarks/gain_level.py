"""Does an edit deliver the same change whatever the tile's own level of the knob? Truth-free.

For issue 14 (Rule L, ``benchmarks/gain_level_rules.md``): per knob and direction, every picked
training tile is edited by ``A +- step e_k`` from its own attributes (the explain stage's
measured-Jacobian step, ``explain.corrected.step``: 0.25), and the edit's gain (the
change it makes over the change requested, against the tile's reconstruction) is read twice: by
the calibrated attribute meter (the explain stage's calibration, knob units) and by the concept
network C the editor was trained with (the mean over its 8 symmetric views). Gains are averaged
per lot and split at the median of the lots' own level of the knob (their labels): a gain that
follows the level (``low / high`` well below 1, ``r`` the correlation over lots) means the edit
rescales the structure a tile has rather than adding or removing it, and the regressor's
response to it then varies between lots with the edit, not with the material. Reads the meter,
C and the labels only (no renderer, no truth). A second table (held out, evaluation only) reads
``evaluate_attgan``'s sweeps: the meter's slope over each step of a knob's 0 → 1 sweep, for the
edits and for the renderer's true interventions, so a level dependence of the meter itself
shows in the true rows. Needs ``make repro`` (or a study workspace).

    python benchmarks/gain_level.py [--workspace DIR] [--per-lot 6] [--out benchmarks/gain_level]
    # -> <out>.md and <out>.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from semknobs.attributes import ATTRIBUTES
from semknobs.config import from_mapping, load_params
from semknobs.data.dataset import load_tileset
from semknobs.data.schemas import read_lots
from semknobs.explain.bundle import in_batches
from semknobs.explain.measured import CorrectedParams, fit_from_files
from semknobs.pixels import to_model, to_uint8

sys.path.insert(0, str(Path(__file__).resolve().parent))
from concept_leak import load_editor, read_c


def gains(ws: Path, per_lot: int, seed: int = 0) -> tuple[pd.DataFrame, float]:
    """One row per knob, direction and picked training tile (``per_lot`` per lot, or all a lot
    has): the lot, its label level of the knob and the edit's gain as the meter and as C read
    it; and the step."""
    ed = load_editor(ws)
    params = load_params(ws / "params.yaml")
    step = from_mapping(CorrectedParams, params["explain"]["corrected"], "explain.corrected").step
    lots_all = ed.splits.training_lots()
    tiles = load_tileset(
        tiles_dir=ws / "data/tiles", lots_csv=ed.lots_csv, lots=lots_all, scaler=ed.scaler
    )
    tile_lots = tiles.manifest["lot"].to_numpy()
    rng = np.random.default_rng(seed)
    pick = np.concatenate(
        [
            rng.choice(own, min(per_lot, len(own)), replace=False)
            for own in (np.flatnonzero(tile_lots == lot) for lot in lots_all)
        ]
    )
    calib = fit_from_files(
        ws / "data/measurements.csv", read_lots(ed.lots_csv), lots_all, ed.scaler, ed.meter
    )
    x, a = to_model(tiles.images[pick]), torch.from_numpy(tiles.attrs[pick]).float()

    def edit(b: torch.Tensor) -> torch.Tensor:
        return in_batches(lambda i: ed.gen(x[i], b[i], a[i]), torch.arange(len(x)), 64)

    with torch.inference_mode():
        rec = to_uint8(edit(a))
        base_m, base_c = calib.read(rec, n_jobs=2), read_c(ed.net, rec)  # read once, not per edit
        rows = []
        for k, name in enumerate(ATTRIBUTES):
            for sign in (-1, 1):
                b = a.clone()
                b[:, k] += sign * step
                e = to_uint8(edit(b))
                gain_m = (calib.read(e, n_jobs=2)[:, k] - base_m[:, k]) / (sign * step)
                gain_c = (read_c(ed.net, e)[:, k] - base_c[:, k]) / (sign * step)
                rows.append(
                    pd.DataFrame(
                        {
                            "knob": name, "sign": sign, "lot": tile_lots[pick],
                            "level": a[:, k].numpy(), "gain_meter": gain_m, "gain_c": gain_c,
                        }
                    )
                )  # fmt: skip
    return pd.concat(rows, ignore_index=True), step


def summary(rows: pd.DataFrame) -> pd.DataFrame:
    """Per knob and reader, over lots: the mean gain, the means of the lots below and above
    the median level (both directions pooled), their ratio and the correlation with level."""
    out = []
    for name in ATTRIBUTES:
        per_lot = (
            rows[rows["knob"] == name]
            .groupby(["lot", "sign"])
            .agg(level=("level", "mean"), meter=("gain_meter", "mean"), c=("gain_c", "mean"))
            .groupby("lot")
            .mean()
        )
        low = per_lot["level"] <= per_lot["level"].median()
        for reader in ("meter", "c"):
            g = per_lot[reader]
            out.append(
                {
                    "knob": name, "reader": reader, "gain": g.mean(),
                    "low": g[low].mean(), "high": g[~low].mean(),
                    "low_over_high": g[low].mean() / g[~low].mean(),
                    "r_level": float(np.corrcoef(per_lot["level"], g)[0, 1]),
                }
            )  # fmt: skip
    return pd.DataFrame(out)


def _knob_order(column: pd.Series) -> pd.Series:
    return column.map(list(ATTRIBUTES).index) if column.name == "knob" else column


def sweep_steps(ws: Path) -> pd.DataFrame | None:
    """Held out, with the renderer (evaluation only): along ``evaluate_attgan``'s absolute sweeps
    (each knob from 0 to 1, the others at the tile's own values), the meter's mean slope over
    each step, for the edits and for the true interventions of the ceiling; None without a
    ceiling (real data)."""
    reports = ws / "reports" / "evaluate_attgan"
    if not (reports / "ceiling_readings.csv").is_file():
        return None
    out = []
    for source, name in (("edit", "control_readings"), ("true", "ceiling_readings")):
        readings = pd.read_csv(reports / f"{name}.csv")
        for knob in ATTRIBUTES:
            sweep = readings[readings["requested_attr"] == knob].pivot_table(
                index="tile", columns="requested", values=knob
            )
            levels = np.array(sorted(sweep.columns))
            steps = np.diff(sweep[levels].to_numpy(), axis=1).mean(axis=0) / np.diff(levels)
            out.append({"knob": knob, "source": source, "tiles": len(sweep), "steps": steps})
    return pd.DataFrame(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workspace", type=Path, default=Path("."))
    ap.add_argument("--per-lot", type=int, default=6)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/gain_level"))
    args = ap.parse_args()
    if args.per_lot < 1:
        ap.error(f"--per-lot must be >= 1, got {args.per_lot}")
    torch.manual_seed(0)
    rows, step = gains(args.workspace.resolve(), args.per_lot)
    table = summary(rows)
    n_lots = rows["lot"].nunique()
    md = [
        f"Edit gain by the lot's own level: {args.workspace.resolve().name}, {n_lots} training "
        f"lots x {args.per_lot} tiles, A +- {step} e_k (both directions pooled per lot)",
        "",
        "| knob | reader | gain | low-level lots | high-level lots | low / high | r with level |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    md += [
        f"| {r.knob} | {r.reader} | {r.gain:.2f} | {r.low:.2f} | {r.high:.2f} | "
        f"{r.low_over_high:.2f} | {r.r_level:+.2f} |"
        for r in table.itertuples()
    ]
    steps = sweep_steps(args.workspace.resolve())
    if steps is not None:
        md += [
            "",
            "Held out (evaluate_attgan's sweeps, the renderer's true interventions beside the "
            "edits; raw meter units per requested knob unit, each step of the sweep):",
            "",
            "| knob | source | tiles | slope per step, low → high | first / last step |",
            "| --- | --- | --- | --- | --- |",
        ]
        md += [
            f"| {r.knob} | {r.source} | {r.tiles} | {' / '.join(f'{v:.3g}' for v in r.steps)} | "
            f"{r.steps[0] / r.steps[-1]:.2f} |"
            for r in steps.sort_values(["knob", "source"], key=_knob_order).itertuples()
        ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text("\n".join(md) + "\n")
    record = {"gain": table.to_dict(orient="records")}
    if steps is not None:
        record["sweep_steps"] = [
            {**r, "steps": [float(v) for v in r["steps"]]} for r in steps.to_dict(orient="records")
        ]
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
