"""Stage ``synthesize``: render the synthetic SEM study -- scans, lot labels (what a lab would
hand over) and the ground truth (evaluation only) -- and a figure of the lot design."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from semknobs.data.figures import design_figure
from semknobs.data.synth import SynthParams, synthesize
from semknobs.stage import StageContext, StageResult, save_figure

NAME = "synthesize"
Params = SynthParams


@dataclass(frozen=True)
class Paths:
    raw_dir: Path = field(metadata={"help": "scans to write (<raw_dir>/<lot>/<scan>.tif)"})
    lots: Path = field(metadata={"help": "lot labels CSV to write"})
    truth_dir: Path = field(metadata={"help": "ground truth to write (evaluation only)"})
    reports: Path


def run(params: SynthParams, paths: Paths, ctx: StageContext | None = None) -> StageResult:
    lots = synthesize(
        params=params, raw_dir=paths.raw_dir, lots_csv=paths.lots, truth_dir=paths.truth_dir
    )
    save_figure(design_figure(lots), paths.reports / "design.png")
    n_scans = sum(1 for _ in Path(paths.raw_dir).glob("*/*.*"))
    return StageResult(
        {"data/n_lots": len(lots), "data/n_scans": n_scans}, {"figures": paths.reports}
    )
