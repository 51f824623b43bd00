"""Where the committed AttGAN step spends its time, and what the obvious decoder swap would cost.

``train_attgan`` is over its 12-minute target on some 2-core machines (README, AttGAN). This
profiles the committed trainer's step (``params.yaml``, concept network pre-trained, the
training tiles of this workspace; ``torch.profiler``, 2 threads) and reports the share of its
CPU time in the decoder's transposed convolutions, which run on PyTorch's non-oneDNN path here.
Then, for each transposed convolution of the committed generator (shapes read from one forward
pass), forward + backward medians of that layer beside nearest-neighbour upsampling + a 3x3
convolution (the resize-convolution of Odena et al., 2016), interleaved. Either swap changes the
numerics, so it would be a new model and a full rerun, not a speed-up of this one.
Needs ``make repro``; about 2 minutes.

    python benchmarks/decoder_upsample.py [--out benchmarks/decoder_upsample]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from semknobs.config import load_params
from semknobs.data.dataset import fit_scaler, load_tileset
from semknobs.data.split import read_splits
from semknobs.meter import readings_and_counts
from semknobs.pixels import to_model
from semknobs.stages import train_attgan as stage
from semknobs.train.attgan import AttGANTrainer, train_attgan

REPEATS, STEPS = 30, 10


def trainer_after_pretraining(
    params: stage.TrainAttGANStageParams,
) -> tuple[AttGANTrainer, torch.Tensor, torch.Tensor]:
    """The committed trainer one step in (concept network pre-trained), its training tiles
    (uint8) and their attributes, loaded as the stage loads them."""
    lots = read_splits(Path("data/splits.json")).training_lots("data/splits.json")
    lots_csv = params_lots()
    scaler = fit_scaler(lots_csv, lots)
    data = load_tileset(tiles_dir=Path("data/tiles"), lots_csv=lots_csv, lots=lots, scaler=scaler)
    readings, _ = readings_and_counts(Path("data/measurements.csv"), data.manifest, count=False)
    images, attrs = torch.from_numpy(data.images), torch.from_numpy(data.attrs)
    trainer = train_attgan(
        params=params.train, images=images, attrs=attrs, stop_after=1, progress=False,
        readings=readings, lots=data.manifest["lot"].to_numpy(), meter=params.meter,
    )  # fmt: skip
    return trainer, images, attrs


def params_lots() -> Path:
    """The lots table the pipeline reads (``data.lots``)."""
    return Path(load_params("params.yaml")["data"]["lots"])


def step_profile(
    trainer: AttGANTrainer, images: torch.Tensor, attrs: torch.Tensor
) -> dict[str, float]:
    """CPU time of ``STEPS`` steps and the share in the transposed convolutions: the
    convolution events, forward and backward, whose inputs include a transposed layer's weight
    shape (no other convolution of the committed generator or critic has one of those)."""
    batch = trainer.params.batch_size

    def step() -> None:
        idx = torch.randint(0, len(images), (batch,), generator=trainer.rng)
        trainer.train_step(to_model(images[idx]), attrs[idx])

    for _ in range(3):
        step()
    transposed = {
        tuple(m.weight.shape) for m in trainer.gen.modules() if isinstance(m, nn.ConvTranspose2d)
    }
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(STEPS):
            step()
    total = in_transposed = 0.0
    for event in prof.key_averages(group_by_input_shape=True):
        total += event.self_cpu_time_total
        shapes = [tuple(s) for s in event.input_shapes if s]
        if "conv" in event.key and any(s in transposed for s in shapes):
            in_transposed += event.self_cpu_time_total
    return {"step_s": total / STEPS / 1e6, "transposed_share": in_transposed / total}


def layer_timings(gen: nn.Module, batch: int) -> list[dict[str, float]]:
    """Per transposed convolution: forward + backward ms, as built and as a resize-convolution."""
    shapes: list[tuple[nn.ConvTranspose2d, torch.Size]] = []
    hooks = [
        m.register_forward_hook(lambda m, i, o: shapes.append((m, i[0].shape)))
        for m in gen.modules()
        if isinstance(m, nn.ConvTranspose2d)
    ]
    size = gen.cfg.img_size
    attrs = torch.zeros(batch, gen.cfg.n_attrs)
    with torch.no_grad():
        gen(torch.zeros(batch, 1, size, size), attrs, attrs)
    for h in hooks:
        h.remove()
    rows = []
    for layer, shape in shapes:
        c_in, c_out = layer.in_channels, layer.out_channels
        resize = nn.Sequential(nn.Upsample(scale_factor=2), nn.Conv2d(c_in, c_out, 3, padding=1))
        x = torch.randn(shape, requires_grad=True)
        times: dict[str, list[float]] = {"transposed": [], "resize": []}
        for i in range(REPEATS + 3):
            for name, module in (("transposed", layer), ("resize", resize)):
                start = time.perf_counter()
                module(x).sum().backward()
                if i >= 3:
                    times[name].append(1e3 * (time.perf_counter() - start))
        med = {k: statistics.median(v) for k, v in times.items()}
        rows.append({"layer": f"{c_in} -> {c_out} ch at {shape[-1]} px", **med,
                     "ratio": med["resize"] / med["transposed"]})  # fmt: skip
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/decoder_upsample"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    params = stage.load(Path("params.yaml"), stage.Paths(
        tiles_dir=Path("data/tiles"), lots=params_lots(), splits=Path("data/splits.json"),
        checkpoint_dir=Path("."), model_dir=Path("."), metrics=Path("."), reports=Path("."),
        tuned=Path("tuned/attgan.yaml"), measurements=Path("data/measurements.csv"),
    ))  # fmt: skip
    trainer, images, attrs = trainer_after_pretraining(params)
    result = {
        "step": step_profile(trainer, images, attrs),
        "layers": layer_timings(trainer.gen, params.train.batch_size),
    }
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [
        "# Decoder upsampling on this CPU (2 threads)",
        "",
        f"Committed `train_attgan` step: {result['step']['step_s']:.3f} s of CPU time "
        f"(profiled, {STEPS} steps), {100 * result['step']['transposed_share']:.0f} % of it in "
        "the decoder's transposed convolutions.",
        "",
        f"| layer (batch {params.train.batch_size}) | transposed 4x4/2, ms | "
        "upsample + 3x3, ms | ratio |",
        "| --- | ---: | ---: | ---: |",
        *(
            f"| {r['layer']} | {r['transposed']:.1f} | {r['resize']:.1f} | {r['ratio']:.2f} |"
            for r in result["layers"]
        ),
        "",
        f"Forward + backward, medians of {REPEATS}, interleaved.",
    ]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
