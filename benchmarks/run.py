"""`make bench`: performance measurements, side by side in one run, medians of repeats.

Writes a JSON file (every run's numbers) and a Markdown table. Speed is measured here, never in
timed tests: the machines are noisy, so only medians and same-run ratios are quoted.

    python benchmarks/run.py --out benchmarks/results.json --table benchmarks/results.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from semknobs.config import deep_merge, load_section
from semknobs.data.scans import find_scans, read_scan
from semknobs.data.synth import SynthParams, synthesize
from semknobs.data.tiles import TileParams, bar_rows, tile_dataset

BENCHES: dict[str, Callable[[argparse.Namespace, Path], list[dict]]] = {}


def bench(name: str):
    def register(func):
        BENCHES[name] = func
        return func

    return register


def _timed(func: Callable[[], object], repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        func()
        times.append(time.perf_counter() - start)
    return times


def _row(
    name: str, unit: str, values: list[float], target: str = "", note: str = "", key: str = ""
) -> dict:
    """One table row; ``key`` (``group/metric``) also files its median under ``keys``."""
    row = {
        "name": name,
        "unit": unit,
        "median": statistics.median(values),
        "runs": values,
        "target": target,
        "note": note,
    }
    return row | ({"key": key} if key else {})


@bench("data")
def data_benchmarks(args: argparse.Namespace, work: Path) -> list[dict]:
    """Default dataset generation; tiling beside bare decode + resize of the same files."""
    params = load_section(SynthParams, "synthesize", args.params)
    tile_params = load_section(TileParams, "tile", args.params)
    raw, lots, truth = work / "raw", work / "lots.csv", work / "truth"

    def generate() -> None:
        synthesize(params=params, raw_dir=raw, lots_csv=lots, truth_dir=truth, progress=False)

    gen = _timed(generate, args.repeats)
    scans = find_scans(raw)
    megabytes = sum(read_scan(s.path).nbytes for s in scans) / 1e6

    def bare(n_jobs: int) -> Callable[[], None]:
        def run() -> None:
            from concurrent.futures import ThreadPoolExecutor

            def one(scan) -> np.ndarray:
                image = read_scan(scan.path)
                area = image[: image.shape[0] - bar_rows(image, tile_params, scan.path)]
                t, o = tile_params.tile_px, tile_params.out_px
                ny, nx = area.shape[0] // t, area.shape[1] // t
                k = t // o
                block = area[: ny * t, : nx * t].astype(np.float32)
                return block.reshape(ny * o, k, nx * o, k).mean(axis=(1, 3))

            with ThreadPoolExecutor(n_jobs) as pool:
                list(pool.map(one, scans))

        return run

    def tiling(n_jobs: int) -> Callable[[], None]:
        p = TileParams(**{**tile_params.__dict__, "n_jobs": n_jobs})
        return lambda: tile_dataset(params=p, raw_dir=raw, tiles_dir=work / "tiles", progress=False)

    rows = [_row("synthesize: default study (30 lots)", "s", gen, target="< 120 s")]
    for n_jobs in (1, 2):
        # interleave the two so drift hits both alike
        b, t = [], []
        for _ in range(args.repeats):
            b += _timed(bare(n_jobs), 1)
            t += _timed(tiling(n_jobs), 1)
        bare_mb = [megabytes / x for x in b]
        tile_mb = [megabytes / x for x in t]
        ratio = [x / y for x, y in zip(t, b)]
        rows += [
            _row(f"bare decode + bar detection + resize ({n_jobs} thread)", "MB/s", bare_mb),
            _row(f"tile stage work ({n_jobs} thread)", "MB/s", tile_mb),
            _row(
                f"tiling time / bare time ({n_jobs} thread)",
                "ratio",
                ratio,
                target="<= 1.5",
                note=f"{megabytes:.0f} MB of decoded 16-bit scans, {len(scans)} files",
            ),
        ]
    return rows


_TRAIN_PROBE = """
import json, resource, sys, time
import torch
from semknobs.config import from_mapping, load_params
from semknobs.train.attgan import AttGANTrainer
from semknobs.train.attgan_params import TrainAttGANStageParams
torch.set_num_threads(int(sys.argv[2]))
p = from_mapping(TrainAttGANStageParams, load_params(sys.argv[1])["train_attgan"]).train
trainer = AttGANTrainer(p, torch.device("cpu"))
s = p.model.img_size
x = torch.rand(p.batch_size, 1, s, s) * 2 - 1
a = torch.rand(p.batch_size, 4)
for _ in range(3):
    trainer.train_step(x, a)
n, start = 20, time.perf_counter()
for _ in range(n):
    trainer.train_step(x, a)
rate = n / (time.perf_counter() - start)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"steps_per_s": rate, "peak_rss_mb": peak}))
"""


@bench("attgan")
def attgan_benchmarks(args: argparse.Namespace, work: Path) -> list[dict]:
    """AttGAN training steps/s (one step = n_critic critic + 1 generator update) and peak RSS."""
    import subprocess

    rates, memory = [], []
    for _ in range(args.repeats):
        out = subprocess.run(
            [sys.executable, "-c", _TRAIN_PROBE, args.params, str(os.cpu_count() or 1)],
            capture_output=True,
            text=True,
            check=True,
        )
        result = json.loads(out.stdout.strip().splitlines()[-1])
        rates.append(result["steps_per_s"])
        memory.append(result["peak_rss_mb"])
    note = "default train_attgan params, CPU, synthetic batch"
    return [
        _row("AttGAN training steps/s (batch from params)", "steps/s", rates, note=note),
        _row("AttGAN training peak RSS", "MB", memory, note="whole process, torch included"),
    ]


# One train_step at a fixed architecture, 1 thread: s/step. argv: overrides (JSON) of
# train_attgan.train; with lambda_concept > 0 a concept network is attached (random readings),
# with lambda_texture > 0 texture targets (random tiles), with lambda_regressor > 0 an untrained
# regressor as train_regressor (tuned) builds it.
_STEP_PROBE = """
import json, sys, time
import numpy as np, torch
from semknobs.config import deep_merge, from_mapping, load_params
from semknobs.train.attgan import AttGANTrainer
try:
    from semknobs.train.attgan_params import TrainAttGANStageParams
except ImportError:  # the baseline commit's trainer module held its params
    from semknobs.train.attgan import TrainAttGANStageParams
torch.set_num_threads(1)
torch.manual_seed(0)
raw = load_params(sys.argv[1])["train_attgan"]
raw["train"] = deep_merge(raw["train"], json.loads(sys.argv[2]))
p = from_mapping(TrainAttGANStageParams, raw).train
trainer = AttGANTrainer(p, torch.device("cpu"))
s = p.model.img_size
x = torch.rand(p.batch_size, 1, s, s) * 2 - 1
a = torch.rand(p.batch_size, 4)
n = 64
images = torch.randint(0, 256, (n, s, s), dtype=torch.uint8)
lots = np.repeat(np.arange(8).astype(str), 8)
labels = torch.rand(8, 4).repeat_interleave(8, 0)
if getattr(p, "lambda_concept", 0) > 0:
    from semknobs.meter import MeterParams
    trainer.attach_concept(images, np.random.default_rng(0).random((n, 4)), labels, lots,
                           MeterParams())
    trainer.concept_ready = True  # pre-training is not a step
if getattr(p, "lambda_texture", 0) > 0:
    trainer.attach_texture(images, labels, lots)
if getattr(p, "lambda_regressor", 0) > 0:  # an untrained regressor of the configured preset
    from semknobs.models.regressor import PeakStressRegressor
    from semknobs.stages.train_regressor import Params as RegParams
    from semknobs.config import load_tuned_section
    rp = load_tuned_section(RegParams, "train_regressor", sys.argv[1], "tuned/regressor.yaml")
    reg = PeakStressRegressor(rp.train.model, 45.0, 8.0)
    trainer.attach_regressor(reg, torch.randint(0, 256, (64, s, s), dtype=torch.uint8))
for _ in range(3):
    trainer.train_step(x, a)
times = []
for _ in range(15):
    start = time.perf_counter()
    trainer.train_step(x, a)
    times.append(time.perf_counter() - start)
print(json.dumps({"s_per_step": sorted(times)[len(times) // 2]}))
"""

# tune_attgan's architecture before issue 14 (tuned/attgan.yaml of that commit), two designs
_TUNED_ARCH = {"model": {"enc_layers": 3, "dec_layers": 3, "shortcut_layers": 2}}
_DEFAULT_ARCH = "16x16 shortcut"
_OLD_DESIGN = {  # the pre-issue-14 losses (tuned/attgan.yaml of that commit)
    "critic": "wgan-gp",
    "n_critic": 2,
    "lambda_concept": 0.0,
    "lambda_texture": 0.0,
    "one_knob_share": 0.0,
    "lambda_att_g": 26.0,
    "lambda_att_d": 1.0,
    "model": {"film": False},
}
_STEP_DESIGNS = {  # handle: (row name, overrides of train_attgan.train)
    "old design": ("wgan-gp, 2 critic updates", _OLD_DESIGN),
    "new design": ("r1, 1 critic update, concept and texture losses, FiLM (params.yaml)", {}),
}


@bench("attgan_step")
def attgan_step_benchmarks(args: argparse.Namespace, work: Path) -> list[dict]:
    """AttGAN step time at the pre-issue-14 tuned architecture, 1 thread, interleaved: the
    code of ``--baseline-ref`` (its own design) against this tree with the old and new design."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    base = work / "baseline"
    base.mkdir()
    archive = subprocess.run(
        ["git", "archive", args.baseline_ref, "src"], cwd=root, capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(base)], input=archive, check=True)
    old_params = work / "baseline_params.yaml"
    old_params.write_bytes(
        subprocess.run(
            ["git", "show", f"{args.baseline_ref}:params.yaml"],
            cwd=root, capture_output=True, check=True,
        ).stdout
    )  # fmt: skip
    legacy = {"n_critic": 2, "lambda_att_g": 26.0}  # the old code has no critic/concept fields
    here = (root / "src", Path(args.params))
    runs = {  # handle: (row name, src, params, overrides of train_attgan.train)
        "baseline": (
            f"{args.baseline_ref}: wgan-gp, 2 critic updates",
            base / "src", old_params, deep_merge(_TUNED_ARCH, legacy),
        ),
        **{
            handle: (f"this tree: {name}", *here, deep_merge(_TUNED_ARCH, design))
            for handle, (name, design) in _STEP_DESIGNS.items()
        },
        "default": (f"this tree: params.yaml as it runs ({_DEFAULT_ARCH})", *here, {}),
        "no texture": (
            f"this tree: params.yaml without the texture loss ({_DEFAULT_ARCH})",
            *here, {"lambda_texture": 0.0},
        ),
        "no rec grad": (
            f"this tree: params.yaml, concept_rec_grad false ({_DEFAULT_ARCH})",
            *here, {"concept_rec_grad": False},
        ),
        "width 16": (
            f"this tree: params.yaml, concept network width 16 ({_DEFAULT_ARCH})",
            *here, {"concept": {"model": {"width": 16}}},
        ),
    }  # fmt: skip
    times: dict[str, list[float]] = {handle: [] for handle in runs}
    for _ in range(args.repeats):
        for handle, (_, src, params, overrides) in runs.items():  # interleaved
            out = subprocess.run(
                [sys.executable, "-c", _STEP_PROBE, str(params), json.dumps(overrides)],
                capture_output=True, text=True, check=True,
                env={**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"},
            )  # fmt: skip
            times[handle].append(json.loads(out.stdout.strip().splitlines()[-1])["s_per_step"])
    note = "enc/dec 3 layers, 32x32 shortcut unless noted, batch 32, 15 steps (median), 1 thread"
    rows = [
        _row(f"AttGAN step, {runs[handle][0]}", "s", values, note=note)
        for handle, values in times.items()
    ]
    for label, num, den in (
        ("same design, this tree / baseline", "old design", "baseline"),
        ("new design / baseline", "new design", "baseline"),
        ("texture loss on / off, params.yaml", "default", "no texture"),
        ("concept_rec_grad false / true (params.yaml)", "no rec grad", "default"),
        ("params.yaml / params.yaml at concept width 16", "default", "width 16"),
    ):
        ratios = [b / a for a, b in zip(times[den], times[num], strict=True)]
        target = "<= 0.8" if den == "baseline" else ""
        rows.append(_row(f"AttGAN step, {label}", "ratio", ratios, target=target))
    return rows


_REGRESSOR_PROBE = """
import json, resource, sys, time
import numpy as np, torch
from semknobs.config import deep_merge, from_mapping, load_overrides, load_params
from semknobs.pixels import to_model
from semknobs.train.regressor import TrainRegressorStageParams, augment, make_trainer, set_threads
raw = load_params(sys.argv[1])["train_regressor"]
raw["train"] = deep_merge(raw.get("train", {}), load_overrides(sys.argv[2]))
p = from_mapping(TrainRegressorStageParams, raw).train
set_threads(p.threads)
n, s = 1024, p.model.img_size
rng = np.random.default_rng(0)
images = torch.from_numpy(rng.integers(0, 256, (n, s, s), dtype=np.uint8))
stress = rng.normal(45, 8, n)
trainer = make_trainer(p, stress)
y = trainer.model.standardise(torch.as_tensor(stress, dtype=torch.float32))
trainer.train_epoch(images[:256], y[:256])  # warm-up
start = time.perf_counter(); trainer.train_epoch(images, y); train_s = time.perf_counter() - start
steps = trainer.steps_per_epoch(n)
g = torch.Generator().manual_seed(0)
start = time.perf_counter()
order = torch.randperm(n, generator=g)
for b in range(steps):
    idx = order[b * p.batch_size : (b + 1) * p.batch_size]
    augment(to_model(images[idx]), p.augment, g).contiguous(memory_format=torch.channels_last)
load_s = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
tiles = steps * p.batch_size
print(json.dumps({"steps_per_s": steps / train_s, "train_tiles_per_s": tiles / train_s,
                  "load_tiles_per_s": tiles / load_s, "peak_rss_mb": peak,
                  "preset": p.model.preset, "batch": p.batch_size, "threads": p.threads}))
"""


@bench("regressor")
def regressor_benchmarks(args: argparse.Namespace, work: Path) -> list[dict]:
    """Regressor training steps/s and peak RSS with the tuned params; the batch pipeline
    (index, to float, augment) alone beside what training consumes."""
    import subprocess

    results = []
    for _ in range(args.repeats):
        out = subprocess.run(
            [sys.executable, "-c", _REGRESSOR_PROBE, args.params, "tuned/regressor.yaml"],
            capture_output=True,
            text=True,
            check=True,
        )
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    r0 = results[0]
    note = f"preset {r0['preset']}, batch {r0['batch']}, {r0['threads']} thread(s), 1024 tiles"
    ratio = [r["load_tiles_per_s"] / r["train_tiles_per_s"] for r in results]
    return [
        _row("regressor training steps/s", "steps/s", [r["steps_per_s"] for r in results],
             note=note),
        _row("regressor training tiles/s", "tiles/s", [r["train_tiles_per_s"] for r in results]),
        _row("batch pipeline alone (index + augment) tiles/s", "tiles/s",
             [r["load_tiles_per_s"] for r in results], note="in-memory uint8 tiles, no DataLoader"),
        _row("batch pipeline / training throughput", "x", ratio, target="> 1 (not the bottleneck)"),
        _row("regressor training peak RSS", "MB", [r["peak_rss_mb"] for r in results]),
    ]  # fmt: skip


@bench("counterfactual")
def counterfactual_benchmarks(args: argparse.Namespace, work: Path) -> list[dict]:
    """Eq. 2 over 64 tiles: one batched search vs 64 one-by-one, the default search settings.

    Default-size models from params.yaml with random weights (speed does not depend on training).
    """

    import torch

    from semknobs.config import from_mapping, load_params
    from semknobs.explain.bundle import StressInMPa
    from semknobs.explain.counterfactual import KnobCounterfactual, search_params_from
    from semknobs.models.attgan import Generator
    from semknobs.models.regressor import PeakStressRegressor, RegressorConfig
    from semknobs.train.attgan_params import TrainAttGANStageParams

    raw = load_params(args.params)
    gan_cfg = from_mapping(TrainAttGANStageParams, raw["train_attgan"]).train.model
    reg_cfg = from_mapping(
        RegressorConfig, raw.get("train_regressor", {}).get("train", {}).get("model", {})
    )
    torch.manual_seed(0)
    gen, reg = Generator(gan_cfg).eval(), StressInMPa(PeakStressRegressor(reg_cfg)).eval()
    cf = search_params_from(raw, args.params)
    explainer = KnobCounterfactual(gen, reg, stress_range=30.0)
    n, s = 64, gan_cfg.img_size
    x = torch.rand(n, 1, s, s) * 2 - 1
    a = torch.rand(n, 4)
    batched, single = [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        explainer.attribute(x, a, cf)
        batched.append(time.perf_counter() - start)
        start = time.perf_counter()
        for i in range(n):
            explainer.attribute(x[i : i + 1], a[i : i + 1], cf, ids=[i])
        single.append(time.perf_counter() - start)
    speedup = [b / a_ for a_, b in zip(batched, single)]
    note = (
        f"{n} tiles, {cf.steps} {cf.optimizer} steps x {cf.restarts} starts (as rows); "
        f"{s}-px AttGAN + {reg_cfg.preset} regressor"
    )
    return [
        _row("counterfactual search, 64 tiles batched", "s", batched, note=note),
        _row("counterfactual search, 64 tiles one by one", "s", single),
        _row("counterfactual speed-up, batched vs one by one", "x", speedup, target=">= 10",
             key="counterfactual/batched_speedup"),
    ]  # fmt: skip


@bench("serve")
def bench_serve(args: argparse.Namespace, work: Path) -> list[dict]:
    """The served explainer (`semknobs serve`), default search settings (the explain stage's):
    single-tile requests one at a time (median, p95), then 20 single-tile requests 4 at a time
    (requests/s), then 16-tile requests.

    Uses the pipeline's bundle (models/explainer, from `dvc repro register`), registered in a
    throw-away store.
    """
    from concurrent.futures import ThreadPoolExecutor

    from semknobs import registry, tracking
    from semknobs.data.tiles import load_tiles
    from semknobs.serving import explainer_model
    from semknobs.serving.client import frame_request, free_port, post, running_server
    from semknobs.serving.tile_codec import tiles_frame

    bundle = Path("models/explainer")
    if not (bundle / "config.json").is_file():
        print("bench serve: skipped (no models/explainer; run `make repro` first)")
        return []
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'mlflow.db'}"
    tracking.configure()
    with tracking.stage_run("bench", params={}, root=work):
        ref = registry.log_model(bundle, name="explainer", spec=explainer_model.SPEC)
    tiles, _ = load_tiles(Path("data/tiles"))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "semknobs.cli", "serve", "--model", ref.model_uri,
               "--port", str(port)]  # fmt: skip
    with running_server(command, base_url=base, log_path=work / "server.log", timeout_s=300) as up:
        url = f"{base}/invocations"

        def ask(body: bytes) -> None:
            status, text = post(url, body)
            if status != 200:
                raise RuntimeError(f"bench serve: HTTP {status}: {text[:500]}")

        bodies = [frame_request(tiles_frame(tiles[i : i + 1])) for i in range(20)]
        bare = [frame_request(tiles_frame(tiles[i : i + 1]), gradient=False) for i in range(20)]
        ask(bodies[0])  # warm-up
        single, without = [], []
        for i in range(4 * args.repeats):  # interleaved: with and without the knob gradient
            single += _timed(lambda i=i: ask(bodies[i % 20]), 1)
            without += _timed(lambda i=i: ask(bare[i % 20]), 1)
        p95 = [float(np.percentile(single, 95))]
        rows = [
            _row("explainer server start-up", "s", [up]),
            _row("served explainer, 1 tile/request: latency", "s", single, target="<= 1 s",
                 note=f"{len(single)} sequential requests", key="serve/single_tile_median_s"),
            _row("served explainer, 1 tile/request: p95 latency", "s", p95,
                 key="serve/single_tile_p95_s"),
            _row("served explainer, 1 tile/request, gradient=false: latency", "s", without,
                 note="the same run, interleaved with the row above",
                 key="serve/single_tile_no_gradient_median_s"),
        ]  # fmt: skip
        rates = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            with ThreadPoolExecutor(4) as pool:
                list(pool.map(ask, bodies))
            rates.append(len(bodies) / (time.perf_counter() - start))
        rows.append(
            _row("served explainer, 20 single-tile requests 4 at a time", "req/s", rates,
                 key="serve/concurrent4_req_per_s")
        )  # fmt: skip
        body = frame_request(tiles_frame(tiles[:16]))
        latency = _timed(lambda: ask(body), args.repeats)
        rows.append(_row("served explainer, 16 tiles/request: latency", "s", latency))
    return rows


@bench("explain")
def bench_explain(args: argparse.Namespace, work: Path) -> list[dict]:
    """`semknobs explain` on one whole scan (both targets, the bundle's defaults): the work
    after the model is loaded (reading, tiling, both searches, the meter on the edits, CSV,
    JSON and figure)."""
    from semknobs.explain.bundle import KnobExplainer
    from semknobs.explain.files import explain_paths

    bundle = Path("models/explainer")
    scans = sorted(Path("data/synthetic/raw").glob("*/*"))
    if not (bundle / "config.json").is_file() or not scans:
        print("bench explain: skipped (no models/explainer or scans; run `make repro` first)")
        return []
    explainer = KnobExplainer.from_folder(bundle)
    times, bare, tiles = [], [], 0
    for i in range(args.repeats):  # interleaved: with and without the knob gradient
        start = time.perf_counter()
        (summary,) = explain_paths([scans[0]], explainer=explainer, out_dir=work / f"out{i}",
                                   progress=False)  # fmt: skip
        times.append(time.perf_counter() - start)
        tiles = summary["tiles"]
        start = time.perf_counter()
        explain_paths([scans[0]], explainer=explainer, out_dir=work / f"bare{i}",
                      progress=False, gradient=False)  # fmt: skip
        bare.append(time.perf_counter() - start)
    return [
        _row(f"semknobs explain, one scan ({tiles} tiles, higher + lower)", "s", times,
             target="<= 10 s", key="explain/scan_s",
             note="with the scan's knob gradient (measured Jacobian included)"),
        _row("semknobs explain, the same scan, --no-gradient", "s", bare,
             key="explain/scan_no_gradient_s"),
    ]  # fmt: skip


@bench("ddp")
def ddp_benchmarks(args: argparse.Namespace, work: Path) -> list[dict]:
    """Training steps/s of both models at the default sizes: one process with 1 and 2 threads
    against DDP over 2 processes of 1 thread each (torchrun, gloo), same global batch 32."""
    from ddp_train import launch

    layouts = {  # processes (0: plain python), threads each
        "1 process x 1 thread": (0, "1"),
        "1 process x 2 threads": (0, "2"),
        "DDP 2 processes x 1 thread": (2, "1"),
    }
    steps = {"attgan": 40, "regressor": 200}
    rows = []
    for model in ("attgan", "regressor"):
        for k, (layout, (nproc, threads)) in enumerate(layouts.items()):
            values = [
                launch(model, work / f"{model}-{k}-{i}", nproc=nproc,
                       env={"OMP_NUM_THREADS": threads}, size="default", batch=32,
                       steps=steps[model], steps_per_epoch=50)["steps_per_s"]
                for i in range(args.repeats)
            ]  # fmt: skip
            rows.append(
                _row(f"{model} training, {layout}", "steps/s", values,
                     note=f"default size, global batch 32, {steps[model]} steps, random tiles")
            )  # fmt: skip
    return rows


def _table(results: dict) -> str:
    lines = [
        f"Machine: {results['machine']}; {results['repeats']} repeats, medians.",
        "",
        "| benchmark | median | unit | target | runs | note |",
        "| --- | ---: | --- | --- | --- | --- |",
    ]
    for r in results["rows"]:
        runs = ", ".join(f"{v:.3g}" for v in r["runs"])
        cells = [r["name"], f"{r['median']:.3g}", r["unit"], r["target"], runs, r["note"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _kept_rows(out: Path, rerun: set[str]) -> list[dict]:
    """A partial run (``--only``) keeps the other benches' rows of the previous results,
    marked with that run's date."""
    if not out.is_file():
        return []
    old = json.loads(out.read_text())
    kept = []
    for row in old.get("rows", []):
        if row.get("bench", "") not in rerun:
            kept.append(row | {"note": (row["note"] + f" (run {old.get('date', '?')})").strip()}
                        if "(run " not in row["note"] else row)  # fmt: skip
    return kept


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results.json"))
    parser.add_argument("--table", type=Path, default=Path("benchmarks/results.md"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--baseline-ref",
        default="6995e1c",
        help="attgan_step: the commit whose trainer is the baseline (before issue 14)",
    )
    parser.add_argument("--only", nargs="*", choices=sorted(BENCHES), default=sorted(BENCHES))
    args = parser.parse_args(argv)
    rows: list[dict] = []
    for name in args.only:
        work = Path(tempfile.mkdtemp(prefix=f"semknobs-bench-{name}-"))
        try:
            print(f"bench {name} ...", flush=True)
            rows += [r | {"bench": name} for r in BENCHES[name](args, work)]
        finally:
            shutil.rmtree(work, ignore_errors=True)
    kept = _kept_rows(args.out, set(args.only)) if set(args.only) != set(BENCHES) else []
    rows = kept + rows
    results = {
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "repeats": args.repeats,
        "benches": sorted(args.only),
        "keys": {r["key"]: r["median"] for r in rows if r.get("key")},
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    args.table.write_text(_table(results))
    print(_table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
