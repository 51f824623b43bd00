"""GPU check: the paper-scale profile for a few hundred steps, AMP and channels-last side by side.

    python benchmarks/gpu_check.py --out gpu_results.json      # < 8 minutes on one H100

Random tiles at the paper profile's 128 px (speed does not depend on the data); for each model
the same number of steps with fp32 and with bf16 autocast (+ channels-last for the regressor),
after a warm-up; medians of per-step times, peak memory. Also the batched Eq. 2 search on the
GPU. Refuses to run without CUDA (a CPU number here would mislead). Writes JSON and prints a
table.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import statistics
import sys
import time
from pathlib import Path

import torch


def _timed_steps(step, n: int, warmup: int) -> tuple[float, float]:
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(n):
        start = time.perf_counter()
        step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times), torch.cuda.max_memory_allocated() / 2**30


def attgan_rows(steps: int, batch: int) -> list[dict]:
    from semknobs.config import load_overrides
    from semknobs.models.attgan import AttGANConfig
    from semknobs.train import device as device_mod
    from semknobs.train.attgan import AttGANTrainer, AttGANTrainParams

    profile = load_overrides(Path("profiles/paper.yaml"))["train_attgan"]["train"]
    cfg = AttGANConfig(**profile["model"])
    rows = []
    for amp in (False, True):
        params = AttGANTrainParams(model=cfg, batch_size=batch, n_critic=profile["n_critic"])
        trainer = AttGANTrainer(params, torch.device("cuda"))
        x = torch.rand(batch, 1, cfg.img_size, cfg.img_size, device="cuda") * 2 - 1
        a = torch.rand(batch, cfg.n_attrs, device="cuda")
        patch = contextlib.nullcontext() if amp else _no_autocast(device_mod)
        with patch:
            median, peak = _timed_steps(functools.partial(trainer.train_step, x, a), steps, 10)
        rows.append(
            {"model": f"AttGAN paper profile ({cfg.img_size} px, {cfg.enc_layers} levels)",
             "precision": "bf16 autocast" if amp else "fp32", "steps_per_s": 1 / median,
             "peak_gib": peak, "batch": batch, "steps": steps}
        )  # fmt: skip
    return rows


@contextlib.contextmanager
def _no_autocast(device_mod):
    original = device_mod.autocast
    import semknobs.train.attgan as attgan_mod

    attgan_mod.autocast = lambda device: contextlib.nullcontext()
    try:
        yield
    finally:
        attgan_mod.autocast = original


def regressor_rows(steps: int, batch: int) -> list[dict]:
    import torch.nn.functional as F

    from semknobs.models.regressor import PeakStressRegressor, RegressorConfig

    def step(model, opt, x, y, amp: bool) -> None:
        ctx = torch.autocast("cuda", dtype=torch.bfloat16) if amp else contextlib.nullcontext()
        with ctx:
            pred = model(x)
        loss = F.mse_loss(pred.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    rows = []
    for amp, channels_last in ((False, False), (True, False), (True, True)):
        model = PeakStressRegressor(RegressorConfig(preset="paper", img_size=128), 40.0, 8.0).cuda()
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        model = model.to(memory_format=fmt)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        x = torch.rand(batch, 1, 128, 128, device="cuda").contiguous(memory_format=fmt)
        y = torch.randn(batch, device="cuda")
        median, peak = _timed_steps(functools.partial(step, model, opt, x, y, amp), steps, 10)
        rows.append(
            {"model": "regressor wide_resnet50_2 (paper preset, 128 px)",
             "precision": ("bf16 autocast" if amp else "fp32")
             + (" + channels_last" if channels_last else ""),
             "steps_per_s": 1 / median, "tiles_per_s": batch / median, "peak_gib": peak,
             "batch": batch, "steps": steps}
        )  # fmt: skip
    return rows


def counterfactual_rows(n: int) -> list[dict]:
    from semknobs.explain.bundle import StressInMPa
    from semknobs.explain.counterfactual import CounterfactualParams, KnobCounterfactual
    from semknobs.models.attgan import AttGANConfig, Generator
    from semknobs.models.regressor import PeakStressRegressor, RegressorConfig

    cfg = AttGANConfig(img_size=128, enc_layers=5, dec_layers=5, enc_dim=64, dec_dim=64)
    gen = Generator(cfg).cuda().eval()
    reg = StressInMPa(PeakStressRegressor(RegressorConfig(preset="paper", img_size=128))).cuda()
    search = KnobCounterfactual(gen, reg.eval(), stress_range=30.0)
    params = dataclasses.replace(CounterfactualParams(), steps=100, restarts=1)
    x = torch.rand(n, 1, 128, 128, device="cuda") * 2 - 1
    a = torch.rand(n, 4, device="cuda")
    median, peak = _timed_steps(lambda: search.attribute(x, a, params), 3, 1)
    return [{"model": f"Eq. 2 search, {n} tiles batched, 100 steps", "precision": "fp32",
             "seconds": median, "tiles_per_s": n / median, "peak_gib": peak}]  # fmt: skip


def ddp_rows(steps: int) -> list[dict]:
    """benchmarks/ddp_train.py at the paper model size (its own n_critic 2): plain python against
    torchrun with one process (DDP over NCCL; one GPU, so this checks the code path and its
    overhead, not scaling)."""
    import tempfile

    from ddp_train import launch

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in ("attgan", "regressor"):
            for nproc, launcher in ((0, "python"), (1, "torchrun")):
                result = launch(model, Path(tmp) / f"{model}-{launcher}", nproc=nproc,
                                size="paper", device="cuda", steps=steps, steps_per_epoch=25,
                                batch=32)  # fmt: skip
                rows.append(
                    {"model": f"{model} paper size, {launcher}",
                     "precision": f"bf16 autocast, backend {result['backend']}",
                     "steps_per_s": result["steps_per_s"], "peak_gib": float("nan"),
                     "steps": result["steps"],
                     "replica_max_abs_diff": result["replica_max_abs_diff"]}
                )  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/gpu_results.json"))
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device; run this on a GPU machine", file=sys.stderr)
        return 2
    torch.backends.cudnn.benchmark = True
    started = time.perf_counter()
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": [],
              "errors": {}}  # fmt: skip
    sections = {
        "attgan": lambda: attgan_rows(args.steps, 32),
        "regressor": lambda: regressor_rows(args.steps, 64),
        "counterfactual": lambda: counterfactual_rows(64),
        "ddp": lambda: ddp_rows(100),
    }
    for name, section in sections.items():  # one failing section does not lose the others
        try:
            rows = section()
        except Exception as exc:  # recorded and reported; exit status 1
            result["errors"][name] = f"{type(exc).__name__}: {exc}"
            print(f"gpu_check: {name} failed: {result['errors'][name]}", file=sys.stderr)
            rows = []
        finally:
            torch.cuda.empty_cache()
        result["rows"] += rows
        for r in rows:
            speed = r.get("steps_per_s") or r.get("tiles_per_s")
            print(f"{r['model']:<55} {r['precision']:<30} {speed:8.2f}/s  {r['peak_gib']:.2f} GiB")
        result["wall_s"] = time.perf_counter() - started
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")  # after every section
    print(f"gpu_check: {result['wall_s']:.0f} s on {result['device']}")
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
