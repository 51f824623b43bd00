"""Figures of the data stages: lot design, contact sheet, splits, meter agreement."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from semknobs.attributes import ATTRIBUTES

if TYPE_CHECKING:
    from semknobs.data.split import Splits


def design_figure(lots: pd.DataFrame) -> Figure:
    """True lot attributes against each other and against peak stress (synthetic studies)."""
    k = len(ATTRIBUTES)
    fig = Figure(figsize=(2.4 * (k + 1), 2.4 * k), layout="constrained")
    axes = fig.subplots(k, k + 1)
    stress = lots["peak_stress"].to_numpy()
    for i, a in enumerate(ATTRIBUTES):
        for j, b in enumerate(ATTRIBUTES):
            ax = axes[i, j]
            if i == j:
                ax.hist(lots[f"true_{a}"], bins=10, color="0.6")
            else:
                ax.scatter(lots[f"true_{b}"], lots[f"true_{a}"], c=stress, s=14, cmap="viridis")
            ax.set(xlabel=b if i == k - 1 else None, ylabel=a if j == 0 else None)
        sc = axes[i, k].scatter(lots[f"true_{a}"], stress, c=stress, s=14, cmap="viridis")
        axes[i, k].set(xlabel=f"true {a}", ylabel="peak stress (MPa)")
    fig.colorbar(sc, ax=axes[:, k], label="peak stress (MPa)")
    fig.suptitle(f"Lot design: {len(lots)} lots, true attributes in [0, 1]")
    return fig


def contact_sheet(
    tiles: np.ndarray,
    manifest: pd.DataFrame,
    lots: pd.DataFrame | None,
    n_lots: int = 8,
    per_lot: int = 2,
) -> Figure:
    """One row per attribute: lots at evenly spaced ranks of that attribute's label (low to
    high), ``per_lot`` tiles each, so a person sees each knob turn at a glance. Without
    readable labels (``lots`` None) the lots are shown in name order, every row alike."""
    title = "Lots ordered by each attribute's label, low → high (lot: label)"
    if lots is None:
        names = sorted(manifest["lot"].unique())
        lots = pd.DataFrame({"lot": names, **{a: np.nan for a in ATTRIBUTES}})
        title = "Labels unreadable (see the validate stage): lots in name order"
    lots = lots[lots["lot"].isin(manifest["lot"])]
    first = {lot: g.index.to_numpy()[:per_lot] for lot, g in manifest.groupby("lot")}
    n_lots = min(n_lots, len(lots))
    side = tiles.shape[-1]
    fig = Figure(figsize=(1.25 * n_lots * per_lot, 1.45 * len(ATTRIBUTES)), layout="constrained")
    axes = np.atleast_1d(fig.subplots(len(ATTRIBUTES), 1))
    for ax, a in zip(axes, ATTRIBUTES):
        ordered = lots.sort_values([a, "lot"]).reset_index(drop=True)
        picks = ordered.iloc[np.linspace(0, len(ordered) - 1, n_lots).round().astype(int)]
        cells = []
        for lot in picks["lot"]:
            row = [tiles[i] for i in first[lot]]
            row += [np.zeros((side, side), np.uint8)] * (per_lot - len(row))
            cells.append(np.concatenate(row, axis=1))
            cells.append(np.full((side, 4), 255, np.uint8))
        ax.imshow(np.concatenate(cells[:-1], axis=1), cmap="gray", vmin=0, vmax=255)
        width = per_lot * side + 4
        ax.set_xticks(
            np.arange(n_lots) * width + per_lot * side / 2,
            [f"{lot}: {v:.2g}" for lot, v in zip(picks["lot"], picks[a])],
            fontsize=7,
        )
        ax.set_yticks([])
        ax.set_ylabel(a, fontsize=10)
    fig.suptitle(title, fontsize=10)
    return fig


def split_figure(lots: pd.DataFrame, splits: Splits) -> Figure:
    role = {lot: "test" for lot in splits.test}
    for i, fold in enumerate(splits.folds):
        role.update({lot: f"fold {i}" for lot in fold})
    ordered = lots.sort_values("peak_stress")
    names = ["test"] + [f"fold {i}" for i in range(len(splits.folds))]
    colours = dict(zip(names, ["black", *[f"C{i}" for i in range(len(names))]]))
    fig = Figure(figsize=(max(6.0, 0.3 * len(lots)), 3.2), layout="constrained")
    ax = fig.subplots()
    ax.bar(
        ordered["lot"],
        ordered["peak_stress"],
        color=[colours[role.get(lot, "test")] for lot in ordered["lot"]],
    )
    for name in names:
        ax.bar([], [], color=colours[name], label=name)
    ax.legend(ncols=len(names), fontsize=8)
    ax.set(ylabel="peak stress (MPa)", title="Lot-wise split (lots sorted by peak stress)")
    ax.tick_params(axis="x", rotation=90, labelsize=7)
    return fig


def meter_figure(readings: pd.DataFrame, truth: pd.DataFrame, matrix: pd.DataFrame) -> Figure:
    """Meter reading vs true per-tile attribute, plus the 4x4 Spearman matrix."""
    k = len(ATTRIBUTES)
    fig = Figure(figsize=(3.0 * (k + 1), 3.0), layout="constrained")
    axes = fig.subplots(1, k + 1)
    for ax, a in zip(axes, ATTRIBUTES):
        ax.scatter(truth[a], readings[a], s=3, alpha=0.4)
        ax.set(xlabel=f"true {a}", ylabel=f"meter {a}", title=f"rho = {matrix.loc[a, a]:+.3f}")
    im = axes[k].imshow(matrix.to_numpy(), vmin=-1, vmax=1, cmap="RdBu_r")
    axes[k].set_xticks(range(k), [f"true {a}" for a in ATTRIBUTES], rotation=45, fontsize=7)
    axes[k].set_yticks(range(k), [f"meter {a}" for a in ATTRIBUTES], fontsize=7)
    for i in range(k):
        for j in range(k):
            axes[k].text(j, i, f"{matrix.iloc[i, j]:+.2f}", ha="center", va="center", fontsize=7)
    fig.colorbar(im, ax=axes[k], shrink=0.8, label="Spearman rho")
    return fig
