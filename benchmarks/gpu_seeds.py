"""Seed spread of AttGAN designs: many seeds trained at once on one GPU, evaluated here.

A one-seed run of a design on 2 CPU cores takes 15 minutes and says little about a design's
fidelity (the seeds of one design differ by more than the designs do; README). On a GPU the
CPU profile's 3000 steps take about 4 minutes with eight runs sharing the card.

    # here: the training lots' tiles and readings (gpu_check.py's format)
    python benchmarks/gpu_check.py --prepare . --data .gpu/cpu_data.npz
    # on the GPU machine (carry .gpu; PYTHONPATH=src): designs overlay params.yaml
    python benchmarks/gpu_seeds.py train --data .gpu/cpu_data.npz --out OUT --seeds 0,1,2,3 \\
        --design default= --design delta_bal2=.gpu/delta_bal2.yaml
    # here, in a workspace copy (install writes the run's own config beside its weights):
    python benchmarks/gpu_seeds.py install OUT/models_delta_bal2.pt delta_bal2_s0
    dvc repro -s explain evaluate_attgan && python benchmarks/knob_gradient_variants.py --lots train

``train`` runs one process per design and seed (two CPU threads each; bf16 autocast on CUDA, as
the trainer does there), stops them at ``--deadline`` seconds, and packs what finished into one
file per design (generator and critic weights) with ``seeds.json`` (wall time, last logged
terms). ``install`` writes ``models/attgan`` from one packed run as the ``train_attgan`` stage
writes it (``save_model``), with the run's own training params. GPU numerics differ from the
CPU's: a GPU-trained seed is not the CPU run of that seed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from gpu_check import attgan_params, load_data  # the GPU check's params rule and tiles

from semknobs.atomic import atomic_path
from semknobs.errors import ParamsError


def _design_params(overlay: str, seed: int, smoke: bool = False):
    """The design's training params (``params.yaml`` with ``overlay`` laid over it; empty: none)
    at ``seed``, and the meter."""
    params, meter = attgan_params(Path(overlay) if overlay else None)
    params = dataclasses.replace(params, seed=seed)
    if smoke:
        concept = dataclasses.replace(params.concept, steps=2, refresh_every=2, refresh_steps=2)
        params = dataclasses.replace(params, steps=4, concept=concept)
    return params, meter


def train_one(design: str, overlay: str, seed: int, data: Path, out: Path, smoke: bool) -> None:
    from semknobs.config import to_mapping
    from semknobs.train.attgan import train_attgan

    torch.set_num_threads(2)
    params, meter = _design_params(overlay, seed, smoke)
    images, attrs, readings, lots = load_data(data)
    logged: list = []
    started = time.perf_counter()
    trainer = train_attgan(
        params=params,
        images=images,
        attrs=attrs,
        readings=readings,
        lots=lots,
        meter=meter,
        progress=False,
        log=lambda metrics, step: logged.append((step, metrics)),
    )
    state = {
        "generator": {k: v.detach().cpu() for k, v in trainer.generator.state_dict().items()},
        "discriminator": {k: v.detach().cpu() for k, v in trainer.dis.state_dict().items()},
        "train": to_mapping(params),  # what `install` writes into the model folder's config
        "summary": {
            "design": design,
            "seed": seed,
            "wall_s": time.perf_counter() - started,
            "steps": trainer.step,
            "device": str(trainer.device),
            "last": logged[-1][1] if logged else None,
        },
    }
    with atomic_path(out) as tmp:
        torch.save(state, tmp)


def train(args: argparse.Namespace) -> int:
    designs = dict(d.split("=", 1) for d in args.design)
    seeds = [int(s) for s in args.seeds.split(",")]
    for overlay in designs.values():  # bad overlays fail here, before any process starts
        _design_params(overlay, 0)
    work = Path(args.out) / "runs"
    work.mkdir(parents=True, exist_ok=True)
    procs = {}
    started = time.perf_counter()
    env = dict(os.environ, OMP_NUM_THREADS="2", MKL_NUM_THREADS="2")
    for design, overlay in designs.items():
        for seed in seeds:
            name = f"{design}_s{seed}"
            cmd = [sys.executable, __file__, "one", design, overlay, str(seed), "--data",
                   str(args.data), "--out", str(work / f"{name}.pt")]  # fmt: skip
            cmd += ["--smoke"] if args.smoke else []
            with open(work / f"{name}.log", "w") as log:
                procs[name] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    while time.perf_counter() - started < args.deadline and any(
        p.poll() is None for p in procs.values()
    ):
        time.sleep(5)
    for p in procs.values():
        if p.poll() is None:
            p.kill()
    summary, packs = {}, {}
    for name, p in procs.items():
        p.wait()
        path = work / f"{name}.pt"
        if not path.exists():
            summary[name] = {"rc": p.returncode, "log": (work / f"{name}.log").read_text()[-1500:]}
            continue
        state = torch.load(path)
        summary[name] = state["summary"] | {"rc": p.returncode}
        design = state["summary"]["design"]
        packs.setdefault(design, {})[name] = {
            k: state[k] for k in ("generator", "discriminator", "train")
        }
    for design, pack in packs.items():
        with atomic_path(Path(args.out) / f"models_{design}.pt") as tmp:
            torch.save(pack, tmp)
    (Path(args.out) / "seeds.json").write_text(json.dumps(summary, indent=1) + "\n")
    for name, s in summary.items():
        print(f"{name:<24} rc {s['rc']}  steps {s.get('steps', '-')}  {s.get('wall_s', 0):.0f} s")
    print(f"gpu_seeds: {len(packs)} design(s) packed in {time.perf_counter() - started:.0f} s")
    return 0 if all(s["rc"] == 0 for s in summary.values()) else 1


def install(pack: Path, name: str) -> None:
    """``models/attgan`` of this workspace from run ``name`` of ``pack``: its weights and the
    training params it ran with (so the folder describes that run whatever ``params.yaml``
    says), with this workspace's training lots and their scaler (the data it trained on)."""
    from semknobs.config import from_mapping
    from semknobs.data.dataset import fit_scaler
    from semknobs.data.split import read_splits
    from semknobs.models.attgan import Discriminator, Generator
    from semknobs.stages.train_attgan import save_model
    from semknobs.train.attgan_params import AttGANTrainParams

    runs = torch.load(pack)
    if name not in runs:
        raise ParamsError(f"{pack} has no run {name!r}; it has {sorted(runs)}")
    run = runs[name]
    params = from_mapping(AttGANTrainParams, run["train"], where=f"{pack}: {name}")
    gen, dis = Generator(params.model), Discriminator(params.model)
    gen.load_state_dict(run["generator"])
    dis.load_state_dict(run["discriminator"])
    splits = Path("data/splits.json")
    lots = Path("data/synthetic/lots.csv")
    train_lots = read_splits(splits).training_lots(str(splits))
    folder = Path("models/attgan")
    scaler = fit_scaler(lots, train_lots)
    save_model(
        folder, generator=gen, discriminator=dis, train=params, scaler=scaler,
        train_lots=train_lots, metrics={},
    )  # fmt: skip
    print(f"gpu_seeds: {folder} <- {pack} {name} (condition {params.model.condition})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_train = sub.add_parser("train", help="on the GPU machine: every design x seed at once")
    p_train.add_argument("--data", type=Path, required=True)
    p_train.add_argument("--out", required=True)
    p_train.add_argument("--design", action="append", required=True, metavar="NAME=OVERLAY")
    p_train.add_argument("--seeds", default="0,1,2,3")
    p_train.add_argument("--deadline", type=float, default=420.0, help="seconds")
    p_train.add_argument("--smoke", action="store_true", help="4 steps (a check of the script)")
    p_one = sub.add_parser("one", help="(internal) one design and seed")
    p_one.add_argument("design")
    p_one.add_argument("overlay")
    p_one.add_argument("seed", type=int)
    p_one.add_argument("--data", type=Path, required=True)
    p_one.add_argument("--out", type=Path, required=True)
    p_one.add_argument("--smoke", action="store_true")
    p_install = sub.add_parser("install", help="here: models/attgan from one packed run")
    p_install.add_argument("pack", type=Path)
    p_install.add_argument("name")
    args = parser.parse_args(argv)
    try:
        return _dispatch(parser, args)
    except ParamsError as exc:
        print(f"gpu_seeds: {exc}", file=sys.stderr)
        return 2


def _dispatch(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if args.cmd == "train":
        bad = [d for d in args.design if "=" not in d]
        if bad:
            parser.error(f"--design: expected NAME=OVERLAY (OVERLAY may be empty), got {bad}")
        return train(args)
    if args.cmd == "one":
        train_one(args.design, args.overlay, args.seed, args.data, args.out, args.smoke)
        return 0
    install(args.pack, args.name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
