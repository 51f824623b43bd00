"""Figures of the referee: the fidelity table as a heat map, explanations against the oracle."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from semknobs.attributes import ATTRIBUTES
from semknobs.evaluation.fidelity import METRICS

SHORT = {
    "cosine_median": "cosine\nmedian",
    "centred_cosine": "centred\ncosine",
    "lot_centred_cosine": "lot\ncentred",
}


def fidelity_figure(table: pd.DataFrame, title: str = "") -> Figure:
    """Rows explainer/fidelity, columns metrics; cells value and [95 % interval]."""
    rows = list(dict.fromkeys(zip(table["explainer"], table["fidelity"])))
    grid = np.full((len(rows), len(METRICS)), np.nan)
    text = [["" for _ in METRICS] for _ in rows]
    index = table.set_index(["explainer", "fidelity", "metric"])
    for i, (e, f) in enumerate(rows):
        for j, m in enumerate(METRICS):
            if (e, f, m) not in index.index:
                continue
            r = index.loc[(e, f, m)]
            grid[i, j] = r["value"]
            if np.isfinite(r["value"]):
                text[i][j] = f"{r['value']:.2f}\n[{r['low']:.2f}, {r['high']:.2f}]"
    fig = Figure(figsize=(1.05 * len(METRICS) + 2.5, 0.55 * len(rows) + 1.6), layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(grid, vmin=-1, vmax=1, cmap="RdBu", aspect="auto")
    for i in range(len(rows)):
        for j in range(len(METRICS)):
            ax.text(j, i, text[i][j], ha="center", va="center", fontsize=6.5)
    labels = [SHORT.get(m, m.replace("_", "\n")) for m in METRICS]
    ax.set_xticks(range(len(METRICS)), labels, fontsize=7)
    ax.set_yticks(range(len(rows)), [f"{e} / {f}" for e, f in rows], fontsize=8)
    fig.colorbar(im, ax=ax, shrink=0.8, label="score (sign: accuracy in [0, 1])")
    ax.set_title(
        title
        or "Fidelity on held-out tiles (er: vs the regressor's oracle response, "
        "el: vs the law, rl: regressor vs law)",
        fontsize=9,
    )
    return fig


def scatter_figure(per_tile: pd.DataFrame, explainers: list[str]) -> Figure:
    """Per attribute: the oracle's dR/dt against the law, and each explainer against the oracle
    (all in MPa per unit of true attribute; error bars: the oracle's standard error)."""
    rows = ["law", *explainers]
    fig = Figure(figsize=(3.0 * len(ATTRIBUTES), 2.6 * len(rows)), layout="constrained")
    axes = fig.subplots(len(rows), len(ATTRIBUTES), squeeze=False)
    for k, a in enumerate(ATTRIBUTES):
        x, err = per_tile[f"oracle_{a}"], per_tile[f"oracle_se_{a}"]
        for i, name in enumerate(rows):
            ax = axes[i, k]
            y = per_tile[f"{name}_{a}"]
            ax.errorbar(x, y, xerr=err, fmt="o", ms=3, alpha=0.6, elinewidth=0.5)
            ax.axhline(0, color="0.6", lw=0.5)
            ax.axvline(0, color="0.6", lw=0.5)
            if name == "law":
                lim = [min(x.min(), y.min()), max(x.max(), y.max())]
                ax.plot(lim, lim, color="0.4", lw=0.7, ls="--")
            ax.set(xlabel=f"oracle dR/d{a}" if i == len(rows) - 1 else None)
            if k == 0:
                ax.set_ylabel(name, fontsize=8)
            if i == 0:
                ax.set_title(a)
    fig.suptitle(
        "Held-out tiles: the regressor's oracle response (x) against the law and the explainers"
    )
    return fig
