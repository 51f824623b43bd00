"""GPU check: the paper-scale profile for a few hundred steps, AMP and channels-last side by side.

    # here (CPU): paper-scale tiles for the AttGAN sections, from a paper-profile workspace
    semknobs profile paper && dvc repro split measure    # in a copy of the repository
    python benchmarks/gpu_check.py --prepare COPY --data .gpu/attgan_data.npz
    # on the GPU machine (carry .gpu): all sections, or some (--only attgan,training)
    python benchmarks/gpu_check.py --out gpu_results.json      # < 8 minutes on one H100

The AttGAN sections train on real paper-scale tiles and their meter readings (the concept
network learns from them), with ``params.yaml``'s training laid under the paper profile; the
regressor and Eq. 2 sections use random tiles (speed does not depend on the data). For each
model the same number of steps with fp32 and with bf16 autocast (+ channels-last for the
regressor), after a warm-up; medians of per-step times, peak memory. Refuses to run without
CUDA (a CPU number here would mislead). Writes JSON after every section and prints a table.
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

DEVICE = torch.device("cuda")  # --device cpu: a dry run of the AttGAN sections' code paths


def _sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def _timed_steps(step, n: int, warmup: int) -> tuple[float, float]:
    for _ in range(warmup):
        step()
    _sync()
    if DEVICE.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(n):
        start = time.perf_counter()
        step()
        _sync()
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 2**30 if DEVICE.type == "cuda" else float("nan")
    return statistics.median(times), peak


PAPER = Path("profiles/paper.yaml")


def attgan_params(overlay: Path | None = PAPER, params_file: Path = Path("params.yaml")):
    """``train_attgan``'s training params and the measure stage's meter, with ``overlay`` (a
    profile, a study overlay) laid over the whole params file first, as ``semknobs profile`` and
    the study suite lay it (so the profile's meter comes with its model)."""
    from semknobs.config import deep_merge, load_overrides, load_params, section
    from semknobs.meter import MeasureParams
    from semknobs.train.attgan_params import TrainAttGANStageParams

    params = load_params(params_file)
    if overlay is not None:
        params = deep_merge(params, load_overrides(overlay))
    where = f"{params_file}" + (f" + {overlay}" if overlay is not None else "")
    stage = section(TrainAttGANStageParams, params, "train_attgan", where)
    return stage.train, section(MeasureParams, params, "measure", where).meter


def prepare_data(workspace: Path, out: Path) -> None:
    """The training lots' tiles, attributes, meter readings and lot ids of a workspace where
    ``semknobs profile paper && dvc repro measure`` ran, as one ``.npz`` for the GPU machine
    (which has torch but not the data-validation stack the loaders use)."""
    import numpy as np

    from semknobs.atomic import atomic_path
    from semknobs.data.dataset import fit_scaler, load_tileset
    from semknobs.data.split import read_splits
    from semknobs.meter import read_measurements

    splits = read_splits(workspace / "data/splits.json")
    lots_csv = workspace / "data/synthetic/lots.csv"
    train_lots = splits.training_lots(str(workspace / "data/splits.json"))
    train = load_tileset(
        tiles_dir=workspace / "data/tiles",
        lots_csv=lots_csv,
        lots=train_lots,
        scaler=fit_scaler(lots_csv, train_lots),
    )
    readings = read_measurements(workspace / "data/measurements.csv", train.manifest)
    with atomic_path(out) as tmp, open(tmp, "wb") as f:  # no half-written file on failure
        np.savez_compressed(
            f,
            images=train.images,
            attrs=train.attrs.astype("float32"),
            readings=readings.to_numpy(float),
            lots=train.manifest["lot"].to_numpy(str),
        )
    print(
        f"gpu_check: {len(train)} tiles of {len(train_lots)} lots, {train.images.shape[1]} px "
        f"-> {out} ({out.stat().st_size / 2**20:.1f} MiB)"
    )


@functools.lru_cache(maxsize=1)  # both AttGAN sections read it
def load_data(path: Path):
    """The prepared tiles (``--prepare``): images, attrs (torch), readings, lot ids (numpy)."""
    import numpy as np

    if not path.is_file():
        raise FileNotFoundError(f"{path}: no tiles; make them with --prepare WORKSPACE (docstring)")
    d = np.load(path)
    return (torch.from_numpy(d["images"]), torch.from_numpy(d["attrs"]), d["readings"], d["lots"])


def attgan_rows(data: Path, steps: int) -> list[dict]:
    """The AttGAN training of ``params.yaml`` at the paper profile, on real paper-scale tiles:
    the generator step with every loss it trains with (concept network, texture, R1 critic),
    bf16 autocast (the trainer's choice on CUDA) against fp32; the concept network's
    pre-training rate; one concept refresh at the profile's size (edits, the CPU meter,
    fine-tuning); and from these the profile's whole ``train_attgan``."""
    import numpy as np

    from semknobs.pixels import to_model
    from semknobs.train.attgan import AttGANTrainer

    images, attrs, readings, lots = load_data(data)
    params, meter = attgan_params()
    trainer = AttGANTrainer(params, DEVICE)
    trainer.attach_concept(images, readings, attrs, lots, meter)
    trainer.attach_texture(images, attrs, lots)
    model = (
        f"AttGAN training, paper profile ({params.model.img_size} px, "
        f"{params.model.enc_layers} levels, condition {params.model.condition})"
    )

    cp = params.concept
    n_fit = min(200, 10 * steps)
    trainer.concept.fit(min(20, n_fit))  # warm-up
    _sync()
    start = time.perf_counter()
    trainer.concept.fit(n_fit)
    _sync()
    concept_rate = n_fit / (time.perf_counter() - start)
    trainer.concept_ready = True
    rows = [
        {
            "model": f"concept network pre-training (width {cp.model.width}, "
            f"{cp.model.blocks} blocks)",
            "precision": "fp32",
            "steps_per_s": concept_rate,
            "peak_gib": float("nan"),
            "batch": cp.batch_size,
            "steps": n_fit,
        }
    ]

    images_dev, attrs_dev = images.to(DEVICE), attrs.to(DEVICE)
    gen = torch.Generator().manual_seed(0)

    def step() -> None:
        idx = torch.randint(0, len(images), (params.batch_size,), generator=gen).to(DEVICE)
        metrics = trainer.train_step(to_model(images_dev[idx], DEVICE), attrs_dev[idx])
        bad = [k for k, v in metrics.items() if not np.isfinite(v)]
        if bad:
            raise FloatingPointError(f"non-finite training terms {bad} at step {trainer.step}")

    from semknobs.train import device as device_mod

    step_s = {}
    for amp in (True, False):
        patch = contextlib.nullcontext() if amp else _no_autocast(device_mod)
        with patch:
            median, peak = _timed_steps(step, steps, min(10, steps))
        precision = "bf16 autocast" if amp and DEVICE.type == "cuda" else "fp32"
        step_s["amp" if amp else "fp32"] = median
        rows.append(
            {
                "model": model,
                "precision": precision,
                "steps_per_s": 1 / median,
                "peak_gib": peak,
                "batch": params.batch_size,
                "steps": steps,
            }
        )

    _sync()
    start = time.perf_counter()
    trainer.refresh_concept(images_dev, attrs_dev)
    _sync()
    refresh_s = time.perf_counter() - start
    fit_s = cp.refresh_steps / concept_rate
    rows.append(
        {
            "model": f"concept refresh ({cp.refresh_tiles} edits, {cp.refresh_steps} steps)",
            "precision": "fp32",
            "seconds": refresh_s,
            "meter_and_edit_s": refresh_s - fit_s,
            "tiles_per_s": cp.refresh_tiles / refresh_s,
            "peak_gib": float("nan"),
        }
    )
    refreshes = (
        len(range(cp.refresh_every, params.steps, cp.refresh_every)) if cp.refresh_every else 0
    )
    total = cp.steps / concept_rate + params.steps * step_s["amp"] + refreshes * refresh_s
    rows.append(
        {
            "model": f"whole train_attgan, paper profile ({params.steps} steps, "
            f"{refreshes} refreshes), extrapolated",
            "precision": "bf16 autocast",
            "seconds": total,
            "tiles_per_s": float("nan"),
            "peak_gib": float("nan"),
        }
    )
    return rows


def training_loop_rows(data: Path, steps: int) -> list[dict]:
    """``train_attgan`` itself, shortened (``steps`` generator steps, a refresh at half-way,
    checkpoints), interrupted at half-way and resumed from its checkpoint, as a stage would:
    the loop, the concept network's refresh and the checkpoint round trip on CUDA, every
    logged term finite."""
    import math
    import tempfile

    from semknobs.train.attgan import train_attgan

    images, attrs, readings, lots = load_data(data)
    params, meter = attgan_params()
    half = steps // 2
    concept = dataclasses.replace(
        params.concept,
        steps=min(100, 5 * steps),
        refresh_every=half,
        refresh_tiles=64,
        refresh_steps=50,
    )
    params = dataclasses.replace(
        params,
        steps=steps,
        checkpoint_every=half,
        log_every=10,
        concept=concept,
        device=DEVICE.type,
    )
    logged: list[dict[str, float]] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        kwargs = dict(
            params=params,
            images=images,
            attrs=attrs,
            checkpoint_dir=Path(tmp),
            log=lambda m, s: logged.append(m),
            progress=False,
            readings=readings,
            lots=lots,
            meter=meter,
        )
        first = train_attgan(**kwargs, stop_after=half)
        resumed = train_attgan(**kwargs)
    bad = sorted({k for m in logged for k, v in m.items() if not math.isfinite(v)})
    if first.step != half or resumed.step != steps or bad:
        raise RuntimeError(f"training loop: steps {first.step}, {resumed.step}; non-finite {bad}")
    last = logged[-1]
    return [
        {
            "model": f"train_attgan loop, {steps} steps, interrupted at {half} and resumed",
            "precision": ("bf16 autocast" if DEVICE.type == "cuda" else "fp32") + f" on {DEVICE}",
            "seconds": time.perf_counter() - started,
            "steps_per_s": last["train/steps_per_s"],
            "peak_gib": float("nan"),
            "last": {k: round(v, 4) for k, v in last.items()},
        }
    ]


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


def _describe(row: dict) -> str:
    if "steps_per_s" in row:
        speed = f"{row['steps_per_s']:8.2f} steps/s"
    else:
        speed = f"{row['seconds']:8.1f} s"
    return f"{row['model']:<78} {row['precision']:<30} {speed}  {row['peak_gib']:.2f} GiB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/gpu_results.json"))
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument(
        "--data",
        type=Path,
        default=Path(".gpu/attgan_data.npz"),
        help="paper-scale training tiles for the AttGAN sections (--prepare)",
    )
    parser.add_argument(
        "--prepare",
        type=Path,
        metavar="WORKSPACE",
        help="write --data from a paper-profile workspace and exit (no GPU)",
    )
    parser.add_argument("--only", default="", help="comma-separated sections (default: all)")
    parser.add_argument(
        "--device",
        choices=("cuda", "cpu"),
        default="cuda",
        help="cpu: a dry run of the attgan and training sections' code paths "
        "(its timings mean nothing)",
    )
    args = parser.parse_args(argv)
    sections = {
        "attgan": lambda: attgan_rows(args.data, args.steps),
        "training": lambda: training_loop_rows(args.data, min(40, 2 * args.steps)),
        "regressor": lambda: regressor_rows(args.steps, 64),
        "counterfactual": lambda: counterfactual_rows(64),
        "ddp": lambda: ddp_rows(100),
    }
    chosen = [s for s in args.only.split(",") if s] or list(sections)
    unknown = sorted(set(chosen) - set(sections))
    if unknown:
        parser.error(f"--only: unknown section(s) {unknown}; known: {sorted(sections)}")
    if args.prepare is not None:
        from semknobs.errors import DataError, ParamsError

        try:
            prepare_data(args.prepare, args.data)
        except (DataError, ParamsError) as exc:
            print(f"gpu_check: --prepare {args.prepare}: {exc}", file=sys.stderr)
            return 2
        return 0
    global DEVICE
    DEVICE = torch.device(args.device)
    if args.device == "cpu" and set(chosen) - {"attgan", "training"}:
        parser.error("--device cpu: only the attgan and training sections (--only)")
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device; run this on a GPU machine", file=sys.stderr)
        return 2
    torch.backends.cudnn.benchmark = True
    started = time.perf_counter()
    result = {
        "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu (dry run)",
        "torch": torch.__version__,
        "rows": [],
        "errors": {},
    }
    for name in chosen:  # one failing section does not lose the others
        try:
            rows = sections[name]()
        except Exception as exc:  # recorded and reported; exit status 1
            result["errors"][name] = f"{type(exc).__name__}: {exc}"
            print(f"gpu_check: {name} failed: {result['errors'][name]}", file=sys.stderr)
            rows = []
        finally:
            torch.cuda.empty_cache()
        result["rows"] += rows
        for r in rows:
            print(_describe(r), flush=True)
        result["wall_s"] = time.perf_counter() - started
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")  # after every section
    print(f"gpu_check: {result['wall_s']:.0f} s on {result['device']}")
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
