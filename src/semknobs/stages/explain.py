"""Stage ``explain``: concept explanations of the regressor through the AttGAN's knobs, their
Captum and correlation baselines, and -- on a synthetic study -- the referee's verdict.

Every lot gets ``tiles_per_lot`` explained tiles (the figures and per-lot tables); the held-out
test lots get ``referee.tiles_per_lot``. Only test-lot tiles are scored: 24 of the 30 lots
trained both models. The explainers (:mod:`semknobs.explain`) never see the truth; the referee
(:mod:`semknobs.evaluation.referee`, evaluation only) scores what they said afterwards.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from semknobs.atomic import atomic_path
from semknobs.attributes import ATTRIBUTES, AttributeScaler
from semknobs.config import load_section
from semknobs.data.schemas import read_lots
from semknobs.data.split import read_splits
from semknobs.data.tiles import load_tiles
from semknobs.data.truth import read_truth, tile_truth
from semknobs.evaluation.oracle import Oracle, Synthetic
from semknobs.evaluation.referee import Counterfactuals, RefereeParams, referee
from semknobs.explain import edit_texture
from semknobs.explain.agreement import agreed_signs, coverage
from semknobs.explain.figures import knob_checks_figure
from semknobs.explain.gradient import lot_mean
from semknobs.explain.knob_read import KnobReadParams, knob_read, read_metrics
from semknobs.explain.limits import SearchLimits
from semknobs.explain.lot_support import MIN_SUPPORT_LOTS, flag_lines, lot_support
from semknobs.explain.measured import (
    CorrectedParams,
    calibrated_readings,
    corrected_attribution,
    fit_from_files,
    gain_corrected,
    measured_jacobian,
    tile_gain_corrected,
)
from semknobs.explain.natural import MeterRegression, MeterRegressionParams
from semknobs.explain.study import ExplainOutput, ExplainParams, explain, sample_tiles
from semknobs.meter import MeasureParams
from semknobs.models.regressor import predict
from semknobs.pixels import to_model
from semknobs.serving import attgan_model, regressor_model
from semknobs.stage import StageContext, StageResult, save_figure, write_metrics

HEADLINE = (
    "knob_gradient/er/cosine_median",
    "knob_gradient/er/centred_cosine",
    "knob_gradient/er/lot_centred_cosine",
    *(f"knob_gradient/er/sign_{a}" for a in ATTRIBUTES),
    *(f"knob_gradient_crystal/er/sign_{a}" for a in ATTRIBUTES),
    "knob_gradient_lot/er/cosine_median",
    "knob_gradient_lot/er/lot_centred_cosine",
    *(f"knob_gradient_lot/er/sign_{a}" for a in ATTRIBUTES),
    "knob_gradient_gain/er/cosine_median",
    "knob_gradient_gain/er/lot_centred_cosine",
    "knob_gradient_tile_gain/er/cosine_median",
    "knob_gradient_tile_gain/er/centred_cosine",
    "meter_regression/er/cosine_median",
    "meter_regression/er/lot_centred_cosine",
    *(f"meter_regression/er/sign_{a}" for a in ATTRIBUTES),
    "agreed_signs/lots/coverage",
    "agreed_signs/er/coverage",
    "agreed_signs/er/sign_accuracy",
    "agreed_signs/er/errors_flagged",
    "oracle/lot_centred_cosine_ceiling",
    "regressor/rl/cosine_median",
    "counterfactual/validity_model",
    "counterfactual/validity_law",
    "counterfactual/success_rate",
    "recon/shift_pct_range",
)


@dataclass(frozen=True)
class ExplainStageParams(ExplainParams):
    """The ``explain`` section (and, on a synthetic study, how the study was made)."""

    referee: RefereeParams = field(default_factory=RefereeParams)
    corrected: CorrectedParams = field(default_factory=CorrectedParams)
    meter_regression: MeterRegressionParams = field(default_factory=MeterRegressionParams)
    knob_read: KnobReadParams = field(default_factory=KnobReadParams)
    limits: SearchLimits = field(default_factory=SearchLimits)  # the bundle's (register)
    synthetic: Synthetic | None = None  # filled from the synthesize/tile sections with a truth
    measure: MeasureParams = field(default_factory=MeasureParams)  # the measure section


NAME = "explain"
Params = ExplainStageParams
DEPS = ("attgan_dir", "regressor_dir", "tiles_dir", "lots", "attgan_metrics")


@dataclass(frozen=True)
class Paths:
    attgan_dir: Path
    regressor_dir: Path
    tiles_dir: Path
    lots: Path
    splits: Path
    metrics: Path
    reports: Path
    truth_dir: Path | None = field(
        default=None, metadata={"help": "synthetic ground truth: adds the referee"}
    )
    measurements: Path | None = field(
        default=None, metadata={"help": "the measure stage's readings: the corrected gradient"}
    )
    attgan_metrics: Path | None = field(
        default=None, metadata={"help": "evaluate_attgan's metrics: the edits' region misses"}
    )


def load(params_file: Path, paths: Paths) -> ExplainStageParams:
    params = load_section(ExplainStageParams, NAME, params_file)
    params = replace(params, measure=load_section(MeasureParams, "measure", params_file))
    if paths.truth_dir is None:
        return params
    return replace(params, synthetic=Synthetic.from_params(params_file))


def run(params: ExplainStageParams, paths: Paths, ctx: StageContext | None = None) -> StageResult:
    edits = None if paths.attgan_metrics is None else edit_texture.from_file(paths.attgan_metrics)
    torch.manual_seed(params.seed)
    gen, gan_config = attgan_model.load(paths.attgan_dir)
    reg, _ = regressor_model.load(paths.regressor_dir)
    scaler = AttributeScaler.from_dict(gan_config.scaler)
    labels = read_lots(paths.lots)
    splits = read_splits(paths.splits)
    train = labels[labels["lot"].isin(splits.train)]
    stress_range = float(train["peak_stress"].max() - train["peak_stress"].min())
    normalised = labels.copy()
    normalised[list(ATTRIBUTES)] = np.clip(
        scaler.transform(labels[list(ATTRIBUTES)].to_numpy()), 0, 1
    )

    all_tiles, manifest = load_tiles(paths.tiles_dir)
    per_lot = {lot: params.referee.tiles_per_lot for lot in splits.test}
    rows = sample_tiles(manifest, params.tiles_per_lot, params.seed, counts=per_lot)
    tiles = manifest.iloc[rows].reset_index(drop=True)
    images = to_model(all_tiles[rows])
    attrs = torch.from_numpy(
        normalised.set_index("lot").loc[tiles["lot"], list(ATTRIBUTES)].to_numpy()
    ).float()

    out = explain(
        gen=gen,
        reg=reg,
        images=images,
        attrs=attrs,
        tiles=tiles,
        lots=normalised,
        stress_range=stress_range,
        layer=reg.net.layer4,
        params=params,
    )
    metrics = dict(out.metrics)
    tables, figures = dict(out.tables), dict(out.figures)
    # what the training lots support, beside what the regressor is said to use (proxy flags)
    knob_train = train.copy()  # unclipped knob units: the fit is affine in the raw scores
    knob_train[list(ATTRIBUTES)] = scaler.transform(train[list(ATTRIBUTES)].to_numpy())
    lot_gradient = lot_mean(out.knob_gradient.gradient, tiles["lot"])
    tables["knob_gradient"] = tables["knob_gradient"].assign(
        **{f"lot_gradient_{a}": lot_gradient[:, j] for j, a in enumerate(ATTRIBUTES)}
    )
    uses = {
        "knob_gradient": out.knob_gradient.gradient,
        "knob_gradient_lot": lot_gradient,
        "sensitivity": out.sweep.slopes(),
    }
    corrected, summary_natural, agreement = None, [], None
    if paths.measurements is not None:  # what the knobs really moved, by the meter
        calib = fit_from_files(
            paths.measurements, labels, list(splits.train), scaler, params.measure.meter
        )
        jac = measured_jacobian(
            gen, images, attrs, calib, params.corrected.step, params.measure.n_jobs
        )
        c = params.corrected
        corrected = corrected_attribution(
            out.knob_gradient.gradient, jac, tiles["lot"].to_numpy(),
            max_condition=c.max_condition, bootstrap=c.bootstrap, seed=c.seed,
        )  # fmt: skip
        if np.isfinite(corrected.attribution).all():
            uses["corrected_gradient"] = corrected.attribution
        gain = gain_corrected(
            out.knob_gradient.gradient, jac, tiles["lot"].to_numpy(), c.gain_clip, c.gain_min
        )
        uses["knob_gradient_gain"] = gain
        own = tile_gain_corrected(
            out.knob_gradient.gradient, jac, tiles["lot"].to_numpy(), c.tile_weight,
            c.gain_clip, c.gain_min,
        )  # fmt: skip
        uses["knob_gradient_tile_gain"] = own
        tables["knob_gradient"] = tables["knob_gradient"].assign(
            **{f"gain_gradient_{a}": gain[:, j] for j, a in enumerate(ATTRIBUTES)},
            **{f"tile_gain_gradient_{a}": own[:, j] for j, a in enumerate(ATTRIBUTES)},
        )
        # the regressor across the natural variation of each lot's tiles, as the meter reads it
        readings = calibrated_readings(paths.measurements, manifest, calib)
        natural = MeterRegression(reg, params.meter_regression).attribute(
            all_tiles, readings, manifest["lot"]
        )
        tables["meter_regression"] = natural.table
        slopes = natural.per_tile(tiles["lot"])
        if np.isfinite(slopes).all():
            uses["meter_regression"] = slopes
        else:
            summary_natural.append("meter regression: a lot without slopes (too few tiles read)")
        read = knob_read(tables["knob_gradient"], natural.table, params.knob_read)
        tables["knob_read"] = read
        metrics |= read_metrics(read)
        summary_natural.append(
            "the regressor's read of each knob's edits against real tiles (truth-free): "
            + ", ".join(f"{r.attribute} {r.read:.2f}{' LOW' * r.low}" for r in read.itertuples())
        )
        tables["agreed_signs"], agreed = _agreed_signs(gain, slopes, tiles["lot"])
        agreement = (gain, slopes)  # NaN slopes allowed: undetermined
        metrics |= agreed
        summary_natural.append(
            "signs the gain-corrected knob gradient and the meter regression agree on, share of "
            "lots: "
            + ", ".join(f"{a} {agreed[f'agreed_signs/lots/coverage_{a}']:.2f}" for a in ATTRIBUTES)
        )
        tables["corrected_gradient"] = corrected.table()
        tables["measured_jacobian"] = pd.DataFrame(
            corrected.jacobian, columns=[f"knob_{a}" for a in ATTRIBUTES]
        ).assign(measured=list(ATTRIBUTES))
        metrics["corrected_gradient/condition"] = corrected.condition
        for j, a in enumerate(ATTRIBUTES):
            metrics[f"corrected_gradient/gain_{a}"] = float(corrected.jacobian[j, j])
            metrics[f"corrected_gradient/flag_{a}"] = float(corrected.flags[j])
        summary_corrected = [
            f"corrected gradient: cond(J) = {corrected.condition:.1f}; flagged: "
            + (", ".join(a for a, f in zip(ATTRIBUTES, corrected.flags) if f) or "none")
            + ("" if "corrected_gradient" in uses else " (J not invertible: not scored)")
        ]
    else:
        summary_corrected = []
    if paths.attgan_metrics is not None:  # the editor's truth-free region misses, beside the read
        if edits is None:
            summary_natural.append(f"{paths.attgan_metrics}: no region misses (evaluate_attgan)")
        else:
            summary_natural.append(f"evaluate_attgan: {edit_texture.summary_line(edits)}")
            if "knob_read" in tables:
                tables["knob_read"] = _beside(tables["knob_read"], edits)
    crystal = edit_texture.crystal_from_metrics(metrics)
    if "knob_read" in tables:
        if crystal is not None:  # the third check: how much of the read lives off the background
            tables["knob_read"] = _beside(tables["knob_read"], crystal)
        figures["knob_checks.png"] = knob_checks_figure(
            tables["knob_read"], params.knob_read.min_read, edit_texture.NO_EDIT_MISS,
            edit_texture.CRYSTAL_MIN_SHARE,
        )  # fmt: skip
    support, summary = None, []
    if len(knob_train) < MIN_SUPPORT_LOTS:
        summary.append(
            f"lot support skipped: {len(knob_train)} training lots, need {MIN_SUPPORT_LOTS}"
        )
    else:
        support = lot_support(knob_train, uses, seed=params.seed)
        tables["lot_support"] = support
        fits = support.drop_duplicates("attribute")
        metrics |= {f"lots/fit_{r.attribute}": r.lot_fit for r in fits.itertuples()}
        metrics |= {
            f"{r.source}/lots/flag_{r.attribute}": float(r.flag) for r in support.itertuples()
        }
        summary += flag_lines(support)
    summary += summary_corrected + summary_natural
    summary.append(edit_texture.crystal_line(crystal))
    if paths.truth_dir is not None and params.synthetic is not None:
        test_rows = np.flatnonzero(tiles["lot"].isin(splits.test).to_numpy())
        # scored beside the others, not a proxy-flag source: it says where the read lives
        scored = uses | {"knob_gradient_crystal": out.knob_gradient_crystal.gradient}
        judged = _referee(
            params, paths.truth_dir, out, test_rows, labels, scaler, reg, support, scored, agreement
        )
        if judged is None:
            summary.append(f"referee skipped: {paths.truth_dir} is not these tiles' truth")
        else:
            metrics |= judged.metrics
            tables |= judged.tables
            figures |= judged.figures

    write_metrics(paths.metrics, metrics)
    _write_reports(paths.reports, tables, figures)
    summary += [f"{key} = {metrics[key]:.3f}" for key in HEADLINE if key in metrics]
    return StageResult(metrics, {"explain": paths.reports}, summary)


def _beside(read: pd.DataFrame, check: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """``read`` (a row per knob) with each field of a per-knob check (``edit_texture``'s
    ``{knob: {field: value}}``) as a column."""
    fields = next(iter(check.values()))
    return read.assign(**{f: [check[a][f] for a in read["attribute"]] for f in fields})


def _agreed_signs(
    gain: np.ndarray, slopes: np.ndarray, lots: pd.Series
) -> tuple[pd.DataFrame, dict[str, float]]:
    """Per lot and attribute, the lot's gain-corrected knob gradient, its meter regression and
    the sign they agree on (:mod:`semknobs.explain.agreement`); the share of lots with a sign."""
    first = np.sort(np.unique(lots, return_index=True)[1])  # each lot's first row, in order
    names = lots.to_numpy()[first]
    kgg, mr = gain[first], slopes[first]  # both already each row's lot value
    signs = agreed_signs(kgg, mr)
    table = pd.DataFrame(
        {
            "lot": np.repeat(names, len(ATTRIBUTES)),
            "attribute": np.tile(list(ATTRIBUTES), len(names)),
            "knob_gradient_gain": kgg.ravel(),
            "meter_regression": mr.ravel(),
            "agreed_sign": signs.ravel(),
        }
    )
    return table, {f"agreed_signs/lots/{k}": v for k, v in coverage(signs).items()}


def _referee(
    params, truth_dir, out: ExplainOutput, rows, labels, scaler, reg, support, uses, agreement
):
    synthetic = params.synthetic
    truth = read_truth(truth_dir)
    scored = out.tiles.iloc[rows].reset_index(drop=True)
    if tile_truth(truth.fields, scored).isna().any(axis=None):
        return None
    knob_labels = labels.copy()  # unclipped: the label fit is affine in the raw scores
    knob_labels[list(ATTRIBUTES)] = scaler.transform(labels[list(ATTRIBUTES)].to_numpy())
    gradients = {name: use[rows] for name, use in uses.items()}  # every per-tile explanation
    for name, table in (("correlation", "correlation_slopes"), ("linear_model", "linear_model")):
        lot_level = out.tables[table].set_index("attribute").loc[list(ATTRIBUTES), "predicted"]
        gradients[name] = np.broadcast_to(lot_level.to_numpy(), (len(rows), len(ATTRIBUTES)))
    directions = {"counterfactual": out.higher.delta_attrs[rows]}
    counterfactuals = [
        Counterfactuals(target, res.attrs[rows], res.new_attrs[rows], res.success[rows])
        for target, res in (("higher", out.higher), ("lower", out.lower))
    ]
    oracle_predict = lambda x: predict(reg, x)  # noqa: E731
    with Oracle(synthetic.study, synthetic.tiling, oracle_predict, params.referee.oracle) as oracle:
        return referee(
            truth=truth,
            tiles=scored,
            labels=knob_labels,
            gradients=gradients,
            directions=directions,
            counterfactuals=counterfactuals,
            oracle=oracle,
            params=params.referee,
            support=support,
            agreement=None if agreement is None else tuple(a[rows] for a in agreement),
        )


def _write_reports(reports: Path, tables: dict[str, pd.DataFrame], figures: dict) -> None:
    for name, table in tables.items():
        with atomic_path(reports / f"{name}.csv") as tmp:
            table.to_csv(tmp, index=False, float_format="%.6g")
    for a in ATTRIBUTES:  # one file per attribute for `dvc plots`
        curve = tables["sensitivity"].query("attribute == @a").drop(columns="attribute")
        with atomic_path(reports / "plots" / f"sensitivity_{a}.csv") as tmp:
            curve.to_csv(tmp, index=False, float_format="%.6g")
    for name, figure in figures.items():
        save_figure(figure, reports / name)
