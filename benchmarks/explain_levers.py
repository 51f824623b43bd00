"""Four truth-free levers on the explanations, each decided by a rule written before its result
(issue 14, 2026-12-05); none was adopted. On every study's TRAINING lots (6 seeded tiles of each
of the 24, the oracle rendered here, as ``gain_variants.py``); the held-out lots only report.

1. **The meter regression's attenuation** (``semknobs.explain.natural``). Diagnosis, reading the
   truth: within a lot the nominal tile attributes hardly vary (``within-lot sd`` below) while
   the readings do, so the meter regression follows the regressor across the *realised*
   variation of a lot's tiles (particle draws), and an errors-in-variables correction against
   the nominal truth has nothing to correct. Regression calibration instead: each reading
   replaced by the concept network's (C, trained on readings and labels only), ``CR`` (OLS on C)
   and ``IV`` (the readings instrumented by C). Rule: adopt a variant iff its lot centred
   cosine beats MR's on >= 2 of 3 studies with a mean gain >= 0.05, no sign accuracy drops by
   > 0.10 and no median cosine by > 0.05.
2. **Residual edits** ``x + G(x, b, a) - G(x, a, a)``: the regressor's gradient taken at the real
   tile, the generator giving only the direction. Rule: adopt iff the per-tile median cosine
   rises on >= 2 of 3 studies (mean rise >= 0.02), no study's per-tile or gain-corrected lot
   centred cosine falls by > 0.05, no sign accuracy by > 0.10.
3. **The concept network's Jacobian of the edits** (autograd, no meter noise): ``CJd`` divides
   each knob's gradient by C's gain of that knob (floored at 0.1, so a knob C barely sees is
   not divided by ~0), ``CJf`` solves ``J_C^T s = g``. Rule: adopt a variant iff its per-tile
   median cosine beats KG's by >= 0.02 on >= 2 of 3 studies and on
   average, no sign accuracy drops by > 0.10, and its lot mean's lot centred cosine is not below
   KGG's by > 0.05.
4. **Zoom as a size knob** (no generator): ``dR/ds`` of the tile zoomed by s in [1.05, 1.25],
   divided by the meter's pooled size change per unit s, as the size entry (``ZS``; in the
   regressor's standardised units, as the knob gradient is here). Rule:
   adopt iff the per-tile size sign accuracy beats KG's by >= 0.05 on >= 2 of 3 studies and
   falls by no more than 0.05 on any, the per-tile median cosine rises on average and falls by
   no more than 0.02 on any, and ``ZS gain``'s lot centred cosine is not below KGG's by > 0.05.

5. **Where the two truth-free explainers agree** (added after 1-4, its own rule written before
   its result): per tile and attribute, the sign where KGG and MR agree, "undetermined" where
   they do not. Rule: report it as a flag iff on every study the sign accuracy on the agreeing
   entries is at least the better explainer's overall accuracy + 0.03, with coverage >= 0.5.
   (The margin cannot be met where an explainer is already above 0.97: on the confounded study
   KGG's training-lot accuracy is 0.984. The rule stands as written.)

Also: how much of the per-tile spread is SmoothGrad's sampling (a second seed, 64 draws).
KG: the knob gradient per tile; KGG: ``knob_gradient_gain``; MR: ``meter_regression``. The
knob gradients here are in the regressor's standardised units per knob unit (MPa: times the
regressor's target sd, which the notes give); the meter regressions in MPa. Scores are cosines
and signs, so only each explainer's own units matter.
Needs ``make science``; ~10 min on 2 cores.

    python benchmarks/explain_levers.py   # -> benchmarks/explain_levers.{json,md}
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from semknobs.config import from_mapping, load_params
from semknobs.data.tiles import load_tiles
from semknobs.data.truth import read_truth, tile_truth
from semknobs.evaluation import fidelity
from semknobs.evaluation.fidelity import cosine
from semknobs.explain.bundle import in_batches
from semknobs.explain.gradient import KnobGradient, KnobGradientParams, lot_mean
from semknobs.explain.measured import (
    CorrectedParams,
    calibrated_readings,
    gain_corrected,
)
from semknobs.explain.natural import lot_slopes
from semknobs.models.concept import ConceptNet
from semknobs.models.regressor import predict
from semknobs.pixels import to_model, to_uint8
from semknobs.train.attgan_params import AttGANTrainParams
from semknobs.train.concept import net_config

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gain_variants as gv
import knob_gradient_variants as kv

HERE = Path(__file__).resolve().parent
A = kv.A
ZOOM = (1.05, 1.25)
VERDICT = {True: "adopt", False: "reject"}


class Residual(nn.Module):
    """The edit as the real tile plus the generator's change: ``x + G(x, b, a) - G(x, a, a)``."""

    def __init__(self, gen: nn.Module):
        super().__init__()
        self.gen = gen

    def forward(self, x: torch.Tensor, attrs: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        return (x + self.gen(x, attrs, source) - self.gen(x, source, source)).clamp(-1, 1)


def concept_net(root: Path) -> ConceptNet:
    """The study's concept network, from the AttGAN training checkpoint (it ships nowhere else),
    with its particle-count read when the study trained one."""
    raw = load_params(root / "params.yaml")["train_attgan"]["train"]
    train = from_mapping(AttGANTrainParams, raw)
    net = ConceptNet(net_config(train.concept, count=train.lambda_count > 0))
    state = load_file(root / "checkpoints" / "attgan" / "state.safetensors")
    prefix = "module.concept."
    net.load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})
    return net.eval().requires_grad_(False)


def read_concepts(net: ConceptNet, tiles: np.ndarray) -> np.ndarray:
    read = lambda x: net(x, symmetric=True)  # noqa: E731
    return in_batches(read, to_model(tiles), 256).numpy()


def instrumented(predictions, readings, instruments, lots, min_tiles: int = 10) -> dict:
    """Per lot, 2SLS of the predictions on the readings, instrumented (just identified); NaN
    for a lot with fewer than ``min_tiles`` read tiles or a singular moment matrix."""
    out = {}
    ok = np.isfinite(readings).all(axis=1)
    for lot in np.unique(lots):
        i = (lots == lot) & ok
        x, z = (np.c_[np.ones(i.sum()), v[i]] for v in (readings, instruments))
        out[lot] = np.full(len(A), np.nan)
        if i.sum() >= min_tiles and np.linalg.matrix_rank(z.T @ x) == len(A) + 1:
            out[lot] = np.linalg.solve(z.T @ x, z.T @ predictions[i])[1:]
    return out


def concept_jacobian(gen, net, x: torch.Tensor, attrs: torch.Tensor) -> np.ndarray:
    """``J[n, i, j]``: C's reading i of the edit per unit of knob j, by autograd at ``attrs``."""
    gen.eval()
    jac = np.zeros((len(x), len(A), len(A)))
    for s in range(0, len(x), 48):
        var = attrs[s : s + 48].clone().requires_grad_(True)
        read = net(gen(x[s : s + 48], var, attrs[s : s + 48]), symmetric=True)
        for i in range(len(A)):
            (grad,) = torch.autograd.grad(read[:, i].sum(), var, retain_graph=i < len(A) - 1)
            jac[s : s + 48, i] = grad.numpy()
    return jac


def zoom(x: torch.Tensor, s: float) -> torch.Tensor:
    """The tile's central 1/s of each side resampled to the full tile (bilinear)."""
    theta = torch.zeros(len(x), 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1 / s
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def study_rows(study: str, root: Path) -> tuple[list[dict], list[str]]:
    kv.ROOT = root
    params = load_params(root / "params.yaml")
    sc = kv.load_scored("train", 6)
    lots = sc.tiles["lot"].to_numpy()
    kg_params = from_mapping(KnobGradientParams, params["explain"]["knob_gradient"])
    corr = from_mapping(CorrectedParams, params["explain"]["corrected"])
    calib = kv.meter_calibration(sc.scaler)

    def gradient(gen, p=kg_params):
        return KnobGradient(gen, sc.reg, p).attribute(sc.x, sc.attrs).gradient

    def jacobian(gen):
        return kv._jacobian(sc, gen, calib)

    def gained(g, jac):
        return gain_corrected(g, jac, lots, corr.gain_clip, corr.gain_min)

    g, jac = gradient(sc.gen), jacobian(sc.gen)
    out = {"KG": g, "KGG": gained(g, jac)}
    notes = []
    # 1. the meter regression and its regression calibration by C
    tiles, manifest = load_tiles(root / "data" / "tiles")
    all_lots = manifest["lot"].to_numpy()
    pred = predict(sc.reg, tiles)
    readings = calibrated_readings(root / "data" / "measurements.csv", manifest, calib)
    net = concept_net(root)
    concepts = read_concepts(net, tiles)
    fits = {
        "MR": lot_slopes(pred, readings, all_lots).per_tile,
        "CR": lot_slopes(pred, concepts, all_lots).per_tile,
    }
    iv = instrumented(pred, readings, concepts, all_lots)
    fits["IV"] = lambda which: np.stack([iv[lot] for lot in np.asarray(which)])
    out |= {name: per_tile(lots) for name, per_tile in fits.items()}
    truth = read_truth(root / "data" / "synthetic" / "truth")  # diagnosis only
    nominal = sc.scaler.transform(tile_truth(truth.fields, manifest)[A].to_numpy())
    train = np.isin(all_lots, list(set(lots)))

    def within_sd(v):
        frame = pd.DataFrame(v[train]).groupby(all_lots[train])
        return (frame.transform(lambda c: c - c.mean())).std().to_numpy()

    notes.append(
        f"{study}: within-lot sd (knob units) of the nominal true attributes "
        + " / ".join(f"{v:.3f}" for v in within_sd(nominal))
        + ", of the meter's readings "
        + " / ".join(f"{v:.3f}" for v in within_sd(readings))
        + ", of C's "
        + " / ".join(f"{v:.3f}" for v in within_sd(concepts))
        + "."
    )
    # 2. residual edits
    residual = Residual(sc.gen)
    g_res = gradient(residual)
    out |= {"residual KG": g_res, "residual KGG": gained(g_res, jacobian(residual))}
    # 3. the concept network's Jacobian
    cj = concept_jacobian(sc.gen, net, sc.x, sc.attrs)
    diag = np.diagonal(cj, axis1=1, axis2=2)
    out["CJd"] = g / np.clip(diag, 0.1, None)
    out["CJf"] = np.stack([np.linalg.solve(cj[n].T, g[n]) for n in range(len(g))])
    out |= {f"{k} lot": lot_mean(out[k], lots) for k in ("CJd", "CJf")}
    notes.append(f"{study}: C's mean gain per knob " + " / ".join(f"{v:.2f}" for v in diag.mean(0)))
    # 4. zoom as the size knob
    lo, hi = (zoom(sc.x, s) for s in ZOOM)
    change = (calib.read(to_uint8(hi), 2) - calib.read(to_uint8(lo), 2)) / (ZOOM[1] - ZOOM[0])
    slope = (predict(sc.reg, to_uint8(hi)) - predict(sc.reg, to_uint8(lo))) / (ZOOM[1] - ZOOM[0])
    slope /= float(sc.reg.target_std)  # MPa -> the standardised units of the knob gradient
    zs = g.copy()
    zs[:, 0] = slope / np.nanmean(change[:, 0])
    out |= {"ZS": zs, "ZS lot": lot_mean(zs, lots), "ZS gain": out["KGG"].copy()}
    out["ZS gain"][:, 0] = out["ZS lot"][:, 0]
    notes.append(
        f"{study}: zoom, the meter's change per unit s "
        + " / ".join(f"{v:+.2f}" for v in np.nanmean(change, 0))
    )
    # SmoothGrad's sampling
    second = gradient(sc.gen, replace(kg_params, seed=1))
    out |= {
        "KG seed 1": second,
        "KG 64 draws": gradient(sc.gen, replace(kg_params, samples=64, seed=2)),
    }
    sd = float(sc.reg.target_std)
    notes.append(
        f"{study}: mean knob gradient, MPa per knob unit (target sd {sd:.2f}): KG "
        + " / ".join(f"{v:+.2f}" for v in g.mean(0) * sd)
        + "; residual KG "
        + " / ".join(f"{v:+.2f}" for v in g_res.mean(0) * sd)
    )
    agree = np.median(cosine(g * sc.slopes, second * sc.slopes))
    notes.append(f"{study}: per-tile cosine of two SmoothGrad seeds (median) {agree:.3f}")
    rows = []
    for name, e in out.items():
        s = fidelity.scores(e * sc.slopes, sc.oracle, sc.known, lots)
        rows.append({"study": study, "lots": "train", "variant": name, **s})
    rows.append(
        {
            "study": study,
            "lots": "train",
            **agreement(out["KGG"] * sc.slopes, out["MR"] * sc.slopes, sc.oracle, sc.known),
        }
    )
    # the held-out lots, meter-regression variants only (report only)
    test = kv.load_scored("test")
    test_lots = test.tiles["lot"].to_numpy()
    for name, per_tile in fits.items():
        s = fidelity.scores(per_tile(test_lots) * test.slopes, test.oracle, test.known, test_lots)
        rows.append({"study": study, "lots": "test", "variant": name, **s})
    means = {name: per_tile(test_lots) * test.slopes for name, per_tile in fits.items()}
    notes.append(
        f"{study}: held out, mean MPa per true unit: oracle "
        + " / ".join(f"{v:+.1f}" for v in test.oracle.mean(0))
        + "; "
        + "; ".join(f"{n} " + " / ".join(f"{v:+.1f}" for v in m.mean(0)) for n, m in means.items())
    )
    kgg_test = test.tiles[[f"knob_gradient_gain_{a}" for a in A]].to_numpy()
    mr_test = fits["MR"](test_lots) * test.slopes
    rows.append(
        {"study": study, "lots": "test", **agreement(kgg_test, mr_test, test.oracle, test.known)}
    )
    return rows, notes


def agreement(kgg, mr, oracle, known) -> dict[str, float | str]:
    """Sign accuracy of KGG and MR where the oracle's sign is known, and of their common sign
    where they agree (``coverage``: the share of known entries where they do)."""
    right, agree = np.sign(kgg) == np.sign(oracle), (np.sign(kgg) == np.sign(mr)) & known
    return {
        "variant": "KGG = MR",
        "accuracy_kgg": float(right[known].mean()),
        "accuracy_mr": float((np.sign(mr) == np.sign(oracle))[known].mean()),
        "coverage": float(agree.sum() / known.sum()),
        "accuracy_agreeing": float(right[agree].mean()),
    }


def verdicts(table: pd.DataFrame) -> list[str]:
    t = table[(table["lots"] == "train") & (table["variant"] != "KGG = MR")]
    t = t.set_index(["variant", "study"])

    def m(variant, metric):
        return t.loc[variant][metric]

    signs = [f"sign_{a}" for a in A]

    def sign_drop(variant, base):
        return float((t.loc[base][signs] - t.loc[variant][signs]).max(axis=None))

    out = []
    for v in ("CR", "IV"):
        gain = m(v, "lot_centred_cosine") - m("MR", "lot_centred_cosine")
        ok = (gain > 0).sum() >= 2 and gain.mean() >= 0.05 and sign_drop(v, "MR") <= 0.10
        ok &= bool((m(v, "cosine_median") >= m("MR", "cosine_median") - 0.05).all())
        out.append(
            f"{v}: lot centred gain over MR {gain.mean():+.3f} (mean), "
            f"max sign drop {sign_drop(v, 'MR'):.2f} -> {VERDICT[ok]}"
        )
    rise = m("residual KG", "cosine_median") - m("KG", "cosine_median")
    fall = m("KGG", "lot_centred_cosine") - m("residual KGG", "lot_centred_cosine")
    ok = (
        (rise > 0).sum() >= 2
        and rise.mean() >= 0.02
        and (rise >= -0.05).all()
        and (fall <= 0.05).all()
    )
    ok &= sign_drop("residual KG", "KG") <= 0.10
    out.append(f"residual edits: per-tile cosine change {rise.mean():+.3f} (mean) -> {VERDICT[ok]}")
    for v in ("CJd", "CJf"):
        rise = m(v, "cosine_median") - m("KG", "cosine_median")
        lot_ok = (
            m(f"{v} lot", "lot_centred_cosine") >= m("KGG", "lot_centred_cosine") - 0.05
        ).all()
        ok = (
            (rise >= 0.02).sum() >= 2
            and rise.mean() >= 0.02
            and sign_drop(v, "KG") <= 0.10
            and lot_ok
        )
        out.append(f"{v}: per-tile cosine change {rise.mean():+.3f} (mean) -> {VERDICT[ok]}")
    size = m("ZS", "sign_size") - m("KG", "sign_size")
    rise = m("ZS", "cosine_median") - m("KG", "cosine_median")
    ok = (
        (size >= 0.05).sum() >= 2
        and (size >= -0.05).all()
        and rise.mean() > 0
        and (rise >= -0.02).all()
    )
    ok &= bool((m("ZS gain", "lot_centred_cosine") >= m("KGG", "lot_centred_cosine") - 0.05).all())
    out.append(
        f"zoom: size sign change {size.mean():+.2f} (mean), "
        f"per-tile cosine change {rise.mean():+.3f} -> {VERDICT[ok]}"
    )
    agree = table[(table["lots"] == "train") & (table["variant"] == "KGG = MR")]
    best = agree[["accuracy_kgg", "accuracy_mr"]].max(axis=1)
    ok = bool(((agree["accuracy_agreeing"] >= best + 0.03) & (agree["coverage"] >= 0.5)).all())
    out.append(
        "KGG = MR: accuracy where they agree minus the better one's "
        + " / ".join(f"{v:+.3f}" for v in agree["accuracy_agreeing"] - best)
        + f" -> {VERDICT[ok]}"
    )
    return out


def main() -> int:
    torch.set_num_threads(2)
    rows, notes = [], []
    for study, root in gv.STUDIES.items():
        if not (root / "checkpoints" / "attgan" / "state.safetensors").exists():
            raise SystemExit(f"{root}: no AttGAN checkpoint (run `make science` first)")
        part, note = study_rows(study, root)
        rows += part
        notes += note
        print(*note, sep="\n", flush=True)
    (HERE / "explain_levers.json").write_text(json.dumps(rows, indent=2) + "\n")
    table = pd.DataFrame(rows)
    lines = ["| lots | study | variant | cosine median | lot centred | signs s / p / d / f |"]
    lines.append("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        if r["variant"] == "KGG = MR":
            continue
        signs = " / ".join(f"{r[f'sign_{a}']:.2f}" for a in A)
        lines.append(
            f"| {r['lots']} | {r['study']} | {r['variant']} | {r['cosine_median']:.3f} | "
            f"{r['lot_centred_cosine']:.3f} | {signs} |"
        )
    lines += [
        "",
        "| lots | study | KGG signs | MR signs | agree (coverage) | signs where they agree |",
    ]
    lines.append("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        if r["variant"] == "KGG = MR":
            lines.append(
                f"| {r['lots']} | {r['study']} | {r['accuracy_kgg']:.3f} | {r['accuracy_mr']:.3f} "
                f"| {r['coverage']:.2f} | {r['accuracy_agreeing']:.3f} |"
            )
    text = "\n".join(lines) + "\n\nTraining lots: 144 tiles per study, oracle rendered here. "
    text += "Test lots: the explain stage's scored tiles (report only).\n\n"
    text += "\n".join(f"* {n}" for n in notes) + "\n\nRules (module docstring):\n\n"
    text += "\n".join(f"* {v}" for v in verdicts(table)) + "\n"
    (HERE / "explain_levers.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
