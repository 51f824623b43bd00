"""Does the concept network C see the editor's leaks, and does anything ask for them?
Evaluation only (issue 14).

The concept loss pulls each edit's change, as C reads it, to the requested change on every
knob, so a knob that moves another knob's reading (a leak) costs there. This replays
``evaluate_attgan``'s control sweep (the same seeded held-out tiles and edits) and reads every
edit with the trained C from the AttGAN checkpoint (the mean over its 8 symmetric views), beside
the meter's readings of the same edits (``reports/evaluate_attgan/control_readings.csv``). Then
the renderer's true one-attribute interventions (the meter ceiling's sweep) read by C: a leak
there is C's own, and C's over-read of the edits per knob (how much further C reads them,
relative to a true change, than the meter does). Then the regressor's read of the same edits
against the true interventions: how much of a real change's predicted stress each knob's edit
carries, beside what the meter sees of the edits predicts it would read (the edits' meter
slopes expressed as true interventions, times the regressor's slope on each), and the same read
split by scale (each tile's change along its sweep cut into difference-of-Gaussian bands, read
one band at a time). Then the meter's median readings along the size sweep, edits beside true
interventions (particle count and dispersity), and the spread of particle diameters within a
tile along it (which particles make a sweep's dispersity). Last, the texture loss's target
``W`` (fit on the training lots, as ``train_attgan`` fits it) beside the texture change of the
true interventions and of the edits.
Needs ``make repro`` (or a study workspace); writes a markdown report.

    python benchmarks/concept_leak.py [--workspace DIR] [--out benchmarks/concept_leak.md]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy.ndimage import gaussian_filter

from semknobs.attributes import ATTRIBUTES, AttributeScaler
from semknobs.config import from_mapping, load_params, load_section
from semknobs.data.dataset import load_tileset
from semknobs.data.schemas import read_lots
from semknobs.data.split import Splits, read_splits
from semknobs.data.truth import read_truth, tile_truth
from semknobs.evaluation.attgan import (
    control_from_table,
    control_slopes,
    slope_matrix,
    sweep_edits,
    sweep_table,
)
from semknobs.evaluation.ceiling import render_sweep
from semknobs.evaluation.oracle import Oracle, OracleParams, Synthetic
from semknobs.evaluation.referee import label_fit
from semknobs.explain.bundle import in_batches
from semknobs.meter import COUNT, MeasureParams, MeterParams, particle_diameters
from semknobs.models.concept import ConceptNet
from semknobs.models.regressor import PeakStressRegressor, predict
from semknobs.pixels import to_model
from semknobs.serving import attgan_model, regressor_model
from semknobs.serving.attgan_model import AttGANFolder
from semknobs.stages.evaluate_attgan import NAME, EvaluateAttGANParams
from semknobs.train.attgan_params import AttGANTrainParams
from semknobs.train.texture import TextureTarget, stat_names, texture_stats

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the study's C, restored one way
from explain_levers import concept_net

A = list(ATTRIBUTES)
BAND_SIGMAS = (1, 2, 4, 8)  # px: bands <= 1, 1-2, 2-4, 4-8 px and the low-pass rest
BANDS = ["<= 1 px", "1-2 px", "2-4 px", "4-8 px", "> 8 px"]


def read_c(net: ConceptNet, tiles: np.ndarray) -> np.ndarray:
    """C's readings of the four knobs (knob units) of uint8 tiles, the mean over its 8 symmetric
    views (a particle-count read, when C has one, is left out)."""
    read = in_batches(lambda x: net(x, symmetric=True), to_model(tiles, "cpu"), 128).numpy()
    return read[:, : len(ATTRIBUTES)]


def texture_slope(tiles: np.ndarray, levels: np.ndarray, target: TextureTarget) -> np.ndarray:
    """Slope of each texture statistic (in spreads) on the requested level, centred per sweep."""
    stats = in_batches(lambda x: texture_stats(x, target.levels), to_model(tiles, "cpu"), 256)
    stats = stats.numpy() / target.scale.numpy()
    stats = stats.reshape(-1, len(levels), stats.shape[1])
    stats = stats - stats.mean(axis=1, keepdims=True)
    x = levels - levels.mean()
    return np.einsum("p,npt->t", x, stats) / (len(stats) * (x * x).sum())


@dataclass
class Editor:
    """A workspace's trained editor, its concept network and evaluate_attgan's control tiles."""

    ws: Path
    params: EvaluateAttGANParams
    train: AttGANTrainParams
    gen: torch.nn.Module
    config: AttGANFolder
    scaler: AttributeScaler
    splits: Splits
    net: ConceptNet
    meter: MeterParams  # the measure stage's
    tiles: pd.DataFrame  # the manifest rows of the control tiles
    images: np.ndarray
    attrs: np.ndarray

    @property
    def levels(self) -> np.ndarray:
        return np.linspace(0, 1, self.params.points)

    @property
    def lots_csv(self) -> Path:
        return self.ws / "data/synthetic/lots.csv"

    def texture_target(self, regions: bool = False) -> TextureTarget:
        """The texture loss's target, fit on the editor's training lots as train_attgan fits it
        (``regions``: with the region statistics, whatever the editor trained with)."""
        lots = self.config.train_lots or self.splits.training_lots(
            str(self.ws / "data/splits.json")
        )
        tr = load_tileset(
            tiles_dir=self.ws / "data/tiles", lots_csv=self.lots_csv, lots=lots, scaler=self.scaler
        )
        return TextureTarget.fit(
            tr.images, tr.attrs, tr.manifest["lot"].to_numpy(), self.train.texture_levels,
            regions=regions,
        )  # fmt: skip


def load_editor(ws: Path) -> Editor:
    params = load_section(EvaluateAttGANParams, NAME, ws / "params.yaml")
    train = from_mapping(
        AttGANTrainParams, load_params(ws / "params.yaml")["train_attgan"]["train"]
    )
    meter = load_section(MeasureParams, "measure", ws / "params.yaml").meter
    gen, config = attgan_model.load(ws / "models/attgan")
    scaler = AttributeScaler.from_dict(config.scaler)
    splits = read_splits(ws / "data/splits.json")
    test = load_tileset(
        tiles_dir=ws / "data/tiles",
        lots_csv=ws / "data/synthetic/lots.csv",
        lots=splits.test,
        scaler=scaler,
    )
    rng = np.random.default_rng(params.seed)  # evaluate_attgan's seeded pick
    pick = rng.choice(len(test.images), min(params.n_tiles, len(test.images)), replace=False)
    return Editor(
        ws, params, train, gen, config, scaler, splits, concept_net(ws), meter,
        test.manifest.iloc[pick], test.images[pick], test.attrs[pick],
    )  # fmt: skip


def read_sweeps(ed: Editor, tiles: dict[str, np.ndarray]) -> pd.DataFrame:
    """C's readings of each knob's sweeps (sweep, level order) as one sweep table."""
    frames = [
        sweep_table(pd.DataFrame(read_c(ed.net, tiles[a]), columns=A), a, ed.levels) for a in A
    ]
    return pd.concat(frames, ignore_index=True)


def edit_sweeps(ed: Editor) -> dict[str, np.ndarray]:
    """evaluate_attgan's control sweep: the edits per knob."""
    return {
        knob: sweep_edits(ed.gen, ed.images, ed.attrs, k, ed.levels, ed.params.batch_size)
        for k, knob in enumerate(A)
    }


def true_sweeps(ed: Editor) -> dict[str, np.ndarray]:
    """The meter ceiling's sweep: true interventions rendered at the first ``ceiling.n_tiles``
    tiles' true attributes. Evaluation only: reads the truth."""
    params = ed.params
    synthetic = Synthetic.from_params(ed.ws / "params.yaml")
    truth = read_truth(ed.ws / "data/synthetic/truth")
    labels = read_lots(ed.lots_csv)
    labels[A] = ed.scaler.transform(labels[A].to_numpy())
    fit = label_fit(truth.lots, labels)
    n = min(params.ceiling.n_tiles, len(ed.tiles))
    true = tile_truth(truth.fields, ed.tiles)[A].to_numpy()[:n]
    ids = ed.tiles["tile"].to_numpy()[:n]
    oracle_params = OracleParams(fields=params.ceiling.fields, seed=params.ceiling.seed, n_jobs=1)
    with Oracle(synthetic.study, synthetic.tiling, None, oracle_params) as oracle:
        return {
            knob: render_sweep(oracle, true, k, ed.levels, fit, ids) for k, knob in enumerate(A)
        }


def texture_table(
    ed: Editor, edits: dict[str, np.ndarray], rendered: dict[str, np.ndarray]
) -> pd.DataFrame:
    """The texture loss's target W (fit on the training lots as train_attgan fits it) beside
    the texture change of the true interventions and of the edits, per knob unit."""
    target = ed.texture_target()
    rows = []
    for k, knob in enumerate(A):
        for source, v in (
            ("W (training lots)", (target.weight[:, k] / target.scale).numpy()),
            ("true intervention", texture_slope(rendered[knob], ed.levels, target)),
            ("edit", texture_slope(edits[knob], ed.levels, target)),
        ):
            rows.append({"knob": knob, "source": source, **dict(zip(stat_names(target.levels), v))})
    return pd.DataFrame(rows)


def sweep_medians(edits: pd.DataFrame, true: pd.DataFrame, knob: str) -> pd.DataFrame:
    """The meter's median readings (and particle count) at each level of one knob's sweep, the
    editor's edits beside the renderer's true interventions."""
    columns = [*A, COUNT]
    parts = {
        source: table[table["requested_attr"] == knob].groupby("requested")[columns].median()
        for source, table in (("edit", edits), ("true", true))
    }
    out = pd.concat(parts, names=["source", "requested"]).T
    out.columns = [f"{source} {level:g}" for source, level in out.columns]
    return out


def size_spread(
    ed: Editor, edits: dict[str, np.ndarray], rendered: dict[str, np.ndarray], n: int
) -> pd.DataFrame:
    """Along the size sweep, the first ``n`` sweeps of each kind (edits of the first ``n`` tiles,
    the first ``n`` rendered true sweeps: one render of a tile's truth gives several tiles, each
    a sweep) and the first ``n`` source tiles: every whole particle's diameter over its tile's
    median, pooled; where a sweep's dispersity comes from (a tail of small particles, of large
    ones, or a spread of all)."""
    side = ed.images.shape[-1]
    groups = {"source": ed.images[:n]}
    for source, tiles in (("edit", edits["size"]), ("true", rendered["size"])):
        tiles = tiles.reshape(-1, len(ed.levels), side, side)[:n]
        groups |= {f"{source} {level:g}": tiles[:, i] for i, level in enumerate(ed.levels)}
    rows = {}
    for name, tiles in groups.items():
        per_tile = [particle_diameters(t, ed.meter) for t in tiles]
        ratio = np.concatenate([d / np.median(d) for d in per_tile if len(d)])
        rows[name] = {
            "particles per tile": np.median([len(d) for d in per_tile]),
            **{f"q{q}": np.quantile(ratio, q / 100) for q in (5, 25, 75, 95)},
            "share < 0.6": np.mean(ratio < 0.6),
            "share > 1.4": np.mean(ratio > 1.4),
        }
    return pd.DataFrame(rows).T


def meter_gain(ws: Path) -> pd.Series:
    """The meter's gain on the held-out control sweep's edits per knob, as ``evaluate_attgan``
    reports it (``control/gain_<knob>``)."""
    metrics = json.loads((ws / "metrics/attgan.json").read_text())
    return pd.Series({a: metrics[f"control/gain_{a}"] for a in A})


def over_read(gain: pd.Series, c_edits: pd.DataFrame, c_true: pd.DataFrame) -> pd.DataFrame:
    """Per knob: how far C reads the edits relative to a true change (its slope on the edits
    over its slope on the true interventions), the meter's ``gain`` on the same edits
    (:func:`meter_gain`), and their ratio, C's over-read: above 1, C
    sees more of a change in the edits than the meter does, and the concept loss, satisfied when
    C is, lets the edit stop short of what the meter would read (README, Rule E)."""
    c_rel = pd.Series(control_slopes(c_edits)) / pd.Series(control_slopes(c_true))
    return pd.DataFrame({"C, edit over true": c_rel, "meter gain": gain, "over-read": c_rel / gain})


def prediction_slopes(mpa: dict[str, np.ndarray], levels: np.ndarray) -> pd.Series:
    """Per knob, the slope (MPa per knob unit) of its sweeps' predictions (sweep, level order)
    on the requested level: the prediction read as the turned knob's reading, which
    ``control_slopes`` reads."""
    tables = [sweep_table(pd.DataFrame({knob: p}), knob, levels) for knob, p in mpa.items()]
    return pd.Series(control_slopes(pd.concat(tables, ignore_index=True)))


def predict_unrounded(reg: PeakStressRegressor, tiles: np.ndarray) -> np.ndarray:
    """The regressor's predictions (MPa, float64) of model-range tiles (n, S, S), not rounded to
    uint8 as :func:`predict` would: a tile plus one part of a change is not an image file."""
    x = torch.from_numpy(tiles).float().unsqueeze(1)
    return in_batches(reg.predict_mpa, x, 256).double().numpy()


def regressor_read(
    reg: PeakStressRegressor,
    gain: pd.Series,
    edits: dict[str, np.ndarray],
    rendered: dict[str, np.ndarray],
    levels: np.ndarray,
    meter: tuple[pd.DataFrame, pd.DataFrame],
) -> pd.DataFrame:
    """Per knob: the regressor's slope (MPa per requested knob unit) on the edits and on the true
    interventions, their ratio, and that ratio over the meter's ``gain``: the regressor's over-read.
    Above 1, the regressor reads more stress change in the edit than a real change carrying the
    concept change the meter sees in it would give; below 1, less. What the knob gradient's
    per-knob magnitudes are made of (README, AttGAN: what the regressor reads in the edits).
    ``meter`` (the edits' and the ceiling's sweep tables) gives "meter-predicted": the edit's
    meter slopes on all four readings expressed as true interventions (``S_edit S_true^-1``)
    times the regressor's slope on each, what it would read if it read only what the meter sees."""

    def slopes(tiles: dict[str, np.ndarray]) -> pd.Series:
        return prediction_slopes({knob: predict(reg, tiles[knob]) for knob in A}, levels)

    r_edit, r_true = slopes(edits), slopes(rendered)
    s_edit, s_true = (slope_matrix(t).to_numpy(float) for t in meter)
    ratio = r_edit / r_true
    return pd.DataFrame(
        {
            "R on edits": r_edit,
            "R on true": r_true,
            "edit over true": ratio,
            "meter gain": gain,
            "over-read": ratio / gain,
            "meter-predicted": s_edit @ np.linalg.inv(s_true) @ r_true.to_numpy(),
        }
    )


def dog_bands(d: np.ndarray) -> list[np.ndarray]:
    """(n, S, S) -> its difference-of-Gaussian bands (``BAND_SIGMAS``) and the low-pass rest,
    which sum to ``d``."""
    blurred = [d] + [
        np.stack([gaussian_filter(t, s, mode="reflect") for t in d]) for s in BAND_SIGMAS
    ]
    return [a - b for a, b in itertools.pairwise(blurred)] + [blurred[-1]]


def band_parts(tiles: np.ndarray, levels: np.ndarray) -> dict[str, np.ndarray]:
    """Sweeps of uint8 ``tiles`` (sweep, level order) rebuilt as each sweep's mean tile plus the
    whole of each level's change from it ("whole") or one of its bands (``BANDS``), in model
    units, not rounded."""
    x = to_model(tiles).squeeze(1).double().numpy().reshape(-1, len(levels), *tiles.shape[1:])
    mean = x.mean(axis=1, keepdims=True)
    change = (x - mean).reshape(-1, *tiles.shape[1:])
    base = np.broadcast_to(mean, x.shape).reshape(change.shape)
    return {"whole": base + change} | {
        name: base + band for name, band in zip(BANDS, dog_bands(change), strict=True)
    }


def band_table(
    reg: PeakStressRegressor,
    edits: dict[str, np.ndarray],
    rendered: dict[str, np.ndarray],
    levels: np.ndarray,
    n: int,
) -> pd.DataFrame:
    """Per knob, the regressor's slope (MPa per knob unit) on its edits' sweeps (the first ``n``,
    the true interventions' tiles) and on the true interventions, rebuilt by
    :func:`band_parts`: which scales of a change the regressor reads. The bands' reads need
    not sum to the whole's (the regressor is not linear)."""
    rows = {f"{knob}, {kind}": {} for knob in A for kind in ("edit", "true")}
    for kind, tiles in (("edit", {k: edits[k][: n * len(levels)] for k in A}), ("true", rendered)):
        parts = {knob: band_parts(tiles[knob], levels) for knob in A}
        for name in ["whole", *BANDS]:
            slopes = prediction_slopes(
                {k: predict_unrounded(reg, parts[k][name]) for k in A}, levels
            )
            for knob in A:
                rows[f"{knob}, {kind}"][name] = slopes[knob]
    return pd.DataFrame(rows).T


def report(ws: Path) -> str:
    ed = load_editor(ws)
    edits, rendered = edit_sweeps(ed), true_sweeps(ed)
    c_edits, c_true = read_sweeps(ed, edits), read_sweeps(ed, rendered)
    texture = texture_table(ed, edits, rendered)
    meter_edits = pd.read_csv(ws / "reports/evaluate_attgan/control_readings.csv")
    meter_true = pd.read_csv(ws / "reports/evaluate_attgan/ceiling_readings.csv")
    n = min(ed.params.ceiling.n_tiles, len(ed.tiles))
    gain = meter_gain(ws)
    reg, _ = regressor_model.load(ws / "models/regressor")
    reg.eval()

    def md(frame: pd.DataFrame, digits: int = 2) -> str:
        return frame.round(digits).to_markdown()

    per_knob = "rows: the knob turned; columns: the reading"
    return (
        "\n\n".join(
            [
                f"# Does the concept network see the leaks? ({ws.resolve().name})",
                f"Held-out control sweep of `evaluate_attgan` ({len(ed.images)} tiles x "
                f"{len(ed.levels)} levels per knob); the true interventions on the first {n} of "
                f"them. {per_knob}.",
                "## Edits, Spearman (within tile), meter\n\n" + md(control_from_table(meter_edits)),
                "## Edits, Spearman (within tile), C\n\n" + md(control_from_table(c_edits)),
                "## Edits, C's slope (knob units per unit requested)\n\n"
                + md(slope_matrix(c_edits), 3),
                "## True interventions, Spearman, meter (the ceiling)\n\n"
                + md(control_from_table(meter_true)),
                "## True interventions, Spearman, C\n\n" + md(control_from_table(c_true)),
                "## True interventions, C's slope\n\n" + md(slope_matrix(c_true), 3),
                "## C's over-read of the edits (per knob turned)\n\n"
                + md(over_read(gain, c_edits, c_true)),
                "## The regressor's read of the edits (per knob turned; slopes in MPa per knob "
                "unit)\n\n"
                + md(
                    regressor_read(reg, gain, edits, rendered, ed.levels, (meter_edits, meter_true))
                ),
                "## The regressor's read by scale (MPa per knob unit; each sweep's mean tile plus "
                f"one band of its change; the first {n} sweeps)\n\n"
                + md(band_table(reg, edits, rendered, ed.levels, n)),
                "## The size sweep as the meter reads it (medians per requested level)\n\n"
                + md(sweep_medians(meter_edits, meter_true, "size"), 3),
                "## Particle sizes along the size sweep: each whole particle's diameter over "
                f"its tile's median (the first {n} sweeps of each kind, pooled)\n\n"
                + md(size_spread(ed, edits, rendered, n), 3),
                "## Texture change per knob unit, in spreads of the real tiles\n\n"
                + texture.round(2).to_markdown(index=False),
            ]
        )
        + "\n"
    )


def report_main(
    make_report: Callable[[Path], str] | Callable[[list[Path]], str],
    description: str,
    out: str,
    many: bool = False,
) -> int:
    """The command line of a workspace report: ``--workspace DIR --out FILE`` (markdown); with
    ``many``, ``--workspace`` is given once or more and the report gets the list."""
    parser = argparse.ArgumentParser(description=description)
    if many:
        parser.add_argument("--workspace", type=Path, action="append", required=True)
    else:
        parser.add_argument("--workspace", type=Path, default=Path("."))
    parser.add_argument("--out", type=Path, default=Path(out))
    args = parser.parse_args()
    torch.set_num_threads(2)
    text = make_report(args.workspace)
    args.out.write_text(text)
    print(text)
    return 0


def main() -> int:
    return report_main(report, __doc__.splitlines()[0], "benchmarks/concept_leak.md")


if __name__ == "__main__":
    raise SystemExit(main())
