"""Explain-side variants of the knob gradient, scored like the referee on the committed model.

For issue 14: does averaging make the knob gradient follow the regressor's real response better,
without retraining? Variants: the plain gradient, the mean over the eight symmetries of the
square (test-time augmentation), SmoothGrad in knob space (16 draws of A + N(0, sigma^2),
clamped: ``explain.knob_gradient.smoothing``), both at once (the draws cycle through the eight
views: ``explain.knob_gradient.symmetric``, the same cost), and central differences of
R(G(I; A +- h e_k)), and the lot mean of the default (each tile's gradient replaced by the mean
over the scored tiles of its lot: ``explain.gradient.lot_mean``, the gradient of the lot's mean
prediction), and that lot mean divided by each lot's meter-read gain of the knob relative to
the study's (``explain.measured.gain_corrected``), and each tile's own gradient divided by its own
gain or by one halfway to its lot's (``explain.measured.tile_gain_corrected``; Rule N,
``gain_level_rules.md``).
Mapped to true units by the referee's own label fit and scored against the oracle.

``--lots train`` (the default) CHOOSES: two tiles of each of the 24 training lots, with the
oracle rendered for them here (evaluation code, as in the referee; the stage's default is then a
fixed setting, and the held-out test lots stay unseen). ``--lots test`` only REPORTS, on the
held-out tiles the explain stage scored (oracle slopes from ``reports/explain/referee_tiles.csv``):
picking a variant there would be tuning on test data. ``--per-lot N`` takes N training tiles
per lot instead of two (the lot mean averages N gradients; the stage scores six per test lot);
``--only TEXT`` runs the variants whose name contains TEXT. Needs ``make repro``.

    python benchmarks/knob_gradient_variants.py [--lots test] [--per-lot 6] [--only "sigma 0.3"]
    # -> benchmarks/knob_gradient_variants_<lots>[_<N>perlot].{json,md}
"""

from __future__ import annotations

import argparse
import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from semknobs.attributes import ATTRIBUTES
from semknobs.config import from_mapping, load_params
from semknobs.data.dataset import AttributeScaler
from semknobs.data.schemas import read_lots
from semknobs.data.split import read_splits
from semknobs.data.tiles import load_tiles
from semknobs.data.truth import read_truth, tile_truth
from semknobs.evaluation import fidelity
from semknobs.evaluation.oracle import Oracle, Synthetic
from semknobs.evaluation.referee import RefereeParams, label_fit
from semknobs.explain.gradient import KnobGradient, KnobGradientParams, lot_mean
from semknobs.explain.measured import (
    CorrectedParams,
    MeterCalibration,
    fit_from_files,
    gain_corrected,
    measured_jacobian,
    tile_gain_corrected,
)
from semknobs.meter import MeterParams
from semknobs.models.concept import SYMMETRIES, dihedral
from semknobs.models.regressor import predict
from semknobs.pixels import to_model
from semknobs.serving import attgan_model, regressor_model

ROOT = Path(__file__).resolve().parents[1]
A = list(ATTRIBUTES)


def _central(gen, reg, x: torch.Tensor, attrs: torch.Tensor, h: float) -> np.ndarray:
    out = []
    with torch.no_grad():
        for k in range(len(A)):
            step = torch.zeros(len(A))
            step[k] = h
            up, down = (attrs + step).clamp(0, 1), (attrs - step).clamp(0, 1)
            edits = [reg(gen(x, end, attrs)) for end in (up, down)]
            out.append(((edits[0] - edits[1]) / (up - down)[:, k]).numpy())
    return np.stack(out, axis=1)


def training_rows(manifest: pd.DataFrame, per_lot: int) -> np.ndarray:
    """Manifest rows of ``per_lot`` seeded tiles of every training lot, in manifest order: the
    selection set every benchmark here scores on the training lots."""
    train = set(read_splits(ROOT / "data" / "splits.json").training_lots())
    rng = np.random.default_rng(0)
    lots = {
        lot: idx for lot, idx in sorted(manifest.groupby("lot").indices.items()) if lot in train
    }
    short = sorted(lot for lot, idx in lots.items() if len(idx) < per_lot)
    if short:
        raise SystemExit(f"--per-lot {per_lot}: training lots {short} have fewer tiles")
    return np.sort(
        np.concatenate([rng.choice(idx, per_lot, replace=False) for idx in lots.values()])
    )


def _training_tiles(manifest: pd.DataFrame, reg, per_lot: int = 2) -> pd.DataFrame:
    """``per_lot`` seeded tiles of every training lot and the oracle's dR/dt (and its standard
    error) for them, rendered as the referee renders (its own settings from params.yaml)."""
    tiles = manifest.iloc[training_rows(manifest, per_lot)].reset_index(drop=True)
    truth = read_truth(ROOT / "data" / "synthetic" / "truth")
    true = tile_truth(truth.fields, tiles)[A].to_numpy()
    synthetic = Synthetic.from_params(ROOT / "params.yaml")
    params = from_mapping(RefereeParams, load_params(ROOT / "params.yaml")["explain"]["referee"])
    with Oracle(synthetic.study, synthetic.tiling, lambda t: predict(reg, t), params.oracle) as o:
        measured = o.gradient(true, tiles["tile"].to_numpy())
    first, second = measured.halves()
    for k, a in enumerate(A):
        tiles[f"oracle_{a}"] = measured.gradient[:, k]
        tiles[f"oracle_se_{a}"] = measured.se[:, k]
        tiles[f"oracle_half1_{a}"] = first[:, k]
        tiles[f"oracle_half2_{a}"] = second[:, k]
    return tiles


def oracle_ceiling(tiles: pd.DataFrame) -> str:
    """The oracle's split halves against each other (as the referee reports them), when the
    tiles carry them (the training-lot selection set)."""
    if f"oracle_half1_{A[0]}" not in tiles:
        return ""
    first, second = (tiles[[f"oracle_half{h}_{a}" for a in A]].to_numpy() for h in (1, 2))
    s = fidelity.split_half(first, second, tiles["lot"].to_numpy())
    return (
        f"The oracle's split halves: centred cosine {s['split_half_centred_cosine']:.3f} per "
        f"tile, {s['split_half_lot_centred_cosine']:.3f} on lot means (a perfect explainer's lot "
        f"centred cosine against the full oracle: {s['lot_centred_cosine_ceiling']:.3f}).\n"
    )


def label_slopes(labels: pd.DataFrame, root: Path, scaler: AttributeScaler) -> np.ndarray:
    """Knob units -> true units: the referee's label fit of the study's lot ``labels``
    (unclipped knob units, as the referee fits them) on its truth."""
    knob_labels = labels.copy()
    knob_labels[A] = scaler.transform(labels[A].to_numpy())
    truth = read_truth(root / "data" / "synthetic" / "truth")
    return label_fit(truth.lots, knob_labels)[0]


@dataclass(frozen=True)
class Scored:
    """The committed models and the scored tiles with their oracle, ready for an explainer."""

    gen: torch.nn.Module
    reg: torch.nn.Module
    tiles: pd.DataFrame  # tile, lot, oracle_<a>, oracle_se_<a> (training: oracle_half<h>_<a>)
    x: torch.Tensor  # (n, 1, S, S) in the model's pixel range
    attrs: torch.Tensor  # (n, 4) the tiles' lot labels in knob units, clipped to [0, 1]
    slopes: np.ndarray  # (4,) knob units -> true units, the referee's label fit
    scaler: AttributeScaler  # the AttGAN's labels -> knob units
    oracle: np.ndarray  # (n, 4) dR/dt
    known: np.ndarray  # (n, 4) where the oracle's sign is known (|slope| > 2 se)
    images: np.ndarray  # (n, S, S) uint8: the scored tiles as stored
    rows: pd.DataFrame  # their manifest rows (scan file, position), in the same order

    def score(self, gradient: np.ndarray) -> dict[str, float]:
        """The referee's metrics of (n, 4) knob-unit ``gradient`` against the oracle, per lot."""
        return fidelity.scores(
            gradient * self.slopes, self.oracle, self.known, self.tiles["lot"].to_numpy()
        )


def stage_params() -> KnobGradientParams:
    """The explain stage's knob-gradient settings (``explain.knob_gradient`` of the workspace's
    params.yaml, found through :data:`ROOT` at call time)."""
    section = load_params(ROOT / "params.yaml")["explain"]["knob_gradient"]
    return from_mapping(KnobGradientParams, section)


def load_scored(lots: str, per_lot: int = 2) -> Scored:
    """``lots`` "train": the seeded training-lot selection set (``per_lot`` tiles of each lot),
    oracle rendered here; "test": the held-out tiles the explain stage scored."""
    gen, gan = attgan_model.load(ROOT / "models" / "attgan")
    reg, _ = regressor_model.load(ROOT / "models" / "regressor")
    tiles, manifest = load_tiles(ROOT / "data" / "tiles")
    if lots == "test":
        scored = pd.read_csv(ROOT / "reports" / "explain" / "referee_tiles.csv", dtype={"lot": str})
    else:
        scored = _training_tiles(manifest, reg, per_lot)
    labels = read_lots(ROOT / "data" / "synthetic" / "lots.csv")
    scaler = AttributeScaler.from_dict(gan.scaler)
    slopes = label_slopes(labels, ROOT, scaler)
    oracle = scored[[f"oracle_{a}" for a in A]].to_numpy()
    known = np.abs(oracle) > 2 * scored[[f"oracle_se_{a}" for a in A]].to_numpy()

    position = pd.Series(np.arange(len(manifest)), index=manifest["tile"].to_numpy())
    at = position.loc[scored["tile"]].to_numpy()
    x = to_model(tiles[at])
    by_lot = labels.set_index("lot").loc[scored["lot"], A].to_numpy()
    attrs = torch.from_numpy(np.clip(scaler.transform(by_lot), 0, 1)).float()
    rows = manifest.iloc[at].reset_index(drop=True)
    return Scored(gen, reg, scored, x, attrs, slopes, scaler, oracle, known, tiles[at], rows)


def build_variants(sc: Scored | None) -> dict[str, Callable[[], np.ndarray]]:
    """The variants by name, each computing (n, 4) gradients in knob units; ``sc`` is read only
    when one is computed (``None`` lists the names before anything is loaded)."""
    done: dict[tuple[float, bool], np.ndarray] = {}  # the lot mean reuses the per-tile draws
    jacobian = functools.cache(lambda: _jacobian(sc))  # the meter's Jacobian, measured once

    def plain(images: torch.Tensor) -> np.ndarray:
        params = KnobGradientParams(smoothing=0.0)
        return KnobGradient(sc.gen, sc.reg, params).attribute(images, sc.attrs).gradient

    def smooth(sigma: float, symmetric: bool = False, images: torch.Tensor | None = None):
        if images is None and (sigma, symmetric) in done:
            return done[sigma, symmetric]
        params = KnobGradientParams(smoothing=sigma, symmetric=symmetric)
        seen = sc.x if images is None else images
        gradient = KnobGradient(sc.gen, sc.reg, params).attribute(seen, sc.attrs).gradient
        if images is None:
            done[sigma, symmetric] = gradient
        return gradient

    return {
        "plain gradient": lambda: plain(sc.x),
        "D4 mean": lambda: np.mean([plain(dihedral(sc.x, k)) for k in range(SYMMETRIES)], axis=0),
        **{f"SmoothGrad sigma {s}": (lambda s=s: smooth(s)) for s in (0.05, 0.1, 0.2, 0.3)},
        **{
            f"SmoothGrad sigma {s}, D4 views cycled (symmetric)": (lambda s=s: smooth(s, True))
            for s in (0.2, 0.3)
        },
        "D4 mean of SmoothGrad sigma 0.2 (8 x the cost)": lambda: np.mean(
            [smooth(0.2, images=dihedral(sc.x, k)) for k in range(SYMMETRIES)], axis=0
        ),
        **{
            f"central difference h {h}": (lambda h=h: _central(sc.gen, sc.reg, sc.x, sc.attrs, h))
            for h in (0.1, 0.25)
        },
        "SmoothGrad sigma 0.3, lot mean": lambda: lot_mean(smooth(0.3), sc.tiles["lot"]),
        "SmoothGrad sigma 0.3, lot mean, meter-gain corrected": lambda: gain_corrected(
            smooth(0.3), jacobian(), sc.tiles["lot"].to_numpy()
        ),
        **{
            f"SmoothGrad sigma 0.3, per tile, meter-gain corrected ({name})": (
                lambda w=w: tile_gain_corrected(smooth(0.3), jacobian(), sc.tiles["lot"], w)
            )
            for name, w in (("tile gain", 1.0), ("tile gain halfway to the lot's", 0.5))
        },
    }


def meter_calibration(scaler: AttributeScaler) -> MeterCalibration:
    """The explain stage's meter calibration: its readings of the training lots' tiles against
    their labels, in the knob units of the AttGAN's ``scaler``, read with the study's meter."""
    params = load_params(ROOT / "params.yaml")
    return fit_from_files(
        ROOT / "data" / "measurements.csv",
        read_lots(ROOT / "data" / "synthetic" / "lots.csv"),
        read_splits(ROOT / "data" / "splits.json").training_lots(),
        scaler,
        from_mapping(MeterParams, params["measure"]["meter"]),
    )


def _jacobian(
    sc: Scored, gen: torch.nn.Module | None = None, calib: MeterCalibration | None = None
) -> np.ndarray:
    """The explain stage's measured Jacobian of the scored tiles' edits by ``gen`` (default:
    the committed generator): its meter calibration on the training lots, its step."""
    params = load_params(ROOT / "params.yaml")
    step = from_mapping(CorrectedParams, params["explain"]["corrected"]).step
    calib = calib or meter_calibration(sc.scaler)
    return measured_jacobian(gen or sc.gen, sc.x, sc.attrs, calib, step, n_jobs=2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lots", choices=("train", "test"), default="train")
    parser.add_argument("--per-lot", type=int, default=2, help="training tiles per lot")
    parser.add_argument("--only", action="append", default=[], help="variants containing TEXT")
    args = parser.parse_args()
    if args.per_lot < 1 or (args.lots == "test" and args.per_lot != 2):
        parser.error("--per-lot is a positive count of training tiles (the test set is fixed)")
    chosen = [n for n in build_variants(None) if not args.only or any(t in n for t in args.only)]
    if not chosen:
        parser.error(f"--only {args.only}: no variant matches")
    torch.set_num_threads(2)
    sc = load_scored(args.lots, args.per_lot)
    scored = sc.tiles
    variants = build_variants(sc)
    variants = {name: variants[name] for name in chosen}
    rows = []
    for name, compute in variants.items():
        s = sc.score(compute())
        rows.append({"variant": name, **s})
        print(name, round(s["cosine_median"], 3), flush=True)
    tag = "" if args.per_lot == 2 else f"_{args.per_lot}perlot"
    out = ROOT / "benchmarks" / f"knob_gradient_variants_{args.lots}{tag}"
    out.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")
    head = "| variant | cosine median | centred | lot centred | signs s / p / d / f |"
    lines = [head, "| --- | --- | --- | --- | --- |"]
    for r in rows:
        signs = " / ".join(f"{r[f'sign_{a}']:.2f}" for a in A)
        cells = (f"{r[m]:.3f}" for m in ("cosine_median", "centred_cosine", "lot_centred_cosine"))
        lines.append(f"| {r['variant']} | " + " | ".join(cells) + f" | {signs} |")
    where = {
        "train": "tiles of the training lots, oracle rendered here: the selection set",
        "test": "held-out tiles; oracle slopes from reports/explain/referee_tiles.csv: report only",
    }[args.lots]
    note = f"\n{len(scored)} {where}\n" + oracle_ceiling(scored)
    out.with_suffix(".md").write_text("\n".join(lines) + "\n" + note)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
