"""The referee of the explanations (synthetic studies). EVALUATION ONLY.

Scores what the explainers said about held-out tiles against what is true, in true-attribute
units, through two references:

* the regressor's real response ``g_R = dR/dt``, measured by the oracle on rendered
  interventions (:mod:`semknobs.evaluation.oracle`);
* the stress law's closed-form gradient ``g_L`` at each tile's true attributes.

Three fidelities (:mod:`semknobs.evaluation.fidelity` for the metrics): ``regressor/rl`` (the
regressor against the law: the ceiling for any explainer of this regressor), ``<explainer>/er``
(the explanation against the regressor: what an explainer is responsible for) and
``<explainer>/el`` (against the law). Counterfactuals are also judged by validity: the proposed
knob change, mapped to true attributes and rendered, must move the regressor's prediction
(``counterfactual/validity_model``) and the law's stress (``counterfactual/validity_law``) the
requested way; only searches that converged are counted. ``agreed_signs/er/*``: the signs the
lot's gain-corrected knob gradient and meter regression agree on
(:mod:`semknobs.explain.agreement`), scored once per held-out lot against the lot's mean oracle
gradient (``er`` only): coverage, accuracy, the share of wrong signs they leave undetermined
(:func:`~semknobs.evaluation.fidelity.sign_agreement`) and ``entries`` (how many are known).

Units. Explanations live in normalised knob units (expert scores scaled to [0, 1]); per
attribute the labels follow the truth as ``label ~ s_k * true + c_k`` over the lots
(:func:`label_fit`). A gradient (MPa per knob unit) becomes MPa per true unit by ``* s_k``;
a displacement (a counterfactual's delta-A) becomes a true-attribute change by ``/ s_k``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from semknobs.attributes import ATTRIBUTES
from semknobs.data.truth import Truth, tile_truth
from semknobs.errors import DataError
from semknobs.evaluation import fidelity
from semknobs.evaluation.oracle import Oracle, OracleParams
from semknobs.evaluation.referee_figures import fidelity_figure, scatter_figure
from semknobs.explain.lot_support import proxy_flags


@dataclass(frozen=True)
class RefereeParams:
    tiles_per_lot: int = 6  # held-out tiles scored per test lot
    oracle: OracleParams = field(default_factory=OracleParams)
    bootstrap: int = 1000  # cluster-bootstrap resamples (over test lots) for the intervals
    seed: int = 0


@dataclass
class Counterfactuals:
    """One Eq. 2 target's searches on the scored tiles (normalised knob units)."""

    target: str  # "higher" or "lower"
    start: np.ndarray  # (n, 4) A
    new: np.ndarray  # (n, 4) A'
    converged: np.ndarray  # (n,) bool: the search reached its target in the model's eyes


@dataclass
class RefereeOutput:
    metrics: dict[str, float]
    tables: dict[str, pd.DataFrame]
    figures: dict[str, Figure]


def label_fit(truth_lots: pd.DataFrame, labels: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Per attribute, the least-squares ``label = s_k * true + c_k`` over the lots: (s, c)."""
    merged = truth_lots.merge(labels, on="lot", suffixes=("_true", "_label"))
    fits = np.array([np.polyfit(merged[f"{a}_true"], merged[f"{a}_label"], 1) for a in ATTRIBUTES])
    if np.any(np.abs(fits[:, 0]) < 1e-6):
        raise DataError(f"labels do not follow the true attributes (slopes {fits[:, 0]})")
    return fits[:, 0], fits[:, 1]


def true_attributes(truth: Truth, tiles: pd.DataFrame) -> np.ndarray:
    """(n, 4) true attributes of the given manifest rows; DataError if the truth lacks them."""
    values = tile_truth(truth.fields, tiles)[list(ATTRIBUTES)]
    if values.isna().any(axis=None):
        raise DataError("the ground truth does not cover these tiles (not this study's truth?)")
    return values.to_numpy()


def referee(
    *,
    truth: Truth,
    tiles: pd.DataFrame,
    labels: pd.DataFrame,
    gradients: dict[str, np.ndarray],
    directions: dict[str, np.ndarray],
    counterfactuals: list[Counterfactuals],
    oracle: Oracle,
    params: RefereeParams,
    support: pd.DataFrame | None = None,
    agreement: tuple[np.ndarray, np.ndarray] | None = None,
) -> RefereeOutput:
    """Score every explanation of the rows of ``tiles`` (manifest rows of held-out tiles).

    ``gradients``: name -> (n, 4) MPa per knob unit (knob gradient, sensitivity slopes,
    correlation slopes); ``directions``: name -> (n, 4) knob displacements (counterfactual
    delta-A); ``labels``: normalised lot labels (lot + the four attributes); ``support``: the
    explain stage's proxy flags (:func:`semknobs.explain.lot_support.lot_support`), checked
    against the same rule applied to the regressor's measured use; ``agreement``: each row's lot
    knob gradient (gain-corrected) and lot meter regression (MPa per knob unit, NaN allowed),
    whose agreed signs are scored once per lot (:func:`_agreement`).
    """
    started = time.perf_counter()
    tiles = tiles.reset_index(drop=True)
    true = true_attributes(truth, tiles)
    slopes, _ = label_fit(truth.lots, labels)
    ids = tiles["tile"].to_numpy()
    lots = tiles["lot"].to_numpy()
    law = truth.law.gradient(true)
    law_known = np.abs(law) > 1e-9 * max(1.0, float(np.abs(law).max()))
    measured = oracle.gradient(true, ids)
    g_r, se = measured.gradient, measured.se
    r_known = np.abs(g_r) > 2 * se

    mapped = {name: g * slopes for name, g in gradients.items()}
    mapped |= {name: d / slopes for name, d in directions.items()}
    boot = dict(n_boot=params.bootstrap, seed=params.seed)
    rows = [
        _rows("regressor", "rl", fidelity.scores_with_ci(g_r, law, lots, known=law_known, **boot))
    ]
    for name, e in mapped.items():
        rows.append(_rows(name, "er", fidelity.scores_with_ci(e, g_r, lots, known=r_known, **boot)))
        rows.append(
            _rows(name, "el", fidelity.scores_with_ci(e, law, lots, known=law_known, **boot))
        )
    constant = np.broadcast_to(g_r.mean(axis=0), g_r.shape)  # a reference row, not an explainer
    rows.append(
        _rows("constant", "er", fidelity.scores_with_ci(constant, g_r, lots, known=r_known, **boot))
    )
    table = pd.concat(rows, ignore_index=True)
    metrics = {
        f"{r.explainer}/{r.fidelity}/{r.metric}": float(r.value)
        for r in table.itertuples()
        if r.explainer != "constant"
    }
    if agreement is not None:
        metrics |= _agreement(agreement, slopes, g_r, se, lots)

    validity, v_metrics = _validity(counterfactuals, true, slopes, ids, truth, oracle)
    metrics |= v_metrics
    for k, a in enumerate(ATTRIBUTES):
        metrics[f"oracle/se_{a}"] = float(np.median(se[:, k]))
        metrics[f"oracle/slope_{a}"] = float(np.median(g_r[:, k]))
        metrics[f"law/slope_{a}"] = float(np.median(law[:, k]))
    # the oracle's own reliability: its two halves of seeds scored against each other
    reliability = fidelity.split_half(*measured.halves(), lots)
    metrics |= {f"oracle/{k}": v for k, v in reliability.items()}
    tables = {}
    if support is not None:
        tables["lot_support"], flags = _check_flags(support, g_r / slopes)
        metrics |= flags
    metrics["oracle/renders"] = float(oracle.renders)
    metrics["oracle/wall_s"] = time.perf_counter() - started
    metrics["referee/n_tiles"] = float(len(tiles))
    metrics["referee/n_lots"] = float(len(np.unique(lots)))

    per_tile = tiles[["tile", "lot", "scan", "row", "col"]].copy()
    for k, a in enumerate(ATTRIBUTES):
        per_tile[f"true_{a}"] = true[:, k]
        per_tile[f"oracle_{a}"] = g_r[:, k]
        per_tile[f"oracle_se_{a}"] = se[:, k]
        per_tile[f"law_{a}"] = law[:, k]
        for name, e in mapped.items():
            per_tile[f"{name}_{a}"] = e[:, k]
    figures = {
        "fidelity.png": fidelity_figure(table),
        "knob_gradient_vs_oracle.png": scatter_figure(per_tile, list(mapped)),
    }
    tables |= {"fidelity": table, "referee_tiles": per_tile, "validity": validity}
    return RefereeOutput(metrics, tables, figures)


def _check_flags(support: pd.DataFrame, oracle_use: np.ndarray) -> tuple[pd.DataFrame, dict]:
    """The proxy rule on the regressor's measured use (MPa per knob unit, per tile): its flags
    (``regressor/lots/flag_<a>``) and each explainer's agreement with them."""
    median = np.median(oracle_use, axis=0)
    fit = support.drop_duplicates("attribute").set_index("attribute").loc[list(ATTRIBUTES)]
    truth_flag = proxy_flags(median, fit["lot_fit_lo"].to_numpy(), fit["lot_fit_hi"].to_numpy())
    metrics = {f"regressor/lots/flag_{a}": float(truth_flag[k]) for k, a in enumerate(ATTRIBUTES)}
    metrics |= {f"regressor/lots/use_{a}": float(median[k]) for k, a in enumerate(ATTRIBUTES)}
    for name, part in support.groupby("source"):
        said = part.set_index("attribute").loc[list(ATTRIBUTES), "flag"].to_numpy(bool)
        metrics[f"{name}/lots/flag_agreement"] = float(np.mean(said == truth_flag))
    oracle_rows = fit.reset_index()[["attribute", "lot_fit", "lot_fit_lo", "lot_fit_hi"]].assign(
        source="regressor (oracle)", use=median, flag=truth_flag
    )
    return pd.concat([support, oracle_rows[support.columns]], ignore_index=True), metrics


def _agreement(
    agreement: tuple[np.ndarray, np.ndarray],
    slopes: np.ndarray,
    g_r: np.ndarray,
    se: np.ndarray,
    lots: np.ndarray,
) -> dict[str, float]:
    """``agreed_signs/er/*``: the signs two lot-level explainers agree on, one entry per lot and
    attribute (a lot's value is the same on all its tiles), against the lot's oracle (its tiles'
    mean; known where beyond twice its standard error). ``entries``: how many are known."""
    by = pd.DataFrame(g_r).groupby(lots)
    oracle = by.mean().to_numpy()
    lot_se = np.sqrt(pd.DataFrame(se**2).groupby(lots).sum().to_numpy())
    lot_se /= by.size().to_numpy()[:, None]
    first = np.unique(lots, return_index=True)[1]  # each lot's first row, sorted as groupby
    kgg, mr = (np.asarray(x, dtype=float)[first] * slopes for x in agreement)
    known = np.abs(oracle) > 2 * lot_se
    out = fidelity.sign_agreement(kgg, mr, oracle, known)
    return {f"agreed_signs/er/{k}": v for k, v in out.items()} | {
        "agreed_signs/er/entries": float(known.sum())
    }


def _rows(explainer: str, fid: str, table: pd.DataFrame) -> pd.DataFrame:
    return table.assign(explainer=explainer, fidelity=fid)[
        ["explainer", "fidelity", "metric", "value", "low", "high"]
    ]


def _validity(
    counterfactuals: list[Counterfactuals],
    true: np.ndarray,
    slopes: np.ndarray,
    ids: np.ndarray,
    truth: Truth,
    oracle: Oracle,
) -> tuple[pd.DataFrame, dict[str, float]]:
    """Render each converged counterfactual; does it move R and the law the requested way?"""
    parts = []
    for cf in counterfactuals:
        rows = np.flatnonzero(cf.converged)
        if len(rows) == 0:
            continue
        sign = 1.0 if cf.target == "higher" else -1.0
        start = true[rows]
        end = np.clip(start + (cf.new[rows] - cf.start[rows]) / slopes, 0, 1)
        effect, se = oracle.effect(start, end, ids[rows])
        law_change = truth.law(end) - truth.law(start)
        parts.append(
            pd.DataFrame(
                {
                    "target": cf.target,
                    "tile": ids[rows],
                    "oracle_change_mpa": effect,
                    "oracle_change_se": se,
                    "law_change_mpa": law_change,
                    "valid_model": sign * effect > 0,
                    "valid_law": sign * law_change > 0,
                    **{
                        f"true_delta_{a}": end[:, k] - start[:, k] for k, a in enumerate(ATTRIBUTES)
                    },
                }
            )
        )
    table = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    n_total = sum(len(cf.converged) for cf in counterfactuals)
    metrics = {
        "counterfactual/converged": float(len(table) / n_total) if n_total else float("nan"),
        "counterfactual/validity_n": float(len(table)),
        "counterfactual/validity_model": (
            float(table["valid_model"].mean()) if len(table) else float("nan")
        ),
        "counterfactual/validity_law": (
            float(table["valid_law"].mean()) if len(table) else float("nan")
        ),
    }
    for cf in counterfactuals:
        part = table[table["target"] == cf.target] if len(table) else table
        metrics[f"counterfactual/validity_model_{cf.target}"] = (
            float(part["valid_model"].mean()) if len(part) else float("nan")
        )
    return table, metrics


__all__ = ["Counterfactuals", "OracleParams", "RefereeOutput", "RefereeParams", "referee"]
