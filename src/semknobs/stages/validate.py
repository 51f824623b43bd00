"""Stage ``validate``: pandera schemas of the labels and the tile manifest, then the Great
Expectations suite over the tile statistics (:mod:`semknobs.data.quality`); it stops the
pipeline with a report naming lots, files and rows.

The readable report (``report.txt``), ``summary.json`` (what later stages check) and the GX Data
Docs are written either way; on failure the report goes to stderr and the stage exits non-zero.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from semknobs.atomic import atomic_path
from semknobs.data.quality import QualityResult, ValidateParams, check_quality, check_shards
from semknobs.data.schemas import read_lots, read_manifest
from semknobs.errors import DataError, ValidationFailed
from semknobs.stage import StageContext, StageResult

NAME = "validate"
Params = ValidateParams
DEPS = ("lots", "tiles_dir")
LOG_ON_FAILURE = {"validation": "reports"}  # a failed run still shows its report in MLflow


@dataclass(frozen=True)
class Paths:
    lots: Path
    tiles_dir: Path
    reports: Path


def run(params: ValidateParams, paths: Paths, ctx: StageContext | None = None) -> StageResult:
    """Validate labels and tiles; write ``summary.json``, ``report.txt`` and Data Docs.

    Schema problems of both files are collected before giving up; the quality suites run only on
    tables that passed their schemas (they assume well-typed columns). Raises
    :class:`ValidationFailed` with the report text after the reports are written.
    """
    lots_csv, tiles_dir, report_dir = Path(paths.lots), Path(paths.tiles_dir), Path(paths.reports)
    docs_dir = report_dir / "data_docs"

    schema_failures: list[str] = []
    lots = manifest = None
    try:
        lots = read_lots(lots_csv)
    except DataError as exc:
        schema_failures += _problem_lines(exc)
    try:
        manifest = read_manifest(tiles_dir / "manifest.csv")
    except DataError as exc:
        schema_failures += _problem_lines(exc)
    if manifest is not None:
        schema_failures += check_shards(manifest, tiles_dir)

    quality: QualityResult | None = None
    if lots is not None and manifest is not None and not schema_failures:
        quality = check_quality(manifest=manifest, lots=lots, params=params, docs_dir=docs_dir)
    elif docs_dir.exists():  # docs of an earlier run would describe other data
        shutil.rmtree(docs_dir)

    quality_failures = quality.failures if quality else []
    success = not schema_failures and quality is not None and quality.success
    tiles_per_lot: dict[str, int] = {}
    if manifest is not None:
        tiles_per_lot = {str(k): int(v) for k, v in manifest["lot"].value_counts().items()}
    if lots is not None:
        tiles_per_lot = {str(lot): tiles_per_lot.get(str(lot), 0) for lot in lots["lot"]} | {
            lot: n for lot, n in tiles_per_lot.items() if lot not in set(lots["lot"])
        }
    summary: dict[str, Any] = {
        "success": success,
        "lots_csv": str(lots_csv),
        "tiles_dir": str(tiles_dir),
        "n_lots": None if lots is None else len(lots),
        "n_tiles": None if manifest is None else len(manifest),
        "tiles_per_lot": dict(sorted(tiles_per_lot.items())),
        "failures": schema_failures + quality_failures,
        "schema_failures": schema_failures,
        "quality_failures": quality_failures,
        "params": {
            "min_std": params.min_std,
            "max_frac_bright": params.max_frac_bright,
            "max_frac_dark": params.max_frac_dark,
            "mean_range": list(params.mean_range),
            "min_tiles_per_lot": params.min_tiles_per_lot,
        },
        "statistics": quality.statistics if quality else None,
        "data_docs": str(docs_dir / "index.html") if quality else None,
    }
    metrics = {
        "data/n_lots": 0 if lots is None else len(lots),
        "data/n_tiles": 0 if manifest is None else len(manifest),
        "data/min_tiles_per_lot": min(tiles_per_lot.values(), default=0),
        "data/n_failures": len(schema_failures) + len(quality_failures),
    }
    summary |= metrics  # flat numbers for experiment tracking, as before
    report = _report_text(summary, quality is not None)
    report_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(report_dir / "summary.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
    with atomic_path(report_dir / "report.txt") as tmp:
        tmp.write_text(report)
    if not success:
        raise ValidationFailed(report.rstrip("\n"))
    return StageResult(
        metrics,
        {"validation": report_dir},
        [f"{lots_csv} and {tiles_dir} passed every check"],
    )


def _problem_lines(exc: DataError) -> list[str]:
    """The problems in a schema error; a ValidationFailed's first line only heads the list."""
    lines = str(exc).splitlines()
    return lines[1:] if isinstance(exc, ValidationFailed) and len(lines) > 1 else lines


def _report_text(summary: dict[str, Any], quality_ran: bool) -> str:
    failures = summary["failures"]
    n = len(failures)
    head = "PASSED" if summary["success"] else f"FAILED ({n} problem{'' if n == 1 else 's'})"
    n_lots, n_tiles = (("?" if n is None else n) for n in (summary["n_lots"], summary["n_tiles"]))
    lines = [
        f"Data validation {head}",
        f"labels: {summary['lots_csv']} ({n_lots} lots)",
        f"tiles:  {summary['tiles_dir']} ({n_tiles} tiles)",
    ]
    if summary["schema_failures"]:
        lines += ["", "Schema (pandera):", *(f"  {x}" for x in summary["schema_failures"])]
    if summary["quality_failures"]:
        lines += ["", "Quality (Great Expectations):"]
        lines += [f"  {x}" for x in summary["quality_failures"]]
    if not quality_ran:
        lines += ["", "Quality checks not run: fix the schema problems above first."]
    counts = summary["tiles_per_lot"]
    if counts:
        lines += ["", "Tiles per lot:", *(f"  {lot}: {n}" for lot, n in counts.items())]
    if summary["data_docs"]:
        lines += ["", f"Data Docs: {summary['data_docs']}"]
    return "\n".join(lines) + "\n"
