"""The explanation study behind the ``explain`` stage: one call that runs every explainer on a
sample of tiles and returns metrics, tables and figures. Nothing here reads a ground truth: on a
synthetic study the stage hands the explanations to the referee afterwards
(:mod:`semknobs.evaluation.referee`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from torch import nn
from tqdm.auto import tqdm

from semknobs.attributes import ATTRIBUTES
from semknobs.evaluation.attgan import shift_metrics
from semknobs.explain import figures
from semknobs.explain.bundle import StressInMPa, in_batches
from semknobs.explain.correlation import correlation_table, linear_coefficients, marginal_slopes
from semknobs.explain.counterfactual import (
    CounterfactualParams,
    CounterfactualResult,
    KnobCounterfactual,
)
from semknobs.explain.gradient import (
    KnobAttribution,
    KnobGradient,
    KnobGradientParams,
    crystal_read,
)
from semknobs.explain.saliency import PixelSaliency, map_similarity, randomized_copy
from semknobs.explain.sensitivity import ForwardSensitivity, SweepResult
from semknobs.train.texture import outside_background


@dataclass(frozen=True)
class ExplainParams:
    tiles_per_lot: int = 4
    sweep_points: int = 9
    pairs: list[list[str]] = field(
        default_factory=lambda: [["size", "porosity"], ["dispersity", "facetness"]]
    )
    pair_points: int = 7
    counterfactual: CounterfactualParams = field(default_factory=CounterfactualParams)
    knob_gradient: KnobGradientParams = field(default_factory=KnobGradientParams)
    lambdas: list[float] = field(default_factory=lambda: [0.1, 0.3, 1.0, 3.0, 10.0, 30.0])
    tradeoff_tiles: int = 16
    batch_size: int = 64
    ig_steps: int = 32
    seed: int = 0


@dataclass
class ExplainOutput:
    metrics: dict[str, float]
    tables: dict[str, pd.DataFrame]
    figures: dict[str, Figure]
    sweep: SweepResult
    higher: CounterfactualResult
    lower: CounterfactualResult
    knob_gradient: KnobAttribution
    knob_gradient_crystal: KnobAttribution  # without the edits' background part
    tiles: pd.DataFrame  # the explained tiles (manifest rows + labels)


def sample_tiles(
    manifest: pd.DataFrame, per_lot: int, seed: int, counts: Mapping[str, int] | None = None
) -> np.ndarray:
    """Row positions of ``per_lot`` tiles from every lot (``counts[lot]`` where given; all of a
    lot's tiles if fewer)."""
    rng = np.random.default_rng(seed)
    counts = counts or {}
    picks = [
        np.sort(rng.choice(idx, min(counts.get(lot, per_lot), len(idx)), replace=False))
        for lot, idx in sorted(manifest.groupby("lot").indices.items())
    ]
    return np.concatenate(picks)


def explain(
    *,
    gen: nn.Module,
    reg: nn.Module,
    images: torch.Tensor,
    attrs: torch.Tensor,
    tiles: pd.DataFrame,
    lots: pd.DataFrame,
    stress_range: float,
    layer: nn.Module,
    params: ExplainParams,
    progress: bool = True,
) -> ExplainOutput:
    """Run every explainer. ``tiles`` describes the rows of ``images`` (lot, tile, ...); ``lots``
    holds the normalised labels and ``peak_stress`` of every lot."""
    reg_mpa = StressInMPa(reg).eval()
    gen.eval()
    metrics: dict[str, float] = {}
    tables: dict[str, pd.DataFrame] = {}
    figs: dict[str, Figure] = {}
    bar = tqdm(total=7, desc="explain", unit="part", disable=not progress)
    bar.set_postfix_str("sweeps")

    # 1. reconstruction shift R(I) vs R(G(I; A))
    sens = ForwardSensitivity(gen, reg_mpa, batch_size=params.batch_size)
    direct = in_batches(reg_mpa, images, params.batch_size)
    sweep = sens.attribute(images, attrs, points=params.sweep_points)
    metrics |= shift_metrics(direct.numpy(), sweep.baseline, stress_range)

    # 2. forward sensitivity
    tables["sensitivity"] = figures.sensitivity_table(sweep)
    figs["sensitivity_curves.png"] = figures.sensitivity_curves(tables["sensitivity"])
    for a, b in params.pairs:
        levels, grid = sens.pair(images, attrs, a, b, points=params.pair_points)
        figs[f"sensitivity_{a}_{b}.png"] = figures.pair_heatmap(levels, grid, a, b)
    figs["sweep_strip.png"] = figures.sweep_strip(gen, images[:1], attrs[:1], params.sweep_points)

    bar.update()
    bar.set_postfix_str("knob gradient")
    # 3. the knob gradient: d R(G(I; A)) / d A, one backward pass per batch
    gradient = KnobGradient(gen, reg_mpa, params.knob_gradient)
    knob_gradient = gradient.attribute(images, attrs, params.batch_size)
    # the same without the edit's background part: where in the tile the regressor reads a knob
    crystal = gradient.attribute(images, attrs, params.batch_size, keep=outside_background(images))
    metrics |= crystal_read(knob_gradient.gradient, crystal.gradient)
    tables["knob_gradient"] = (
        tiles[["tile", "lot"]]
        .reset_index(drop=True)
        .assign(**{f"gradient_{a}": knob_gradient.gradient[:, j] for j, a in enumerate(ATTRIBUTES)})
        .assign(
            **{f"crystal_gradient_{a}": crystal.gradient[:, j] for j, a in enumerate(ATTRIBUTES)}
        )
    )

    bar.update()
    bar.set_postfix_str(f"Eq. 2 search, {len(images)} tiles x 2 targets")
    # 4. counterfactual knob search, batched
    explainer = KnobCounterfactual(gen, reg_mpa, stress_range=stress_range)
    cf = params.counterfactual
    higher = explainer.attribute_batched(
        images, attrs, dataclasses.replace(cf, target="higher"), params.batch_size
    )
    lower = explainer.attribute_batched(
        images, attrs, dataclasses.replace(cf, target="lower"), params.batch_size
    )
    metrics["counterfactual/success_rate"] = float(
        np.mean(np.concatenate([higher.success, lower.success]))
    )
    metrics["counterfactual/success_rate_higher"] = float(higher.success.mean())
    metrics["counterfactual/success_rate_lower"] = float(lower.success.mean())
    metrics["counterfactual/distance_mean"] = float(
        np.mean(np.concatenate([higher.distance, lower.distance]))
    )
    tables["counterfactual"] = figures.counterfactual_table(tiles, direct.numpy(), higher, lower)
    tables["lot_deltas"] = figures.lot_aggregates(tables["counterfactual"])
    figs["lot_deltas.png"] = figures.lot_deltas_figure(tables["lot_deltas"])

    # Figure 3: lots of lowest, median and highest stress
    order = lots.set_index("lot").loc[tiles["lot"].unique()].sort_values("peak_stress").index
    chosen = [order[0], order[len(order) // 2], order[-1]]
    rows = [int(np.flatnonzero(tiles["lot"].to_numpy() == lot)[0]) for lot in chosen]
    figs["figure3.png"] = figures.figure3(images[rows], higher, lower, rows, chosen)

    bar.update()
    bar.set_postfix_str(f"trade-off over {len(params.lambdas)} lambdas")
    # trade-off over lambda
    sub = slice(0, min(params.tradeoff_tiles, len(images)))
    curve = []
    for lam in params.lambdas:
        res = explainer.attribute(
            images[sub], attrs[sub], dataclasses.replace(cf, target="higher", lam=lam)
        )
        curve.append(
            {
                "lambda": lam,
                "prediction_change_mpa": float(np.mean(res.achieved - res.baseline)),
                "image_distance": float(np.mean(res.distance)),
                "success_rate": float(res.success.mean()),
            }
        )
    tables["tradeoff"] = pd.DataFrame(curve)
    figs["tradeoff.png"] = figures.tradeoff_figure(tables["tradeoff"])

    bar.update()
    bar.set_postfix_str("Captum baselines")
    # 5. Captum baselines on the Figure-3 tiles, and the randomisation sanity check
    sal = PixelSaliency(reg_mpa, layer, ig_steps=params.ig_steps)
    cam, ig = sal.attribute(images[rows])
    random_reg = randomized_copy(reg_mpa, seed=params.seed)
    random_layer = _same_layer(random_reg, reg_mpa, layer)
    cam_random = PixelSaliency(random_reg, random_layer, ig_steps=params.ig_steps).gradcam(
        images[rows]
    )
    raw = sal.gradcam(images[rows], relu=False)
    random_sal = PixelSaliency(random_reg, random_layer, ig_steps=params.ig_steps)
    metrics["saliency/gradcam_similarity_after_randomisation"] = map_similarity(
        raw, random_sal.gradcam(images[rows], relu=False)
    )
    metrics["saliency/ig_similarity_after_randomisation"] = map_similarity(
        ig, random_sal.integrated_gradients(images[rows])
    )
    metrics["saliency/gradcam_map_px"] = float(_feature_side(reg_mpa, layer, images[:1]))
    figs["saliency.png"] = figures.saliency_figure(images[rows], cam, ig, cam_random, chosen)

    bar.update()
    bar.set_postfix_str("correlation baseline")
    # 6. correlation baseline (lot level)
    lot_pred = pd.Series(direct.numpy(), index=tiles["lot"].to_numpy()).groupby(level=0).mean()
    by_lot = (
        lots.set_index("lot")
        .loc[lot_pred.index]
        .assign(predicted=lot_pred.to_numpy())
        .reset_index()
    )
    tables["correlation"] = pd.concat(
        [correlation_table(by_lot, "peak_stress"), correlation_table(by_lot, "predicted")]
    )
    coefs = {
        "labels": linear_coefficients(by_lot, "peak_stress"),
        "predicted": linear_coefficients(by_lot, "predicted"),
    }
    tables["linear_model"] = (
        pd.DataFrame(coefs, index=list(ATTRIBUTES)).rename_axis("attribute").reset_index()
    )
    slopes = {
        "labels": marginal_slopes(by_lot, "peak_stress"),
        "predicted": marginal_slopes(by_lot, "predicted"),
    }
    tables["correlation_slopes"] = (
        pd.DataFrame(slopes, index=list(ATTRIBUTES)).rename_axis("attribute").reset_index()
    )
    bar.update(2)
    bar.close()
    return ExplainOutput(metrics, tables, figs, sweep, higher, lower, knob_gradient, crystal, tiles)


def _same_layer(copy: nn.Module, original: nn.Module, layer: nn.Module) -> nn.Module:
    names = {id(m): n for n, m in original.named_modules()}
    return dict(copy.named_modules())[names[id(layer)]]


def _feature_side(model: nn.Module, layer: nn.Module, x: torch.Tensor) -> int:
    out = {}

    def keep_shape(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        out["shape"] = output.shape

    handle = layer.register_forward_hook(keep_shape)
    with torch.no_grad():
        model(x)
    handle.remove()
    return int(out["shape"][-1])
