"""Stage ``evaluate_attgan``: the trained AttGAN on the held-out test lots.

Reconstruction (PSNR, SSIM), concept control by the attribute meter (within-tile Spearman, the
largest leakage, and the effect size as a slope), realism of edits. On a synthetic study the
same control sweep is also run on the renderer's true interventions (the meter's ceiling,
:mod:`semknobs.evaluation.ceiling`), so every control figure stands beside the best the meter
can show. Training never sees any of it: this stage runs after ``train_attgan``.

Texture agreement (no truth needed): how one knob unit moves the tiles' grey-level mean, spread
and band energies (:mod:`semknobs.train.texture`), against how those statistics differ across
the AttGAN's training lots (``texture/miss_<a>``, ``texture/cosine_<a>``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from semknobs.atomic import atomic_path
from semknobs.attributes import ATTRIBUTES, AttributeScaler
from semknobs.config import load_section
from semknobs.data.dataset import load_tileset
from semknobs.data.schemas import read_lots
from semknobs.data.split import read_splits
from semknobs.data.truth import read_truth, tile_truth
from semknobs.evaluation.attgan import (
    AttGANEvalParams,
    control_figure,
    evaluate_attgan,
    texture_figure,
)
from semknobs.evaluation.ceiling import ceiling
from semknobs.evaluation.oracle import Oracle, OracleParams, Synthetic
from semknobs.evaluation.referee import label_fit
from semknobs.explain.edit_texture import NO_EDIT_MISS, region_miss_key
from semknobs.meter import MeasureParams, MeterParams
from semknobs.pixels import to_model
from semknobs.serving import attgan_model
from semknobs.stage import StageContext, StageResult, save_figure, write_metrics
from semknobs.train.attgan_params import AttGANTrainParams
from semknobs.train.texture import (
    MIN_TEXTURE_LOTS,
    REGIONS,
    TextureTarget,
    region_agreement,
    texture_agreement,
)


@dataclass(frozen=True)
class CeilingParams:
    n_tiles: int = 48  # the first n of the control tiles are rendered (2 tiles per render)
    fields: tuple[int, int] = (2, 1)  # fields per rendered scan
    seed: int = 0
    n_jobs: int = 2


@dataclass(frozen=True)
class EvaluateAttGANParams(AttGANEvalParams):
    """The ``evaluate_attgan`` section (and, on a synthetic study, how the study was made)."""

    ceiling: CeilingParams = field(default_factory=CeilingParams)
    synthetic: Synthetic | None = None  # filled from the synthesize/tile sections with a truth
    meter: MeterParams | None = None  # filled from the measure section: control is read with it


NAME = "evaluate_attgan"
Params = EvaluateAttGANParams
DEPS = ("attgan_dir", "tiles_dir", "lots", "splits")


@dataclass(frozen=True)
class Paths:
    attgan_dir: Path
    tiles_dir: Path
    lots: Path
    splits: Path
    metrics: Path
    reports: Path
    truth_dir: Path | None = field(
        default=None, metadata={"help": "synthetic ground truth: adds the meter's ceiling"}
    )


def load(params_file: Path, paths: Paths) -> EvaluateAttGANParams:
    params = load_section(EvaluateAttGANParams, NAME, params_file)
    params = replace(params, meter=load_section(MeasureParams, "measure", params_file).meter)
    if paths.truth_dir is None:
        return params
    return replace(params, synthetic=Synthetic.from_params(params_file))


def run(params: EvaluateAttGANParams, paths: Paths, ctx: StageContext | None = None) -> StageResult:
    gen, config = attgan_model.load(paths.attgan_dir)
    scaler = AttributeScaler.from_dict(config.scaler)
    splits = read_splits(paths.splits)
    test = load_tileset(
        tiles_dir=paths.tiles_dir, lots_csv=paths.lots, lots=splits.test, scaler=scaler
    )
    ev = evaluate_attgan(gen, test.images, test.attrs, params, params.meter)
    metrics = dict(ev.metrics)
    figures = dict(ev.figures)
    train_lots = config.train_lots or splits.training_lots(str(paths.splits))
    texture = _texture(
        gen, config, paths, scaler, train_lots, test.images[ev.pick], test.attrs[ev.pick]
    )
    summary = [f"test/psnr = {metrics['test/psnr']:.2f} dB"]
    if texture is None:
        summary.append(f"texture agreement skipped: {len(train_lots)} training lots are too few")
    else:
        metrics |= texture[0] | texture[2]
        figures["texture.png"] = texture_figure(texture[1], texture[0])
        figures["texture_regions.png"] = texture_figure(
            texture[3], texture[2], "texture/region_miss", "Where in the tile a knob unit moves "
            "the grey levels and bands: crystal interiors, outlines, background",
        )  # fmt: skip
        summary += _largest_region_misses(texture[3], texture[2])
    truth_matrix = None
    if paths.truth_dir is not None and params.synthetic is not None:
        found = _ceiling(params, paths, test.manifest.iloc[ev.pick], scaler, metrics)
        if found is None:
            summary.append(f"meter ceiling skipped: {paths.truth_dir} is not these tiles' truth")
        else:
            truth_matrix, table = found
            reports = paths.reports
            with atomic_path(reports / "ceiling_readings.csv") as tmp:
                table.to_csv(tmp, index=False, float_format="%.5g")
            figures["control.png"] = control_figure(ev.matrix, truth_matrix)
    for a in ATTRIBUTES:
        line = f"control/spearman_{a} = {metrics[f'control/spearman_{a}']:+.2f}"
        if truth_matrix is not None:
            line += (
                f" (ceiling {metrics[f'control/ceiling_{a}']:+.2f}, "
                f"gain {metrics[f'control/gain_{a}']:.2f})"
            )
        summary.append(line)
    write_metrics(paths.metrics, metrics)
    with atomic_path(paths.reports / "control_readings.csv") as tmp:
        ev.control.to_csv(tmp, index=False, float_format="%.5g")
    if texture is not None:
        for name, table in (("texture.csv", texture[1]), ("texture_regions.csv", texture[3])):
            with atomic_path(paths.reports / name) as tmp:
                table.to_csv(tmp, index=False, float_format="%.5g")
    for name, figure in figures.items():
        save_figure(figure, paths.reports / name)
    return StageResult(metrics, {"figures": paths.reports}, summary)


def _texture(gen, config, paths, scaler, train_lots, images, attrs):
    """Texture agreement of the edits of these test tiles against the AttGAN's training lots
    (with the statistics it trained with, or the default ones), then the same by region
    (:func:`region_agreement`, whatever it trained with): (metrics, table, region metrics,
    region table); None with too few lots."""
    if len(train_lots) < MIN_TEXTURE_LOTS:
        return None
    levels = int(config.train.get("texture_levels", AttGANTrainParams.texture_levels))
    regions = config.train.get("texture_regions", AttGANTrainParams.texture_regions)
    train = load_tileset(
        tiles_dir=paths.tiles_dir, lots_csv=paths.lots, lots=train_lots, scaler=scaler
    )
    lots = train.manifest["lot"].to_numpy()
    x, a = to_model(images), torch.from_numpy(attrs)
    target = TextureTarget.fit(train.images, train.attrs, lots, levels, regions=regions)
    by_region = (
        target
        if target.regions == REGIONS
        else TextureTarget.fit(train.images, train.attrs, lots, levels, regions=True)
    )
    return (*texture_agreement(gen, x, a, target), *region_agreement(gen, x, a, by_region))


def _largest_region_misses(table: pd.DataFrame, metrics: dict[str, float]) -> list[str]:
    """Per knob, the region statistic its edits move furthest from the lots' fit (spreads), and
    a warning where the edits' region statistics are further from the lots than an edit that
    changes nothing (``texture/region_miss_<knob>`` past
    :data:`~semknobs.explain.edit_texture.NO_EDIT_MISS`)."""
    lines = []
    for knob, part in table.groupby("knob", sort=False):
        row = part.loc[(part["edit"] - part["lots"]).abs().idxmax()]
        miss = metrics[region_miss_key(knob)]
        line = (
            f"texture by region, {knob} knob: {row['statistic']} {row['edit']:+.2f} spreads "
            f"per unit (training lots {row['lots']:+.2f}); region miss {miss:.2f}"
        )
        if miss > NO_EDIT_MISS:
            line += " - WARNING: further from real lots than no edit; the regressor may read it"
        lines.append(line)
    return lines


def _ceiling(params, paths, tiles, scaler, metrics):
    synthetic = params.synthetic
    truth = read_truth(paths.truth_dir)
    true = tile_truth(truth.fields, tiles)[list(ATTRIBUTES)]
    if true.isna().any(axis=None):
        return None
    labels = read_lots(paths.lots)
    labels[list(ATTRIBUTES)] = scaler.transform(labels[list(ATTRIBUTES)].to_numpy())
    n = min(params.ceiling.n_tiles, len(tiles))
    oracle_params = OracleParams(
        fields=params.ceiling.fields, seed=params.ceiling.seed, n_jobs=params.ceiling.n_jobs
    )
    slopes = {a: metrics[f"control/slope_{a}"] for a in ATTRIBUTES}
    with Oracle(synthetic.study, synthetic.tiling, None, oracle_params) as oracle:
        result = ceiling(
            oracle,
            true.to_numpy()[:n],
            label_fit(truth.lots, labels),
            np.linspace(0, 1, params.points),
            tiles["tile"].to_numpy()[:n],
            attgan_slopes=slopes,
            meter=params.meter,
        )
    metrics |= result.metrics
    return result.matrix, result.table
