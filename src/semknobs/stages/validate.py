"""Stage ``validate``: pandera schemas of the labels and the tile manifest, then the Great
Expectations suite over the tile statistics and label coverage (:mod:`semknobs.data.quality`);
it stops the pipeline with one report listing every problem, each naming its file, row and
column.

The schemas do not gate the quality suite: a bad label cell (a negative ``peak_stress``) still
lets the tile statistics and the label coverage be checked, so a user fixes everything in one
round. Only a tile manifest that fails its own schema stops the tile suite (its statistics
columns are what the suite reads).

The readable report (``report.txt``), ``summary.json`` (what later stages check) and the GX Data
Docs are written either way, as one folder swapped in when complete; on failure the report goes
to stderr and the stage exits non-zero.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from semknobs.atomic import atomic_path
from semknobs.data.quality import QualityResult, ValidateParams, check_quality, check_shards
from semknobs.data.schemas import LOT_ID, check_lots, check_manifest
from semknobs.errors import ValidationFailed
from semknobs.stage import StageContext, StageResult

NAME = "validate"
Params = ValidateParams
DEPS = ("lots", "tiles_dir")
OUTS = ("reports",)
LOG_ON_FAILURE = {"validation": "reports"}  # a failed run still shows its report in MLflow


@dataclass(frozen=True)
class Paths:
    lots: Path
    tiles_dir: Path
    reports: Path


def run(params: ValidateParams, paths: Paths, ctx: StageContext | None = None) -> StageResult:
    """Validate labels and tiles; write ``summary.json``, ``report.txt`` and Data Docs.

    Every problem is collected before giving up (see the module docstring). Raises
    :class:`ValidationFailed` with the report text after the reports are written.
    """
    lots_csv, tiles_dir, report_dir = Path(paths.lots), Path(paths.tiles_dir), Path(paths.reports)
    docs_dir = report_dir / "data_docs"

    labels = check_lots(lots_csv)
    tiles = check_manifest(tiles_dir / "manifest.csv")
    manifest = tiles.table
    schema_failures = labels.problems + tiles.problems
    if manifest is not None:
        schema_failures += check_shards(manifest, tiles_dir)
    label_rows = _coverage_rows(labels.rows)
    summary: dict[str, Any] = {
        "lots_csv": str(lots_csv),
        "tiles_dir": str(tiles_dir),
        "n_lots": None if label_rows is None else int(label_rows["lot"].nunique()),
        "n_tiles": None if manifest is None else len(manifest),
        "tiles_per_lot": _tiles_per_lot(manifest, label_rows),
    }
    with atomic_path(report_dir, directory=True) as tmp:
        quality: QualityResult | None = None
        if manifest is not None:
            quality = check_quality(
                manifest=manifest,
                lots=label_rows,
                params=params,
                docs_dir=tmp / docs_dir.name,
                lots_source=str(lots_csv),
            )
        quality_failures = quality.failures if quality else []
        summary |= {
            "success": not schema_failures and quality is not None and quality.success,
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
        counts = summary["tiles_per_lot"]
        metrics = {
            "data/n_lots": summary["n_lots"] or 0,
            "data/n_tiles": summary["n_tiles"] or 0,
            "data/min_tiles_per_lot": min(counts.values(), default=0),
            "data/n_failures": len(summary["failures"]),
        }
        summary = {"success": summary["success"], **summary, **metrics}  # flat numbers too
        report = _report_text(summary, quality is not None, label_rows is not None)
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        (tmp / "report.txt").write_text(report)
    if not summary["success"]:
        raise ValidationFailed(report.rstrip("\n"))
    return StageResult(
        metrics,
        {"validation": report_dir},
        [f"{lots_csv} and {tiles_dir} passed every check"],
    )


def _coverage_rows(rows: pd.DataFrame | None) -> pd.DataFrame | None:
    """The label rows whose lot id is well formed (CSV index kept, for line numbers): enough to
    check label coverage even when other cells fail the schema. A bad id is a schema problem
    already; listing it again as "a label row but no scans" would only repeat it."""
    if rows is None or "lot" not in rows.columns:
        return None
    lot = rows["lot"].astype(str)
    return rows.loc[lot.str.fullmatch(LOT_ID), ["lot"]].astype(str)


def _tiles_per_lot(manifest: pd.DataFrame | None, labels: pd.DataFrame | None) -> dict[str, int]:
    """Tiles of every labelled lot (0 for a lot without scans) and of every tiled lot."""
    counts: dict[str, int] = {}
    if manifest is not None:
        counts = {str(k): int(v) for k, v in manifest["lot"].value_counts().items()}
    if labels is not None:
        counts = {lot: counts.get(lot, 0) for lot in labels["lot"]} | counts
    return dict(sorted(counts.items()))


def _report_text(summary: dict[str, Any], quality_ran: bool, coverage_ran: bool) -> str:
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
        lines += [
            "",
            f"Quality checks not run: {summary['tiles_dir']}/manifest.csv is unusable (above); "
            "rerun the tile stage.",
        ]
    elif not coverage_ran:
        lines += [
            "",
            f"Label coverage not checked: no lot ids could be read from {summary['lots_csv']}.",
        ]
    counts = summary["tiles_per_lot"]
    if counts:
        lines += ["", "Tiles per lot:", *(f"  {lot}: {n}" for lot, n in counts.items())]
    if summary["data_docs"]:
        lines += ["", f"Data Docs: {summary['data_docs']}"]
    return "\n".join(lines) + "\n"
