"""Data quality of a tiled dataset, checked with Great Expectations, plus the validate stage.

Schemas (pandera, :mod:`semknobs.data.schemas`) say whether the tables are well formed; this
module says whether the *data* is fit for training:

* no blank tiles (pixel std below ``min_std``: out-of-focus or empty areas, charging stripes),
* no saturated tiles (too many pixels at 253..255 or at 0..2),
* mean intensity inside ``mean_range``; pixel min/max inside [0, 255],
* at least ``min_tiles_per_lot`` tiles per lot (a per-lot count table),
* every labelled lot has tiles and every tiled lot has a label,
* no duplicate tiles (same pixels, same sha1): a copied scan would leak across splits.

Three tables are validated, each by its own expectation suite: ``tiles`` (the manifest),
``lots`` (the label table) and ``lot_counts``. GX runs in an ephemeral context whose only Data
Docs site is a local folder, rebuilt from scratch on every run. GX is imported lazily: its
import alone takes seconds.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from semknobs.atomic import atomic_path
from semknobs.errors import DataError, ParamsError

SITE_NAME = "semknobs"
MAX_LOCATIONS = 10  # tile locations listed per failure line before "(+N more)"
_TILE_KEYS = ["tile", "lot", "file", "row", "col"]


@dataclass(frozen=True)
class ValidateParams:
    min_std: float = 4.0  # tile pixel std below this: blank tile
    max_frac_bright: float = 0.25  # share of pixels >= 253 above this: saturated tile
    max_frac_dark: float = 0.5  # share of pixels <= 2 above this: saturated (black) tile
    mean_range: tuple[float, float] = (10.0, 245.0)  # allowed tile mean intensity
    min_tiles_per_lot: int = 8

    def __post_init__(self) -> None:
        if not 0 <= self.min_std <= 255:
            raise ValueError("min_std must be within [0, 255]")
        if not (0 <= self.max_frac_bright <= 1 and 0 <= self.max_frac_dark <= 1):
            raise ValueError("max_frac_bright and max_frac_dark must be within [0, 1]")
        lo, hi = self.mean_range
        if not 0 <= lo < hi <= 255:
            raise ValueError("mean_range must satisfy 0 <= low < high <= 255")
        if self.min_tiles_per_lot < 1:
            raise ValueError("min_tiles_per_lot must be >= 1")


@dataclass
class QualityResult:
    success: bool
    failures: list[str]  # one readable line per problem, naming the lot and scan files
    statistics: dict[str, Any] = field(default_factory=dict)
    docs_index: Path | None = None  # Data Docs entry page


# --------------------------------------------------------------------------------------------
# Great Expectations suite


def _expectations(
    params: ValidateParams, labelled: list[str] | None, tiled: list[str]
) -> dict[str, list[Any]]:
    """Expectations per table; ``meta["check"]`` maps each result back to its report line.

    ``labelled`` None (no readable lot column): no label coverage checks, and no ``lots`` table.
    """
    import great_expectations.expectations as gxe

    lo, hi = params.mean_range

    def meta(check: str, **report: str) -> dict[str, str]:
        return {"check": check, **report}

    def tiles_between(column: str, what: str, why: str, description: str, **bounds: float):
        """A per-tile range check whose failures the report names as ``what`` (``why``)."""
        return gxe.ExpectColumnValuesToBeBetween(
            column=column,
            meta=meta("tile", what=what, why=why),
            description=description,
            **bounds,
        )

    def coverage(labelled: list[str]) -> dict[str, list[Any]]:
        """Every tiled lot has a label row and every label row has tiles."""
        return {
            "tiles": [
                gxe.ExpectColumnValuesToBeInSet(
                    column="lot",
                    value_set=labelled,
                    meta=meta("unlabelled"),
                    description="Every tiled lot has a row in lots.csv.",
                ),
            ],
            "lots": [
                gxe.ExpectTableRowCountToBeBetween(
                    min_value=1, meta=meta("no_labels"), description="lots.csv has label rows."
                ),
                gxe.ExpectColumnValuesToBeInSet(
                    column="lot",
                    value_set=tiled,
                    meta=meta("untiled"),
                    description="Every labelled lot has tiles.",
                ),
            ],
        }

    suites = {
        "tiles": [
            gxe.ExpectTableRowCountToBeBetween(
                min_value=1, meta=meta("no_tiles"), description="The manifest lists tiles."
            ),
            tiles_between(
                "std",
                "blank tile",
                f"std < {params.min_std:g}",
                f"No blank tiles: pixel std >= {params.min_std:g}.",
                min_value=params.min_std,
            ),
            tiles_between(
                "frac_bright",
                "saturated tile",
                f"frac_bright > {params.max_frac_bright:g}",
                f"No saturated tiles: <= {params.max_frac_bright:g} of pixels >= 253.",
                max_value=params.max_frac_bright,
            ),
            tiles_between(
                "frac_dark",
                "saturated tile",
                f"frac_dark > {params.max_frac_dark:g}",
                f"No saturated tiles: <= {params.max_frac_dark:g} of pixels <= 2.",
                max_value=params.max_frac_dark,
            ),
            tiles_between(
                "mean",
                "too dark or too bright tile",
                f"mean outside [{lo:g}, {hi:g}]",
                f"Tile mean intensity within [{lo:g}, {hi:g}].",
                min_value=lo,
                max_value=hi,
            ),
            tiles_between(
                "min",
                "invalid tile",
                "pixel min outside [0, 255]",
                "Pixel minimum within [0, 255].",
                min_value=0,
                max_value=255,
            ),
            tiles_between(
                "max",
                "invalid tile",
                "pixel max outside [0, 255]",
                "Pixel maximum within [0, 255].",
                min_value=0,
                max_value=255,
            ),
            gxe.ExpectColumnValuesToBeUnique(
                column="sha1", meta=meta("duplicate"), description="No duplicate tiles (sha1)."
            ),
        ],
        "lot_counts": [
            gxe.ExpectColumnValuesToBeBetween(
                column="n_tiles",
                min_value=params.min_tiles_per_lot,
                meta=meta("few_tiles"),
                description=f"At least {params.min_tiles_per_lot} tiles per lot.",
            ),
        ],
    }
    if labelled is not None:
        extra = coverage(labelled)
        suites["tiles"] += extra["tiles"]
        suites["lots"] = extra["lots"]
    return suites


def _context(docs_dir: Path) -> Any:
    """An in-memory GX context whose only Data Docs site is ``docs_dir``.

    The default ephemeral context also configures a site in a fresh temporary folder, which a
    build would fill and leave behind; a project config with our site alone avoids that.
    """
    os.environ["GX_ANALYTICS_ENABLED"] = "false"  # no usage events leave the machine
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    site = {
        "class_name": "SiteBuilder",
        "show_how_to_buttons": False,
        "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        "store_backend": {
            "class_name": "TupleFilesystemStoreBackend",
            "base_directory": str(Path(docs_dir).resolve()),  # GX needs it absolute
        },
    }
    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        data_docs_sites={SITE_NAME: site},
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False),
    )
    return gx.get_context(mode="ephemeral", project_config=config)


def _run_suites(
    tables: dict[str, pd.DataFrame],
    expectations: dict[str, list[Any]],
    docs_dir: Path,
) -> list[Any]:
    """Validate each table with its suite; build Data Docs into ``docs_dir``; GX results."""
    import great_expectations as gx
    from great_expectations.core.run_identifier import RunIdentifier

    context = _context(docs_dir)
    source = context.data_sources.add_pandas(name="semknobs")
    run_id = RunIdentifier(run_name="validate")
    results = []
    for name, frame in tables.items():
        batch = source.add_dataframe_asset(name=name).add_batch_definition_whole_dataframe(name)
        suite = context.suites.add(gx.ExpectationSuite(name=f"{name}_quality"))
        for expectation in expectations[name]:
            suite.add_expectation(expectation)
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(data=batch, suite=suite, name=f"{name}_quality")
        )
        keys = _TILE_KEYS if name == "tiles" else ["lot", "_line"]
        keys = [c for c in keys if c in frame.columns]
        results.append(
            definition.run(
                batch_parameters={"dataframe": frame},
                result_format={"result_format": "COMPLETE", "unexpected_index_column_names": keys},
                run_id=run_id,
            )
        )
    context.build_data_docs(site_names=[SITE_NAME])
    return results


# --------------------------------------------------------------------------------------------
# Report lines


def _location(row: dict[str, Any]) -> str:
    return f"{row.get('file', '?')} row {row.get('row', '?')} col {row.get('col', '?')}"


def _locations(rows: list[dict[str, Any]]) -> str:
    shown = ", ".join(_location(r) for r in rows[:MAX_LOCATIONS])
    return shown + (
        f", ... (+{len(rows) - MAX_LOCATIONS} more)" if len(rows) > MAX_LOCATIONS else ""
    )


def _by_lot(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[str(row.get("lot"))].append(row)
    return dict(sorted(groups.items()))


def _csv_lines(rows: list[dict[str, Any]]) -> str:
    """``line 5`` / ``lines 5, 9`` of label rows (``_line`` holds the CSV line number)."""
    lines = sorted({int(r["_line"]) for r in rows if r.get("_line") is not None})
    return f"line{'s' if len(lines) > 1 else ''} {', '.join(map(str, lines)) or '?'}"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _failure_lines(result: Any, params: ValidateParams, lots_source: str) -> list[str]:
    """Readable lines for one failed expectation result, naming lots and scan files (tiles by
    file, tile row and column; labels by their ``lots.csv`` line)."""
    config = result.expectation_config
    meta = config.meta or {}
    check = meta.get("check", config.type)
    info = result.exception_info or {}
    if info.get("raised_exception"):
        message = " ".join(str(info.get("exception_message")).split())
        column = config.kwargs.get("column", "table")
        return [f"check {config.type} on {column} could not run: {message}"]
    rows: list[dict[str, Any]] = list(result.result.get("unexpected_index_list") or [])
    if check == "tile":  # the expectation's own meta says what the failing tiles are
        return [
            f"lot {lot}: {_plural(len(group), meta['what'])} ({meta['why']}): {_locations(group)}"
            for lot, group in _by_lot(rows).items()
        ]
    if check == "duplicate":
        by_hash: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for row in rows:
            by_hash[str(row.get("sha1"))].append(row)
        lines = []
        for sha1, group in by_hash.items():
            lots = sorted({str(r.get("lot")) for r in group})
            label = f"lot {lots[0]}" if len(lots) == 1 else f"lots {', '.join(lots)}"
            lines.append(
                f"{label}: {len(group)} identical tiles (sha1 {sha1[:12]}): {_locations(group)}"
            )
        return lines
    if check == "unlabelled":
        return [
            f"lot {lot} has scans but no label row in {lots_source} "
            f"({', '.join(sorted({str(r.get('file')) for r in group}))})"
            for lot, group in _by_lot(rows).items()
        ]
    if check == "untiled":
        return [
            f"{lots_source}: {_csv_lines(group)}: lot {lot} has a label row but no scans"
            for lot, group in _by_lot(rows).items()
        ]
    if check == "few_tiles":
        return [
            f"lot {row.get('lot')}: only {_plural(int(row.get('n_tiles', 0)), 'tile')} "
            f"(min_tiles_per_lot = {params.min_tiles_per_lot})"
            for row in sorted(rows, key=lambda r: str(r.get("lot")))
        ]
    if check == "no_tiles":
        return ["the tile manifest lists no tiles"]
    if check == "no_labels":
        return ["the lot label table has no rows"]
    column = config.kwargs.get("column", "table")
    return [f"{config.type} failed on {column} ({result.result.get('unexpected_count')} rows)"]


# --------------------------------------------------------------------------------------------
# Public API


def check_quality(
    *,
    manifest: pd.DataFrame,
    lots: pd.DataFrame | None,
    params: ValidateParams,
    docs_dir: str | Path,
    lots_source: str = "lots.csv",
) -> QualityResult:
    """Run the GX suites over per-tile statistics and label coverage; Data Docs to ``docs_dir``.

    ``manifest`` should already pass its pandera schema. Of ``lots`` only the ``lot`` column is
    used (label coverage), so a label table that fails its own schema still gets its coverage
    checked; its index is taken as read by :func:`pandas.read_csv` (line = index + 2), and
    ``lots_source`` names it in the report. ``lots`` None skips the coverage checks. ``docs_dir``
    is replaced as a whole (no stale pages of earlier runs survive).
    """
    if not isinstance(params, ValidateParams):
        raise ParamsError("validate: expected ValidateParams")
    docs_dir = Path(docs_dir)
    tiled = sorted(map(str, manifest["lot"].unique()))
    counts = manifest["lot"].value_counts().sort_index()
    tables = {"tiles": manifest.reset_index(drop=True)}
    labelled = None
    if lots is not None:
        line = lots.index.to_numpy() + 2  # the CSV's row index: header is line 1
        tables["lots"] = pd.DataFrame({"lot": lots["lot"].astype(str).to_numpy(), "_line": line})
        labelled = sorted(tables["lots"]["lot"].unique())
    tables["lot_counts"] = pd.DataFrame(
        {"lot": counts.index.astype(str), "n_tiles": counts.to_numpy()}
    )
    expectations = _expectations(params, labelled, tiled)
    with atomic_path(docs_dir, directory=True) as tmp:
        results = _run_suites(tables, expectations, tmp)
    if not (docs_dir / "index.html").is_file():
        raise DataError(f"{docs_dir}: Great Expectations wrote no Data Docs index.html")

    failures: list[str] = []
    summary: list[dict[str, Any]] = []
    for table, suite_result in zip(tables, results, strict=True):
        for result in suite_result.results:
            config = result.expectation_config
            summary.append(
                {
                    "table": table,
                    "expectation": config.type,
                    "column": config.kwargs.get("column"),
                    "check": (config.meta or {}).get("check"),
                    "success": bool(result.success),
                    "unexpected_count": result.result.get("unexpected_count"),
                }
            )
            if not result.success:
                failures += _failure_lines(result, params, lots_source)
    statistics = {
        "n_tiles": len(manifest),
        "n_lots_labelled": None if labelled is None else len(labelled),
        "n_lots_tiled": len(tiled),
        "tiles_per_lot": {str(k): int(v) for k, v in counts.items()},
        "evaluated_expectations": len(summary),
        "successful_expectations": sum(e["success"] for e in summary),
        "expectations": summary,
    }
    success = all(r.success for r in results) and not failures
    return QualityResult(success, failures, statistics, docs_dir / "index.html")


def check_shards(manifest: pd.DataFrame, tiles_dir: str | Path) -> list[str]:
    """Problems with the shard files the manifest points to (missing, wrong shape, too short).

    Reads array headers only (memory-mapped), so it is cheap for any dataset size.
    """
    tiles_dir = Path(tiles_dir)
    problems = []
    for shard, rows in manifest.groupby("shard", sort=True):
        path = tiles_dir / str(shard)
        lots = ", ".join(sorted(map(str, rows["lot"].unique())))
        if not path.is_file():
            problems.append(f"{path}: shard of lot {lots} listed in manifest.csv is missing")
            continue
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            problems.append(f"{path}: unreadable shard of lot {lots} ({exc})")
            continue
        out_px = int(rows["out_px"].iloc[0])
        if array.dtype != np.uint8 or array.shape[1:] != (out_px, out_px):
            problems.append(
                f"{path}: shard of lot {lots} is {array.dtype} {array.shape}, expected uint8 "
                f"(n, {out_px}, {out_px})"
            )
        if len(rows) and int(rows["index"].max()) >= len(array):
            problems.append(
                f"{path}: manifest.csv indexes tile {int(rows['index'].max())} of lot {lots} but "
                f"the shard holds {len(array)} tiles"
            )
    return problems


def require_validated(summary_json: str | Path) -> dict[str, Any]:
    """The validate stage's summary, or a :class:`DataError` if validation did not pass."""
    path = Path(summary_json)
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: no readable validation summary ({exc}); run validate") from None
    if not summary.get("success"):
        report = path.with_name("report.txt")
        raise DataError(f"{path}: the data did not pass validation; read {report}")
    return summary
