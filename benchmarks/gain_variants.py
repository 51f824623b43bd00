"""Variants of the gain-corrected lot knob gradient on each study's TRAINING lots (issue 14).

``knob_gradient_gain`` divides each lot's knob gradient by the knob's meter-read gain in that
lot, relative to the study's. On the held-out lots of ``make science`` it followed the
regressor between lots on the default and confounded studies and went against it on
``other_law``. This scores the committed correction (V0) and three variants fixed before any
was computed, against the uncorrected lot mean (LM), on six tiles of each of the 24 training
lots of every study with its own models and the oracle rendered for those tiles (as
``knob_gradient_variants.py --per-lot 6``; evaluation only):

* V0 -- committed: ``lot_mean(g) * G / clip(lot gain, 0.25 G, 4 G)``;
* V1 -- the same, clipped to (0.5 G, 2 G);
* V2 -- each lot's gain shrunk toward G first (empirical Bayes per knob: the between-lot
  variance of the lot means over their own sampling variance);
* V3 -- V0 only on knobs whose lot gradients follow their gains (Spearman over lots of
  |lot gradient| with the lot gain > 0.3), the others left as the lot mean;
* V4 -- V0 only on knobs whose study-mean gain is at least 0.5 (``gain_corrected``'s
  ``min_gain``), the others left as the lot mean. Added after V0-V3 had been scored here, with
  its own rule written before it was (the same guards, and a mean lot centred cosine above LM's);
  designed after a per-knob look at those results, so these lots are no untouched selection set
  for it.

Also reported, outside the rule: ``meter_regression`` (``semknobs.explain.natural``: each
lot's predictions of all its tiles regressed on their meter readings; no AttGAN), added after
these variants with its own rule (issue 14 note), on the same oracle tiles.

The rule (written before the run): take the variant with the highest mean lot centred cosine
over the studies among those that lower neither the median cosine (by more than 0.03) nor the
lot centred cosine (by more than 0.05) below LM's on any study; if none, keep V0 and say it
is not safe to read on its own. Needs ``make science`` (the studies' workspaces).

    python benchmarks/gain_variants.py   # -> benchmarks/gain_variants.{json,md}
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy.stats import spearmanr

from semknobs.data.tiles import load_tiles
from semknobs.evaluation import fidelity
from semknobs.explain.bundle import KnobExplainer
from semknobs.explain.gradient import lot_mean
from semknobs.explain.measured import GAIN_CLIP, calibrated_readings, gain_corrected
from semknobs.explain.natural import LotSlopes, MeterRegression

sys.path.insert(0, str(Path(__file__).resolve().parent))
import knob_gradient_variants as kv

HERE = Path(__file__).resolve().parent
STUDIES = {"default": kv.ROOT, **{s: kv.ROOT / ".science" / s for s in ("other_law", "confounded")}}
METRICS = ("cosine_median", "centred_cosine", "lot_centred_cosine")


def _lot_gains(jac: np.ndarray, lots: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame(np.diagonal(jac, axis1=1, axis2=2)).groupby(lots)


def shrunk(g: np.ndarray, jac: np.ndarray, lots: np.ndarray) -> np.ndarray:
    """V2: V0 with each lot's mean gain shrunk toward the study's by its reliability."""
    gains = _lot_gains(jac, lots)
    study = np.nanmean(np.diagonal(jac, axis1=1, axis2=2), axis=0)
    means, noise = gains.mean(), gains.var(ddof=1) / gains.count()
    between = np.maximum(means.var(ddof=1) - noise.mean(), 0.0)
    estimate = (study + between / (between + noise) * (means - study)).loc[lots].to_numpy()
    out = lot_mean(g, lots).copy()
    for k in np.flatnonzero(study > 0):
        used = np.nan_to_num(estimate[:, k], nan=study[k])
        out[:, k] *= study[k] / np.clip(used, *(c * study[k] for c in GAIN_CLIP))
    return out


def mediated(g: np.ndarray, jac: np.ndarray, lots: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """V3: V0 on the knobs whose lot gradients grow with their lot gains, the lot mean else."""
    plain, full = lot_mean(g, lots).copy(), gain_corrected(g, jac, lots)
    per_lot = pd.DataFrame(plain).groupby(lots).mean()
    gains = _lot_gains(jac, lots).mean()
    chosen = [
        k
        for k in range(len(kv.A))
        if spearmanr(per_lot[k].abs(), gains[k], nan_policy="omit")[0] > 0.3
    ]
    plain[:, chosen] = full[:, chosen]
    return plain, [kv.A[k] for k in chosen]


def natural_slopes(root: Path) -> LotSlopes:
    """``meter_regression`` of a study workspace: every tile's prediction on its readings."""
    bundle = KnobExplainer.load(root / "models" / "explainer")
    tiles, manifest = load_tiles(root / "data" / "tiles")
    readings = calibrated_readings(root / "data" / "measurements.csv", manifest, bundle.meter)
    slopes = MeterRegression(bundle.reg.reg).attribute(tiles, readings, manifest["lot"])
    if slopes.table.filter(like="slope_").isna().any(axis=None):
        raise SystemExit(f"{root}: a lot without meter-regression slopes (too few tiles read)")
    return slopes


def main() -> int:
    torch.set_num_threads(2)
    rows, notes = [], []
    for study, root in STUDIES.items():
        if not (root / "models" / "attgan").exists():
            raise SystemExit(f"{root}: no trained models (run `make science` first)")
        kv.ROOT = root
        sc = kv.load_scored("train", 6)
        g = kv.build_variants(sc)["SmoothGrad sigma 0.3"]()
        jac = kv._jacobian(sc)
        lots = sc.tiles["lot"].to_numpy()
        v3, chosen = mediated(g, jac, lots)
        variants = {
            "LM": lot_mean(g, lots),
            "V0": gain_corrected(g, jac, lots),
            "V1": gain_corrected(g, jac, lots, clip=(0.5, 2.0)),
            "V2": shrunk(g, jac, lots),
            "V3": v3,
            "V4": gain_corrected(g, jac, lots, min_gain=0.5),
            "meter_regression": natural_slopes(root).per_tile(lots),
        }
        for name, e in variants.items():
            s = fidelity.scores(e * sc.slopes, sc.oracle, sc.known, lots)
            rows.append({"study": study, "variant": name, **s})
            print(study, name, *(round(s[m], 3) for m in METRICS), flush=True)
        notes.append(
            f"{study}: V3 corrects {', '.join(chosen) or 'nothing'}. " + kv.oracle_ceiling(sc.tiles)
        )
    (HERE / "gain_variants.json").write_text(json.dumps(rows, indent=2) + "\n")
    table = pd.DataFrame(rows)
    lines = ["| study | variant | cosine median | centred | lot centred | signs s / p / d / f |"]
    lines.append("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        signs = " / ".join(f"{r[f'sign_{a}']:.2f}" for a in kv.A)
        cells = " | ".join(f"{r[m]:.3f}" for m in METRICS)
        lines.append(f"| {r['study']} | {r['variant']} | {cells} | {signs} |")
    base = table[table["variant"] == "LM"].set_index("study")
    verdict = [f"LM: mean lot centred {base['lot_centred_cosine'].mean():.3f}"]
    ruled = table[~table["variant"].isin(["LM", "meter_regression"])]
    for name, part in ruled.groupby("variant"):
        part = part.set_index("study")
        ok = (part["cosine_median"] >= base["cosine_median"] - 0.03).all() and (
            part["lot_centred_cosine"] >= base["lot_centred_cosine"] - 0.05
        ).all()
        mean = part["lot_centred_cosine"].mean()
        verdict.append(f"{name}: mean lot centred {mean:.3f}, guards {'pass' if ok else 'FAIL'}")
    text = "\n".join(lines) + "\n\n144 training-lot tiles per study, oracle rendered here.\n\n"
    text += "\n".join(notes) + "\nRule: " + "; ".join(verdict) + "\n"
    (HERE / "gain_variants.md").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
