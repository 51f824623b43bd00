"""Held-out evaluation of the peak-stress regressor and its baselines, lot by lot.

A lot's prediction is the mean of its tiles' predictions (all tiles of a lot share one label).
Metrics, for any predictor with prefix ``p`` (``test``, ``baseline_mean``, ``baseline_rf``):

* ``p/tile_rmse``, ``p/tile_mape`` -- per tile, against the tile's lot stress;
* ``p/lot_rmse``, ``p/lot_mape``, ``p/lot_r2`` -- per lot, R^2 against the test lots' own mean.

Baselines, evaluated on the same test lots:

* ``baseline_mean``: the mean stress of the training tiles, for every tile;
* ``baseline_rf``: the classical approach (Gallagher et al. 2020): a seeded random forest trained
  per tile on the attribute meter's four readings (size, porosity, dispersity, facetness; see
  :mod:`semknobs.meter`) of the training lots' tiles. A reading the meter could not take (NaN,
  e.g. dispersity of a tile with too few particles) is imputed with that reading's median over the
  *training* tiles, so nothing about the test lots leaks into the imputation.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from semknobs.attributes import ATTRIBUTES
from semknobs.errors import DataError
from semknobs.train.regressor import BaselineParams

FEATURES: tuple[str, ...] = ATTRIBUTES


def lot_table(lots: np.ndarray, true: np.ndarray, pred: np.ndarray) -> pd.DataFrame:
    """Per lot: true stress, mean/std/count of the tile predictions (index: lot, sorted)."""
    frame = pd.DataFrame(
        {"lot": np.asarray(lots), "true": np.asarray(true, float), "pred": np.asarray(pred, float)}
    )
    table = frame.groupby("lot", sort=True).agg(
        true=("true", "first"),
        pred=("pred", "mean"),
        pred_std=("pred", "std"),
        n_tiles=("pred", "size"),
    )
    table["pred_std"] = table["pred_std"].fillna(0.0)
    return table


def regression_metrics(
    prefix: str, lots: np.ndarray, true: np.ndarray, pred: np.ndarray
) -> dict[str, float]:
    """Tile- and lot-level RMSE / MAPE (%) and lot R^2 under ``prefix/``."""
    true = np.asarray(true, float)
    pred = np.asarray(pred, float)
    if len(true) == 0:
        raise DataError(f"{prefix}: no tiles to evaluate")
    table = lot_table(lots, true, pred)
    lot_err = table["pred"] - table["true"]
    spread = float(((table["true"] - table["true"].mean()) ** 2).sum())
    r2 = 1.0 - float((lot_err**2).sum()) / spread if spread > 0 else float("nan")
    return {
        f"{prefix}/tile_rmse": float(np.sqrt(np.mean((pred - true) ** 2))),
        f"{prefix}/tile_mape": float(100 * np.mean(np.abs(pred - true) / np.abs(true))),
        f"{prefix}/lot_rmse": float(np.sqrt(np.mean(lot_err**2))),
        f"{prefix}/lot_mape": float(100 * np.mean(np.abs(lot_err) / table["true"].abs())),
        f"{prefix}/lot_r2": r2,
    }


def lot_rmse(lots: np.ndarray, true: np.ndarray, pred: np.ndarray) -> float:
    """RMSE over lots of the lot-mean prediction (the tuning objective)."""
    table = lot_table(lots, true, pred)
    return float(np.sqrt(np.mean((table["pred"] - table["true"]) ** 2)))


# --------------------------------------------------------------------------------------------
# baselines
# --------------------------------------------------------------------------------------------


def mean_baseline(train_stress: np.ndarray, n: int) -> np.ndarray:
    return np.full(n, float(np.mean(train_stress)))


def rf_baseline(
    train_x: pd.DataFrame,
    train_y: np.ndarray,
    test_x: pd.DataFrame,
    params: BaselineParams,
) -> np.ndarray:
    """Per-tile predictions of a seeded random forest on the meter readings."""
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline

    if train_x.isna().all().any():
        empty = list(train_x.columns[train_x.isna().all()])
        raise DataError(f"meter readings: {empty} missing on every training tile; cannot impute")
    model = make_pipeline(
        SimpleImputer(strategy="median"),
        RandomForestRegressor(
            n_estimators=params.n_estimators,
            min_samples_leaf=params.min_samples_leaf,
            max_features=params.max_features,
            random_state=params.seed,
            n_jobs=1,
        ),
    )
    model.fit(train_x.to_numpy(), np.asarray(train_y, float))
    return model.predict(test_x.to_numpy())


# --------------------------------------------------------------------------------------------
# figures and reports
# --------------------------------------------------------------------------------------------


def pred_vs_true_figure(tables: Mapping[str, pd.DataFrame], title: str = "") -> Figure:
    """Predicted vs true lot stress; error bars: the spread (sd) of the lot's tile predictions."""
    fig = Figure(figsize=(5.2, 5.0))
    ax = fig.add_subplot()
    lo = min(min(t["true"].min(), (t["pred"] - t["pred_std"]).min()) for t in tables.values())
    hi = max(max(t["true"].max(), (t["pred"] + t["pred_std"]).max()) for t in tables.values())
    pad = 0.05 * (hi - lo + 1e-9)
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="0.6", lw=1, ls="--", zorder=0)
    markers = iter("osD^v")
    for name, table in tables.items():
        ax.errorbar(
            table["true"],
            table["pred"],
            yerr=table["pred_std"],
            fmt=next(markers, "o"),
            ms=5,
            capsize=3,
            label=name,
            alpha=0.85,
        )
    first = next(iter(tables.values()))
    for lot, row in first.iterrows():
        ax.annotate(
            str(lot),
            (row["true"], row["pred"]),
            fontsize=7,
            xytext=(4, -8),
            textcoords="offset points",
        )
    ax.set_xlabel("true lot peak stress (MPa)")
    ax.set_ylabel("predicted (mean over tiles; bars: sd of tiles)")
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_ylim(lo - pad, hi + pad)
    ax.set_aspect("equal")
    ax.legend(loc="upper left", fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def predictions_frame(
    manifest: pd.DataFrame, true: np.ndarray, **preds: np.ndarray
) -> pd.DataFrame:
    """Per-tile report: tile id and position, true stress and one column per predictor."""
    cols = [c for c in ("tile", "lot", "scan", "row", "col") if c in manifest.columns]
    frame = manifest[cols].reset_index(drop=True).copy()
    frame["true"] = np.asarray(true, float)
    for name, values in preds.items():
        frame[name] = np.asarray(values, float)
    return frame
