"""Train either model briefly on random tiles, under torchrun (DDP) or plain python, and save
rank 0's weights and timing.

    torchrun --standalone --nproc-per-node 2 benchmarks/ddp_train.py --model attgan --out DIR
    python benchmarks/ddp_train.py --model attgan --out DIR        # one process, no DDP

Used by ``make bench`` (steps/s with 1 and 2 processes), the GPU check (NCCL) and
``tests/test_distributed.py`` (2 processes against 1). Random tiles and labels from ``--seed``:
the speed does not depend on the data, and the 2-against-1 comparison needs the same data in
every process, not realistic data. ``--stop-after 0`` saves the initial weights.

``--frozen-batch-norm`` (for the test): batch norm normalises with its running statistics, so a
tile's output does not depend on the tiles that share its batch. Then DDP on 2 processes must
give the 1-process weights up to float rounding; with real batch norm each rank normalises over
its half of the batch and the runs differ somewhat.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors.torch import save_file


class FrozenBatchNorm2d(torch.nn.BatchNorm2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
        )


if "--frozen-batch-norm" in sys.argv:  # before timm binds nn.BatchNorm2d as a default argument
    torch.nn.BatchNorm2d = FrozenBatchNorm2d

# semknobs (and through it timm) is imported inside the functions, after the line above.


TINY = {  # the test's models
    "attgan": {"enc_dim": 8, "dec_dim": 8, "dis_dim": 8, "dis_fc_dim": 16},
    "regressor": {"preset": "tiny"},
}


def model_config(model: str, size: str) -> dict:
    """The ``model`` mapping of a trainer: ``tiny`` (tests), ``default`` (params.yaml + the tuned
    overrides, as ``dvc repro`` trains it) or ``paper`` (profiles/paper.yaml)."""
    from semknobs.config import deep_merge, load_overrides, load_params

    if size == "tiny":
        return dict(TINY[model])
    section = f"train_{model}"
    mapping = load_params("params.yaml")[section]["train"].get("model", {})
    if size == "default":
        tuned = load_overrides(Path(f"tuned/{model}.yaml"))
    else:
        tuned = load_overrides(Path("profiles/paper.yaml")).get(section, {}).get("train", {})
    return deep_merge(mapping, tuned.get("model", {}))


def run(args: argparse.Namespace, world) -> dict:
    """Train on this rank (``world``: a :class:`semknobs.train.distributed.World`)."""
    from semknobs.config import from_mapping
    from semknobs.models.attgan import AttGANConfig
    from semknobs.models.regressor import RegressorConfig
    from semknobs.train.attgan import train_attgan
    from semknobs.train.attgan_params import AttGANTrainParams
    from semknobs.train.regressor import RegressorTrainParams, train_regressor

    cfg = model_config(args.model, args.size)
    s = int(cfg.pop("img_size", 64))
    rng = np.random.default_rng(args.seed)
    n = args.batch * args.steps_per_epoch
    images = rng.integers(0, 256, (n, s, s), dtype=np.uint8)
    started = time.perf_counter()
    if args.model == "attgan":
        params = AttGANTrainParams(
            model=from_mapping(AttGANConfig, {**cfg, "img_size": s}, where="model"),
            steps=args.steps,
            batch_size=args.batch,
            device=args.device,
            seed=args.seed,
            lambda_concept=0.0,  # throughput of the GAN updates; no meter readings here
            lambda_texture=0.0,  # nor lot ids
        )
        trainer = train_attgan(
            params=params,
            images=torch.from_numpy(images),
            attrs=torch.from_numpy(rng.random((n, 4), dtype=np.float32)),
            stop_after=args.stop_after,
            progress=False,
            world=world,
        )
        steps = trainer.step
        weights = {f"gen.{k}": v for k, v in trainer.gen.state_dict().items()}
        weights |= {f"dis.{k}": v for k, v in trainer.dis.state_dict().items()}
    else:
        params = RegressorTrainParams(
            model=from_mapping(RegressorConfig, {**cfg, "img_size": s}, where="model"),
            epochs=max(1, args.steps // args.steps_per_epoch),
            batch_size=args.batch,
            device=args.device,
            seed=args.seed,
            threads=0,
        )
        trainer = train_regressor(
            params=params,
            images=images,
            stress=rng.normal(40, 8, n),
            stop_after=args.stop_after,
            progress=False,
            world=world,
        )
        steps = trainer.step
        weights = {f"model.{k}": v for k, v in trainer.model.state_dict().items()}
    if trainer.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    return {
        "weights": weights,
        "result": {
            "model": args.model,
            "size": args.size,
            "world_size": world.size,
            "device": str(trainer.device),
            "batch": args.batch,
            "steps": steps,
            "seconds": seconds,  # model set-up included
            "train_seconds": trainer.train_seconds,  # the training loop of rank 0
            "steps_per_s": steps / trainer.train_seconds if steps else 0.0,
            "replica_max_abs_diff": trainer.replica_gap,
            "torch_threads": torch.get_num_threads(),
            "backend": dist.get_backend_config() if dist.is_initialized() else None,
        },
    }


def launch(
    model: str, out: Path, *, nproc: int = 0, env: dict | None = None, **options: object
) -> dict:
    """Run this script in a subprocess (``nproc`` 0: plain python, else torchrun with that many
    processes) with ``--option value`` for each keyword; its result.json."""
    import os
    import subprocess

    cmd = [sys.executable]
    if nproc:
        cmd += ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc)]
    cmd += [__file__, "--model", model, "--out", str(out)]
    for key, value in options.items():
        cmd += [f"--{key.replace('_', '-')}", str(value)]
    done = subprocess.run(cmd, env={**os.environ, **(env or {})}, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {done.stderr[-2000:]}")
    return json.loads((out / "result.json").read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", choices=("attgan", "regressor"), required=True)
    parser.add_argument("--size", choices=("tiny", "default", "paper"), default="tiny")
    parser.add_argument("--steps", type=int, default=8, help="updates (regressor: whole epochs)")
    parser.add_argument("--steps-per-epoch", type=int, default=4, help="sets the data size")
    parser.add_argument("--batch", type=int, default=8, help="global batch (all processes)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stop-after", type=int, help="end early (0: the initial weights)")
    parser.add_argument("--frozen-batch-norm", action="store_true", help="see the docstring")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    from semknobs.train import distributed

    with distributed.session() as world:
        out = run(args, world)
    if world.is_main:
        args.out.mkdir(parents=True, exist_ok=True)
        weights = {k: v.detach().float().cpu().contiguous() for k, v in out["weights"].items()}
        save_file(weights, args.out / "weights.safetensors")
        (args.out / "result.json").write_text(json.dumps(out["result"], indent=2) + "\n")
        print(json.dumps(out["result"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
