"""Rule H's probe: the knob gradient averaged over several editors (``editor_ensemble_rules.md``).

Each editor's knob gradient is the explain stage's default (``explain.knob_gradient`` in
params.yaml) on the tiles ``knob_gradient_variants.py`` scores, mapped to true units by the
referee's label fit and scored against the oracle; then every pair's mean, the mean of all and
their element-wise median are scored the same way. Each editor is a model folder (a
workspace's ``models/attgan``); they must share this workspace's regressor, data and scaler (the
script refuses another scaler or other training lots).

``--lots train`` (the default) is the rule's selection set, ``--lots test`` reports only.
``--gate`` adds Rule AG's gated mean: per knob, the mean over the editors whose own knob read
(the explain stage's, truth-free, in the editor's workspace) is not low (at least
``explain.knob_read.min_read``); all editors where every one is.

    python benchmarks/editor_ensemble.py --editor models/attgan \\
        --editor <workspace of seed 1>/models/attgan --editor <workspace of seed 2>/models/attgan
    # -> benchmarks/editor_ensemble_<lots>[_<tag>].{json,md}
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np
import torch
from knob_gradient_variants import ROOT, load_scored, oracle_ceiling, stage_params

from semknobs.attributes import ATTRIBUTES
from semknobs.explain import knob_read
from semknobs.explain.edit_texture import read_metrics_file
from semknobs.explain.gradient import KnobGradient
from semknobs.serving import attgan_model

A = list(ATTRIBUTES)
METRICS = ("cosine_median", "centred_cosine", "lot_centred_cosine")


def load_editor(path: Path, reference: attgan_model.AttGANFolder) -> tuple[torch.nn.Module, str]:
    """The generator of the model folder ``path`` and a short label (its workspace's name)."""
    gen, config = attgan_model.load(path)
    if config.scaler != reference.scaler or config.train_lots != reference.train_lots:
        raise SystemExit(f"{path}: its scaler or training lots differ from {ROOT}'s editor")
    return gen, str(path.parent.parent.name if path.name == "attgan" else path)


def editor_gradients(paths: list[Path], sc) -> tuple[list[str], list[np.ndarray]]:
    """Each editor's label and its knob gradient (the explain stage's setting, knob units) on
    ``sc``'s tiles; every editor must share ``ROOT``'s scaler and training lots."""
    _, reference = attgan_model.load(ROOT / "models" / "attgan")
    params = stage_params()
    labels, grads = [], []
    for path in paths:
        gen, label = load_editor(path.resolve(), reference)
        grads.append(KnobGradient(gen, sc.reg, params).attribute(sc.x, sc.attrs).gradient)
        labels.append(label)
        print(label, round(sc.score(grads[-1])["cosine_median"], 3), flush=True)
    return labels, grads


def editor_low(path: Path) -> np.ndarray:
    """Per attribute, whether the explain stage of ``path``'s workspace found the knob's read
    low (``explain.knob_read``, truth-free; its ``metrics/explain.json``)."""
    metrics = path.parent.parent / "metrics" / "explain.json"
    found = knob_read.from_metrics(read_metrics_file(metrics)) if metrics.is_file() else None
    if found is None:
        raise SystemExit(f"--gate: {metrics} holds no knob read (run that workspace's explain)")
    return np.array([found[a]["low"] for a in A])


def gated_mean(grads: np.ndarray, low: np.ndarray) -> tuple[np.ndarray, list]:
    """Per knob the mean over editors whose read of it is not low (all where every one is).

    ``grads`` (editors, tiles, knobs), ``low`` (editors, knobs); also returns per knob the
    indices of the editors kept."""
    out, kept = np.empty(grads.shape[1:]), []
    for k in range(grads.shape[2]):
        keep = np.flatnonzero(~low[:, k])
        keep = keep if len(keep) else np.arange(len(grads))
        out[:, k] = grads[keep, :, k].mean(axis=0)
        kept.append(keep.tolist())
    return out, kept


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--editor", action="append", type=Path, required=True)
    parser.add_argument("--lots", choices=("train", "test"), default="train")
    parser.add_argument("--tag", default="", help="suffix of the output files")
    parser.add_argument("--gate", action="store_true", help="add Rule AG's gated mean")
    args = parser.parse_args()
    if len(args.editor) < 2:
        parser.error("--editor: at least two editors to average")
    missing = [str(p) for p in args.editor if not p.is_dir()]
    if missing:
        parser.error(f"--editor: no such folder {missing}")
    torch.set_num_threads(2)
    sc = load_scored(args.lots)
    labels, grads = editor_gradients(args.editor, sc)
    params = stage_params()
    rows = [{"variant": f"single: {lab}", **sc.score(g)} for lab, g in zip(labels, grads)]
    if len(grads) > 2:
        for i, j in itertools.combinations(range(len(grads)), 2):
            pair = (grads[i] + grads[j]) / 2
            rows.append({"variant": f"mean: {labels[i]} + {labels[j]}", **sc.score(pair)})
    rows.append({"variant": f"mean of all {len(grads)}", **sc.score(np.mean(grads, axis=0))})
    rows.append({"variant": f"median of all {len(grads)}", **sc.score(np.median(grads, axis=0))})
    if args.gate:
        gated, kept = gated_mean(
            np.stack(grads), np.stack([editor_low(p.resolve()) for p in args.editor])
        )
        left_out = "; ".join(
            f"{a}: {', '.join(labels[i] for i in range(len(grads)) if i not in keep)}"
            for a, keep in zip(A, kept)
            if len(keep) < len(grads)
        )
        name = f"gated mean of {len(grads)} (left out: {left_out or 'none'})"
        rows.append({"variant": name, **sc.score(gated)})
    singles = [r for r in rows if r["variant"].startswith("single")]
    rows.append(
        {
            "variant": "single editors' average",
            **{k: float(np.mean([r[k] for r in singles])) for k in singles[0] if k != "variant"},
        }
    )
    tag = f"_{args.tag}" if args.tag else ""
    out = ROOT / "benchmarks" / f"editor_ensemble_{args.lots}{tag}"
    out.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")
    lines = [
        "| editors | cosine median | centred | lot centred | signs s / p / d / f |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        cells = " | ".join(f"{r[m]:.3f}" for m in METRICS)
        signs = " / ".join(f"{r[f'sign_{a}']:.2f}" for a in A)
        lines.append(f"| {r['variant']} | {cells} | {signs} |")
    where = {
        "train": "training-lot tiles, oracle rendered here: the selection set",
        "test": "held-out tiles the explain stage scored: report only",
    }
    each = f"each editor: SmoothGrad sigma {params.smoothing}, {params.samples} draws"
    note = f"\n{len(sc.tiles)} {where[args.lots]}; {each}\n"
    out.with_suffix(".md").write_text("\n".join(lines) + "\n" + note + oracle_ceiling(sc.tiles))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
