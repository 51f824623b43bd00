"""Tables and figures of the explanation study (people would rather look than read)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from scipy import stats
from torch import nn

from semknobs.attributes import ATTRIBUTES
from semknobs.explain.counterfactual import CounterfactualResult
from semknobs.explain.sensitivity import SweepResult

COLOURS = dict(zip(ATTRIBUTES, ["C0", "C1", "C2", "C3"]))


def _grey(x: torch.Tensor | np.ndarray) -> np.ndarray:
    x = x.detach().cpu().numpy() if torch.is_tensor(x) else np.asarray(x)
    return np.squeeze(x)


def sensitivity_table(sweep: SweepResult) -> pd.DataFrame:
    """Prediction change vs requested level: mean and 2.5-97.5 % band over tiles."""
    change = sweep.predictions - sweep.baseline[:, None, None]
    rows = []
    for j, a in enumerate(ATTRIBUTES):
        for p, level in enumerate(sweep.levels):
            values = change[:, j, p]
            rows.append(
                {
                    "attribute": a,
                    "level": float(level),
                    "mean_change_mpa": float(values.mean()),
                    "low_mpa": float(np.percentile(values, 2.5)),
                    "high_mpa": float(np.percentile(values, 97.5)),
                }
            )
    return pd.DataFrame(rows)


def sensitivity_curves(table: pd.DataFrame) -> Figure:
    fig = Figure(figsize=(11, 3), layout="constrained")
    for ax, a in zip(fig.subplots(1, len(ATTRIBUTES), sharey=True), ATTRIBUTES):
        t = table[table["attribute"] == a]
        ax.fill_between(
            t["level"],
            t["low_mpa"],
            t["high_mpa"],
            color=COLOURS[a],
            alpha=0.2,
            label="95 % of tiles",
        )
        ax.plot(t["level"], t["mean_change_mpa"], color=COLOURS[a], label="mean")
        ax.axhline(0, color="0.5", lw=0.5)
        ax.set(title=a, xlabel=f"requested {a} (normalised)")
    fig.axes[0].set_ylabel("predicted stress change (MPa)\nvs the reconstruction")
    fig.axes[0].legend(fontsize=7)
    fig.suptitle("Forward sensitivity: one knob turned, the others at the tile's lot values")
    return fig


def pair_heatmap(levels: np.ndarray, grid: np.ndarray, a: str, b: str) -> Figure:
    fig = Figure(figsize=(4.4, 3.8), layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(grid, origin="lower", extent=[0, 1, 0, 1], cmap="viridis", aspect="auto")
    ax.set(
        xlabel=f"requested {b}", ylabel=f"requested {a}", title=f"mean predicted stress: {a} x {b}"
    )
    fig.colorbar(im, ax=ax, label="MPa")
    return fig


@torch.no_grad()
def sweep_strip(gen: nn.Module, image: torch.Tensor, attrs: torch.Tensor, points: int) -> Figure:
    """One tile, each attribute swept over [0, 1] (rows) with the others at its values."""
    levels = torch.linspace(0, 1, points)
    fig = Figure(figsize=(1.0 * points, 1.1 * len(ATTRIBUTES)), layout="constrained")
    axes = fig.subplots(len(ATTRIBUTES), points, squeeze=False)
    for j, a in enumerate(ATTRIBUTES):
        edit = attrs.repeat(points, 1)
        edit[:, j] = levels
        out = gen(image.repeat(points, 1, 1, 1), edit, attrs.repeat(points, 1))
        for p in range(points):
            ax = axes[j, p]
            ax.imshow(_grey(out[p]), cmap="gray", vmin=-1, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_title(f"{float(levels[p]):.2f}", fontsize=7)
        axes[j, 0].set_ylabel(a, fontsize=8)
    return fig


def counterfactual_table(
    tiles: pd.DataFrame,
    direct: np.ndarray,
    higher: CounterfactualResult,
    lower: CounterfactualResult,
) -> pd.DataFrame:
    table = tiles[["tile", "lot"]].reset_index(drop=True).copy()
    table["prediction_mpa"] = direct
    table["baseline_mpa"] = higher.baseline
    for name, res in (("higher", higher), ("lower", lower)):
        for j, a in enumerate(ATTRIBUTES):
            table[f"{name}_delta_{a}"] = res.delta_attrs[:, j]
        table[f"{name}_target_mpa"] = res.target
        table[f"{name}_achieved_mpa"] = res.achieved
        table[f"{name}_distance"] = res.distance
        table[f"{name}_success"] = res.success
    return table


def lot_aggregates(table: pd.DataFrame) -> pd.DataFrame:
    """Mean delta-A per lot with a 95 % t-interval over the lot's tiles."""
    rows = []
    for lot, g in table.groupby("lot"):
        for name in ("higher", "lower"):
            for a in ATTRIBUTES:
                v = g[f"{name}_delta_{a}"].to_numpy()
                half = (
                    stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v))
                    if len(v) > 1
                    else np.nan
                )
                rows.append(
                    {
                        "lot": lot,
                        "target": name,
                        "attribute": a,
                        "mean_delta": float(v.mean()),
                        "ci95": float(half),
                        "n_tiles": len(v),
                    }
                )
    return pd.DataFrame(rows)


def lot_deltas_figure(agg: pd.DataFrame) -> Figure:
    higher = agg[agg["target"] == "higher"]
    lots = sorted(higher["lot"].unique())
    fig = Figure(figsize=(max(6.0, 0.35 * len(lots)), 3.4), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / len(ATTRIBUTES)
    x = np.arange(len(lots))
    for j, a in enumerate(ATTRIBUTES):
        t = higher[higher["attribute"] == a].set_index("lot").loc[lots]
        ax.bar(
            x + (j - 1.5) * width,
            t["mean_delta"],
            width,
            yerr=t["ci95"],
            color=COLOURS[a],
            label=a,
            error_kw={"lw": 0.6},
        )
    ax.axhline(0, color="0.4", lw=0.5)
    ax.set_xticks(x, lots, rotation=90, fontsize=7)
    ax.set(
        ylabel="mean delta-A (normalised)",
        title="Knob changes that raise the predicted stress, per lot (95 % CI)",
    )
    ax.legend(ncols=4, fontsize=7)
    return fig


def figure3(
    images: torch.Tensor,
    higher: CounterfactualResult,
    lower: CounterfactualResult,
    rows: list[int],
    lots: list[str],
) -> Figure:
    """The paper's Figure 3: original | raised | lowered tile, and delta-A bars, per lot."""
    fig = Figure(figsize=(9, 2.4 * len(rows)), layout="constrained")
    axes = fig.subplots(len(rows), 4, squeeze=False, width_ratios=[1, 1, 1, 2])
    for r, (i, lot) in enumerate(zip(rows, lots)):
        panels = [
            (images[r], "original"),
            (higher.edited[i], f"higher: {higher.achieved[i]:.1f} MPa"),
            (lower.edited[i], f"lower: {lower.achieved[i]:.1f} MPa"),
        ]
        for c, (img, title) in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(_grey(img), cmap="gray", vmin=-1, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(title, fontsize=8)
        axes[r, 0].set_ylabel(f"lot {lot}\nbaseline {higher.baseline[i]:.1f} MPa", fontsize=8)
        ax = axes[r, 3]
        x = np.arange(len(ATTRIBUTES))
        ax.bar(x - 0.2, higher.delta_attrs[i], 0.4, label="increase", color="C3")
        ax.bar(x + 0.2, lower.delta_attrs[i], 0.4, label="decrease", color="C0")
        ax.axhline(0, color="0.4", lw=0.5)
        ax.set_xticks(x, ATTRIBUTES, fontsize=8)
        ax.set_ylabel("delta-A")
        if r == 0:
            ax.legend(fontsize=7)
    fig.suptitle("Concept-based explanation of single tiles (lowest, median, highest stress lots)")
    return fig


def tradeoff_figure(table: pd.DataFrame) -> Figure:
    fig = Figure(figsize=(4.6, 3.6), layout="constrained")
    ax = fig.subplots()
    ax.plot(table["image_distance"], table["prediction_change_mpa"], "o-")
    for _, r in table.iterrows():
        ax.annotate(
            f"λ={r['lambda']:g}", (r["image_distance"], r["prediction_change_mpa"]), fontsize=7
        )
    ax.set(
        xlabel="image distance ||G(I;A) - G(I;A')||",
        ylabel="prediction change (MPa)",
        title="Eq. 2 trade-off over lambda",
    )
    return fig


def saliency_figure(images, cam, ig, cam_random, lots) -> Figure:
    fig = Figure(figsize=(8, 2.2 * len(lots)), layout="constrained")
    axes = fig.subplots(len(lots), 4, squeeze=False)
    for r, lot in enumerate(lots):
        base = _grey(images[r])
        for c, (overlay, title) in enumerate(
            [
                (None, "tile"),
                (cam[r], "GradCAM"),
                (ig[r], "Integrated Gradients"),
                (cam_random[r], "GradCAM, random weights"),
            ]
        ):
            ax = axes[r, c]
            ax.imshow(base, cmap="gray", vmin=-1, vmax=1)
            if overlay is not None:
                ax.imshow(np.abs(overlay) if c == 2 else overlay, cmap="inferno", alpha=0.55)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(title, fontsize=8)
        axes[r, 0].set_ylabel(f"lot {lot}", fontsize=8)
    return fig


def knob_checks_figure(
    read: pd.DataFrame, min_read: float, no_edit_miss: float, min_share: float
) -> Figure:
    """The knob checks at a glance (``knob_read.csv``): per knob the regressor's read of its
    edits against real tiles (below ``min_read``: its sign deserves little trust); with the
    AttGAN's region misses, how unlike real lot differences its edits are (past
    ``no_edit_miss``: no change a real lot shows, whatever the sign); with the crystal read, the
    share of the read kept without the edits' background part (below ``min_share``: the sign
    comes mostly from the background). Hatched: flagged."""
    panels = [  # (column, flag, line, y label, title)
        ("read", "low", min_read, "read of the edits / real-tile slope",
         f"below {min_read:g}: sign untrusted"),
        ("region_miss", "unlike_lots", no_edit_miss, "region miss (0: as lots)",
         f"past {no_edit_miss:g}: unlike lots"),
        ("crystal_share", "background_read", min_share, "share kept without background",
         f"below {min_share:g}: read in the background"),
    ]  # fmt: skip
    panels = [panel for panel in panels if panel[0] in read.columns]
    fig = Figure(figsize=(3.4 * len(panels), 3.0), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    x = np.arange(len(read))
    for ax, (col, flag, line, label, title) in zip(axes, panels):
        bars = ax.bar(
            x, np.nan_to_num(read[col].to_numpy(float)),
            color=[COLOURS[a] for a in read["attribute"]],
        )  # fmt: skip
        for bar, flagged in zip(bars, read[flag].astype(bool)):
            bar.set_hatch("///" if flagged else None)
        ax.axhline(line, color="0.3", lw=0.8, ls="--")
        ax.axhline(0, color="0.5", lw=0.5)
        ax.set_xticks(x, read["attribute"], fontsize=8)
        ax.set_ylabel(label, fontsize=8)
        ax.set_title(title, fontsize=8)
    fig.suptitle("Truth-free checks of each knob (hatched: flagged)", fontsize=9)
    return fig
