"""Where the two truth-free explainers agree, on FRESH lots (issue 14, 2026-12-05).

``knob_gradient_gain`` (KGG: the lot's knob gradient, gain-corrected) and ``meter_regression``
(MR: the lot's predictions regressed on its tiles' meter readings, no AttGAN) fail in different
places. Where they give an attribute the same sign, is that sign right more often? On the
training-lot selection and the six held-out lots per study it was (``explain_levers.md``), but
those figures were seen before this rule, so they no longer test it. Here each study's
committed explainer bundle explains lots that did not exist before:

* 24 fresh lots per study from the study's own design (``lot_design``, seed 20261205), rendered
  as ``synthesize`` renders a lot (its scans, field scatter and microscope) and tiled by the
  study's tiling; labels are expert scores drawn as ``synthesize`` draws them. The renderer is
  evaluation code: nothing here trains, and the explainers see only tiles and labels.
* KGG: ``KnobExplainer.knob_gradient`` on 6 seeded tiles per lot, starting at the lot's labels
  (as the explain stage starts its referee tiles); MR: ``KnobExplainer.meter_regression`` on all
  the lot's tiles.
* The oracle: ``Oracle.gradient`` at each lot's true attributes with the referee's settings.
  An entry is a (lot, attribute) whose oracle sign is known (``|g| > 2 se``).

Rule (written before the result; its text and the addendum: ``sign_agreement_rules.md``):
ship the agreed sign as an output iff on every study (a) the sign accuracy on agreeing entries
is >= the issue's sign target (0.85 default, 0.80 other_law and confounded), (b) it is >= the
better explainer's overall accuracy, (c) coverage >= 0.60. Per attribute figures report only.

Found after it passed: among these entries each attribute's oracle sign is the same in nearly
every lot, so a constant with the right signs passes (a) too. The table therefore also gives
two constants (the explain stage's ``linear_model``, truth-free; each attribute's majority sign,
picked by the oracle: infeasible) and ``errors_flagged`` (``fidelity.sign_agreement``): of the
entries where either explainer's sign is wrong, the share the agreed sign leaves undetermined,
which no constant can score. That figure follows from the others, so it was not a new test;
the output is kept as a reliability marker of the two per-lot explainers, not as a per-lot sign
claim beyond a study-level one.
Needs ``make science``; ~5 min on 2 cores.

    python benchmarks/sign_agreement.py   # -> benchmarks/sign_agreement.{json,md}
    python benchmarks/sign_agreement.py --oracle-seeds 16   # -> sign_agreement_seeds16.*
    python benchmarks/sign_agreement.py --studies interaction --oracle-seeds 16

With 16 oracle renders per point (~4x the oracle's time) smaller effects get a known sign, so
the cells where the regressor's sign really changes between lots (``mixed_cells``) can be
tested: there a constant cannot be right everywhere (rule: ``sign_agreement_rules.md``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from semknobs.attributes import ATTRIBUTES
from semknobs.config import from_mapping, load_params
from semknobs.data.design import lot_design
from semknobs.data.schemas import read_lots
from semknobs.data.synth import _expert_scores, scan_image
from semknobs.data.tiles import tile_scan
from semknobs.evaluation import fidelity
from semknobs.evaluation.oracle import Oracle, Synthetic
from semknobs.evaluation.referee import RefereeParams
from semknobs.explain.agreement import agreed_signs
from semknobs.explain.bundle import KnobExplainer
from semknobs.models.regressor import predict
from semknobs.serving import regressor_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gain_variants as gv

HERE = Path(__file__).resolve().parent
A = list(ATTRIBUTES)
SEED, LOTS, TILES_PER_LOT = 20261205, 24, 6
ORACLE_IDS = 10**6  # fresh lots' oracle ids start here, past any study's tile ids
STUDIES = {**gv.STUDIES, "interaction": gv.kv.ROOT / ".science" / "interaction"}
TARGET = {"default": 0.85}  # the sign targets: 0.85 on the default study, 0.80 elsewhere


def render_lot(job: tuple) -> np.ndarray:
    """One fresh lot's tiles, uint8 (m, s, s), rendered as ``synthesize`` renders a lot."""
    synthetic, index, true = job
    study, rng = synthetic.study, np.random.default_rng([SEED, 1, index])
    out = []
    for k in range(study.scans_per_lot):
        shape = (study.fields_y, study.fields_x, len(A))
        fields = np.clip(true + study.field_scatter * rng.standard_normal(shape), 0, 1)
        scan = scan_image(fields, study, rng, f"F{index + 1:02d} scan_{k + 1:02d}")
        tiles, _ = tile_scan(scan, synthetic.tiling, Path(f"<fresh lot {index}>"))
        out.append(tiles)
    return np.concatenate(out)


def study_entries(study: str, root: Path, oracle_seeds: int | None = None) -> pd.DataFrame:
    """One row per fresh lot and attribute: KGG's and MR's values (true units), the oracle's."""
    synthetic = Synthetic.from_params(root / "params.yaml")
    rng = np.random.default_rng([SEED, 0])
    true = lot_design(LOTS, synthetic.study.design, rng)
    labels = _expert_scores(true, synthetic.study.experts, rng)
    names = [f"F{i + 1:02d}" for i in range(LOTS)]
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(2, mp_context=ctx) as pool:
        lots = list(pool.map(render_lot, [(synthetic, i, t) for i, t in enumerate(true)]))
    tiles = np.concatenate(lots)
    lot_of = np.repeat(names, [len(t) for t in lots])
    bundle = KnobExplainer.load(root / "models" / "explainer")
    readings = bundle.read_meter(tiles)
    mr = pd.concat(  # one lot per request, as a user explains a lot (explain.limits.max_tiles)
        bundle.meter_regression(tiles[lot_of == n], lot_of[lot_of == n],
                                readings=readings[lot_of == n]).table
        for n in names
    ).set_index("lot")  # fmt: skip
    pick = np.random.default_rng([SEED, 2])
    start = np.r_[0, np.cumsum([len(t) for t in lots])]
    rows = np.concatenate(
        [np.sort(pick.choice(np.arange(s, e), TILES_PER_LOT, replace=False)) for s, e in
         itertools.pairwise(start)]
    )  # fmt: skip
    given = labels[np.searchsorted(names, lot_of[rows])]
    kgg = bundle.knob_gradient(tiles[rows], given, lot_of[rows], readings=readings[rows])
    kgg = kgg.lots.set_index(["lot", "attribute"])["gain_corrected"]
    labels_csv = read_lots(root / "data" / "synthetic" / "lots.csv")
    slopes = gv.kv.label_slopes(labels_csv, root, bundle.scaler)
    # the truth-free constant: the explain stage's linear model of the lot-mean predictions
    linear = pd.read_csv(root / "reports" / "explain" / "linear_model.csv").set_index("attribute")
    params = load_params(root / "params.yaml")["explain"]["referee"]
    oracle_params = from_mapping(RefereeParams, params).oracle
    if oracle_seeds is not None:
        oracle_params = replace(oracle_params, seeds=oracle_seeds)
    reg, _ = regressor_model.load(root / "models" / "regressor")
    with Oracle(synthetic.study, synthetic.tiling, lambda t: predict(reg, t), oracle_params) as o:
        oracle = o.gradient(true, ORACLE_IDS + np.arange(LOTS))
    out = []
    for i, lot in enumerate(names):
        for k, a in enumerate(A):
            out.append(
                {
                    "study": study, "lot": lot, "attribute": a,
                    "kgg": kgg[(lot, a)] * slopes[k], "mr": mr.loc[lot, f"slope_{a}"] * slopes[k],
                    "linear_model": linear.loc[a, "predicted"] * slopes[k],
                    "oracle": oracle.gradient[i, k], "oracle_se": oracle.se[i, k],
                    "known": abs(oracle.gradient[i, k]) > 2 * oracle.se[i, k],
                }
            )  # fmt: skip
    return pd.DataFrame(out)


def majority_sign(truth: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Each column's majority sign among its known entries (a tie: +1): the best constant."""
    return np.where(np.where(known, truth, 0).sum(axis=0) >= 0, 1.0, -1.0)


def study_scores(e: pd.DataFrame) -> list[dict[str, float | str]]:
    """One study's entries: pooled ("all") and per attribute, over the entries whose oracle sign
    is known. Accuracy of KGG, MR, the linear model (a truth-free constant) and the best
    constant (each attribute's majority sign, picked by the oracle: infeasible, the ceiling of
    any constant); coverage, accuracy and ``errors_flagged`` of the agreed sign
    (``fidelity.sign_agreement``); KGG's accuracy where the two disagree."""

    def piv(column: str) -> np.ndarray:
        return e.pivot(index="lot", columns="attribute", values=column)[A].to_numpy(float)

    kgg, mr, linear, oracle = (piv(c) for c in ("kgg", "mr", "linear_model", "oracle"))
    known, truth = piv("known").astype(bool), np.sign(piv("oracle"))
    majority = np.broadcast_to(majority_sign(truth, known), truth.shape)
    undetermined = agreed_signs(kgg, mr) == 0

    def acc(x: np.ndarray, mask: np.ndarray) -> float:
        """Sign accuracy over ``mask``; a missing value (NaN) is left out, not counted wrong."""
        mask = mask & np.isfinite(x)
        return float((np.sign(x) == truth)[mask].mean()) if mask.any() else float("nan")

    def row(name: str, cols: slice) -> dict[str, float | str]:
        m = np.zeros_like(known)
        m[:, cols] = known[:, cols]
        part = fidelity.sign_agreement(np.where(m, kgg, np.nan), np.where(m, mr, np.nan), oracle, m)
        return {
            "study": e["study"].iloc[0], "attribute": name, "entries": int(m.sum()),
            "accuracy_kgg": acc(kgg, m), "accuracy_mr": acc(mr, m),
            "accuracy_linear_model": acc(linear, m), "accuracy_best_constant": acc(majority, m),
            "coverage": part["coverage"], "accuracy_agreeing": part["sign_accuracy"],
            "errors_flagged": part["errors_flagged"],
            "kgg_where_disagree": acc(kgg, m & undetermined),
        }  # fmt: skip

    rows = [row("all", slice(None))]
    # a simpler abstention at the same coverage: KGG's own largest magnitudes (MPa per true unit)
    if not np.isfinite(kgg[known]).all():
        raise SystemExit(f"{e['study'].iloc[0]}: a lot without a knob gradient")
    size = np.abs(kgg)[known]
    keep = size >= np.quantile(size, 1 - rows[0]["coverage"])
    right = (np.sign(kgg) == truth)[known]
    rows[0]["kgg_largest_same_coverage"] = float(right[keep].mean())
    rows[0]["kgg_errors_dropped_largest"] = float((~right & ~keep).sum() / max((~right).sum(), 1))
    rows[0]["kgg_errors_dropped_agreement"] = float(
        (~right & undetermined[known]).sum() / max((~right).sum(), 1)
    )
    return rows + [row(a, slice(k, k + 1)) for k, a in enumerate(A)]


def mixed_cells(table: pd.DataFrame, min_known: int = 10, minority: float = 0.2) -> list[str]:
    """Where the oracle's sign really changes between lots: (study, attribute) cells with >=
    ``min_known`` known entries whose minority sign holds >= ``minority`` of them. Pooled over
    those cells: each explainer's sign accuracy against the best constant (each cell's majority
    sign, oracle-picked) on the same entries; the agreed sign on the entries it covers."""
    known = table[table["known"]].copy()
    known["truth"] = np.sign(known["oracle"])
    cells = []
    for _, g in known.groupby(["study", "attribute"], sort=False):
        share = (g["truth"] > 0).mean()
        if len(g) >= min_known and min(share, 1 - share) >= minority:
            sign = majority_sign(g[["truth"]].to_numpy(), np.ones((len(g), 1), bool))[0]
            cells.append(g.assign(majority=sign))
    lines = [f"\nCells whose oracle sign changes between lots (>= {min_known} known entries, "
             f"minority >= {minority}): "]  # fmt: skip
    if not cells:
        return [lines[0] + "none, so per-lot sign information cannot be tested here."]
    mixed = pd.concat(cells)
    lines[0] += ", ".join(
        f"{g['study'].iloc[0]} {g['attribute'].iloc[0]} ({len(g)})" for g in cells
    )
    right = {n: np.sign(mixed[n]) == mixed["truth"] for n in ("kgg", "mr", "majority")}
    agree = agreed_signs(mixed["kgg"].to_numpy(), mixed["mr"].to_numpy()) != 0
    lines += [
        "",
        "| pooled over those cells | entries | accuracy | best constant on the same entries | "
        "per-lot sign information (rule: >= constant + 0.10) |",
        "| --- | --- | --- | --- | --- |",
    ]
    every = np.ones(len(mixed), bool)
    covered = f"agreed sign (its coverage {agree.mean():.2f})"
    for name, ok, n in (("KGG", every, "kgg"), ("MR", every, "mr"), (covered, agree, "kgg")):
        got, constant = right[n][ok].mean(), right["majority"][ok].mean()
        lines.append(
            f"| {name} | {int(ok.sum())} | {got:.3f} | {constant:.3f} | "
            f"{'yes' if got >= constant + 0.10 else 'no'} |"
        )
    return lines


LEGEND = """\
KGG: each lot's gain-corrected knob gradient (the bundle's `knob_gradient`, 6 tiles); MR: its
meter regression (`meter_regression`, all 72 tiles). An entry is a (lot, attribute) whose oracle
sign is known (|dR/dt| > 2 se); `entries` counts them. Columns: each explainer's sign accuracy;
coverage (share of entries where KGG and MR share a sign); the accuracy of that shared sign;
errors flagged (of the entries where either sign is wrong, the share left undetermined; nan:
none wrong); KGG's accuracy where they disagree; two constants: the explain stage's
`linear_model` (truth-free) and the best constant (each attribute's majority sign, picked by the
oracle: no real method can have it). The rules, as written: `sign_agreement_rules.md`."""


def markdown(rows: list[dict], table: pd.DataFrame, title: str, judged: bool) -> str:
    """The report: legend, the per-study table, the first rule's clauses (judged only on the
    run it was written for), the same-coverage baseline, the constants, the mixed cells."""
    lines = [f"# {title}", "", LEGEND, ""]
    lines += [
        "| study | attribute | entries | KGG signs | MR signs | coverage | signs where they agree "
        "| errors flagged | KGG where they disagree | linear model (constant) | best constant |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    lines += [
        f"| {r['study']} | {r['attribute']} | {r['entries']} | {r['accuracy_kgg']:.3f} | "
        f"{r['accuracy_mr']:.3f} | {r['coverage']:.2f} | {r['accuracy_agreeing']:.3f} | "
        f"{r['errors_flagged']:.2f} | {r['kgg_where_disagree']:.3f} | "
        f"{r['accuracy_linear_model']:.3f} | {r['accuracy_best_constant']:.3f} |"
        for r in rows
    ]
    pooled = [r for r in rows if r["attribute"] == "all"]
    lines.append("\nThe first rule's clauses (a) accuracy where they agree >= the issue's sign "
                 "target, (b) >= the better explainer's, (c) coverage >= 0.60:")  # fmt: skip
    verdict = []
    for r in pooled:
        best, target = max(r["accuracy_kgg"], r["accuracy_mr"]), TARGET.get(r["study"], 0.80)
        ok = (r["accuracy_agreeing"] >= target, r["accuracy_agreeing"] >= best,
              r["coverage"] >= 0.60)  # fmt: skip
        verdict.append(all(ok))
        lines.append(
            f"\n* {r['study']}: (a) {r['accuracy_agreeing']:.3f} >= {target:.2f} "
            f"{ok[0]}; (b) >= better one's {best:.3f} {ok[1]}; (c) coverage "
            f"{r['coverage']:.2f} >= 0.60 {ok[2]}"
        )
    if judged:
        lines.append(
            f"\nFirst rule (06:27): {'passed' if all(verdict) else 'failed'}. Since a constant "
            "passes clause (a) too (below), the output is kept only as a reliability marker "
            "(addendum, 06:46)."
        )
    else:
        lines.append("\nClauses reported, not judged: the rule was written for the default run.")
    lines += [
        "",
        "| study | KGG, its largest at the same coverage | KGG's errors dropped: by that / by "
        "the agreement |",
        "| --- | --- | --- |",
    ]
    lines += [
        f"| {r['study']} | {r['kgg_largest_same_coverage']:.3f} | "
        f"{r['kgg_errors_dropped_largest']:.2f} / {r['kgg_errors_dropped_agreement']:.2f} |"
        for r in pooled
    ]
    studies = " / ".join(r["study"] for r in pooled)
    lines.append(
        f"\nA constant passes clause (a) ({studies}): the best constant sign vector scores "
        + " / ".join(f"{r['accuracy_best_constant']:.3f}" for r in pooled)
        + ", the truth-free linear model "
        + " / ".join(f"{r['accuracy_linear_model']:.3f}" for r in pooled)
        + ". What no constant gives: the undetermined entries hold "
        + " / ".join(f"{r['errors_flagged']:.2f}" for r in pooled)
        + " of the entries where either explainer's sign is wrong (errors flagged)."
    )
    lines += mixed_cells(table)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--oracle-seeds", type=int, help="renders per oracle point (default: the referee's)"
    )
    parser.add_argument(
        "--studies", nargs="+", choices=list(STUDIES), default=list(gv.STUDIES),
        help="studies to run (default: the three of the first rule)",
    )  # fmt: skip
    parser.add_argument(
        "--from-json", action="store_true",
        help="rewrite the report from this run's committed JSON (no rendering)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    suffix = "" if args.studies == list(gv.STUDIES) else "_" + "_".join(args.studies)
    suffix += "" if args.oracle_seeds is None else f"_seeds{args.oracle_seeds}"
    out = HERE / f"sign_agreement{suffix}.json"
    if args.from_json:
        table = pd.DataFrame(json.loads(out.read_text())["entries"])
    else:
        torch.set_num_threads(2)
        entries = []
        for study in args.studies:
            root = STUDIES[study]
            if not (root / "models" / "explainer").exists():
                raise SystemExit(f"{root}: no explainer bundle (run `make science` first)")
            entries.append(study_entries(study, root, args.oracle_seeds))
            print(f"{study}: done", flush=True)
        table = pd.concat(entries, ignore_index=True)
    rows = [r for _, e in table.groupby("study", sort=False) for r in study_scores(e)]
    if not args.from_json:
        out.write_text(
            json.dumps({"rows": rows, "entries": table.to_dict("records")}, indent=1) + "\n"
        )
    renders = "the referee's oracle" if args.oracle_seeds is None else (
        f"{args.oracle_seeds} oracle renders per point")  # fmt: skip
    title = (f"Signs both explainers agree on, {LOTS} fresh lots per study (seed {SEED}), "
             f"{renders}")  # fmt: skip
    judged = args.studies == list(gv.STUDIES) and args.oracle_seeds is None
    text = markdown(rows, table, title, judged)
    out.with_suffix(".md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
