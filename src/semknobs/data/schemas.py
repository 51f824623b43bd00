"""Schemas of the tabular inputs (``lots.csv`` and the tile manifest), checked with pandera.

Validation is lazy: every failure of a file is collected and turned into one readable report,
one line per problem, that names the file, the row (as a CSV line number and, where there is
one, the lot id), the column, the check and the bad value, e.g.::

    data/lots.csv: line 8 (lot 'L07'): peak_stress = -3.0 fails greater_than(0)

:func:`read_lots` and :func:`read_manifest` raise on a bad file (the report is the message of
:class:`~semknobs.errors.ValidationFailed`); :func:`check_lots` and :func:`check_manifest` return
every problem instead, a missing column included, so the validate stage can list the problems of
both files and of the tile quality suite at once. pandera's own exception and traceback never
reach the user.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pandera.errors import SchemaError, SchemaErrors

from semknobs.attributes import ATTRIBUTES
from semknobs.data.tiles import MANIFEST_COLUMNS
from semknobs.errors import DataError, ValidationFailed

LOT_ID = r"[A-Za-z0-9_-]+"
SHA1 = r"[0-9a-f]{40}"
SHARD = r"[A-Za-z0-9_-]+\.npy"  # a bare file name: no path can escape the tiles folder

LOTS_COLUMNS: tuple[str, ...] = ("lot", *ATTRIBUTES, "peak_stress")
LOTS_TEXT_COLUMNS = ("lot",)
MANIFEST_TEXT_COLUMNS = ("lot", "scan", "file", "shard", "sha1")


def _fullmatch(pattern: str) -> pa.Check:
    """Whole-string regex match (``str_matches`` uses ``re.match``, whose ``$`` allows a
    trailing newline)."""
    compiled = re.compile(pattern)
    return pa.Check(
        lambda s: s.str.fullmatch(compiled.pattern).fillna(False).astype(bool),
        name="fullmatch",
        error=f"fullmatch('{pattern}')",
    )


# Not +-inf. Unreadable cells are left to the coercion report and NaN to ``not_nullable``.
_FINITE = pa.Check(
    lambda s: ~np.isinf(pd.to_numeric(s, errors="coerce").astype(float)),
    name="finite",
    error="finite",
)


def _text(*checks: pa.Check, unique: bool = False) -> pa.Column:
    return pa.Column(str, list(checks), unique=unique)


def _count(minimum: int = 0) -> pa.Column:
    return pa.Column(int, pa.Check.ge(minimum))


def _stat(high: float) -> pa.Column:
    return pa.Column(float, [_FINITE, pa.Check.in_range(0, high)])


LOTS_SCHEMA = pa.DataFrameSchema(
    {
        "lot": _text(_fullmatch(LOT_ID), unique=True),
        **{name: pa.Column(float, _FINITE) for name in ATTRIBUTES},
        "peak_stress": pa.Column(float, [_FINITE, pa.Check.gt(0)]),
    },
    strict=False,  # extra columns (notes, batch ids) are allowed
    coerce=True,
    name="lots",
)

MANIFEST_SCHEMA = pa.DataFrameSchema(
    {
        "tile": pa.Column(int, pa.Check.ge(0), unique=True),
        "lot": _text(_fullmatch(LOT_ID)),
        "scan": _text(pa.Check.str_length(min_value=1)),
        "file": _text(pa.Check.str_length(min_value=1)),
        "row": _count(),
        "col": _count(),
        "y0": _count(),
        "x0": _count(),
        "tile_px": _count(1),
        "out_px": _count(1),
        "shard": _text(_fullmatch(SHARD)),
        "index": _count(),
        "mean": _stat(255),
        "std": _stat(255),
        "min": _stat(255),
        "max": _stat(255),
        "frac_dark": _stat(1),
        "frac_bright": _stat(1),
        "sha1": _text(_fullmatch(SHA1)),
    },
    strict=False,
    coerce=True,
    unique=["lot", "shard", "index"],
    name="manifest",
)


# --------------------------------------------------------------------------------------------
# Reading


@dataclass(frozen=True)
class _File:
    kind: str  # what the messages call the file
    schema: pa.DataFrameSchema
    required: tuple[str, ...]
    text: tuple[str, ...]  # columns kept as raw text
    rows: str  # what its rows are
    keys: tuple[str, ...]  # columns that name a row in the report


_LOTS = _File("lot label table", LOTS_SCHEMA, LOTS_COLUMNS, LOTS_TEXT_COLUMNS, "lot rows", ("lot",))
_MANIFEST = _File(
    "tile manifest",
    MANIFEST_SCHEMA,
    MANIFEST_COLUMNS,
    MANIFEST_TEXT_COLUMNS,
    "tile rows",
    ("lot", "tile"),
)


@dataclass(frozen=True)
class CheckedTable:
    """A table file checked against its schema, every problem collected."""

    path: Path
    rows: pd.DataFrame | None  # as read (text columns raw); None if the file is unreadable
    table: pd.DataFrame | None  # validated, dtypes coerced; None if there is any problem
    problems: list[str] = field(default_factory=list)  # one readable line each

    @property
    def ok(self) -> bool:
        return not self.problems


def check_lots(path: str | Path) -> CheckedTable:
    """``lots.csv`` checked: every problem of the file (missing columns, bad cells, duplicate
    ids) as report lines; the columns present are checked even when others are missing."""
    return _check_file(Path(path), _LOTS, None)


def check_manifest(path: str | Path, *, max_per_check: int | None = 50) -> CheckedTable:
    """The tile ``manifest.csv`` checked, as :func:`check_lots`."""
    return _check_file(Path(path), _MANIFEST, max_per_check)


def read_lots(path: str | Path) -> pd.DataFrame:
    """``lots.csv`` as a validated DataFrame (``lot`` kept as text: ``007`` stays ``"007"``).

    Raises :class:`DataError` if the file is missing, empty, unparsable or lacks required
    columns, and :class:`ValidationFailed` listing every schema failure otherwise.
    """
    frame = _read_csv(Path(path), _LOTS)
    return validate_lots(frame, str(path))


def read_manifest(path: str | Path, *, max_per_check: int | None = 50) -> pd.DataFrame:
    """The tile ``manifest.csv`` as a validated DataFrame; errors as in :func:`read_lots`."""
    frame = _read_csv(Path(path), _MANIFEST)
    return validate_manifest(frame, str(path), max_per_check=max_per_check)


def _check_file(path: Path, spec: _File, max_per_check: int | None) -> CheckedTable:
    try:
        frame = _read_csv(path, spec, require=False)
    except DataError as exc:
        return CheckedTable(path, None, None, [str(exc)])
    schema, problems = spec.schema, []
    missing = _missing(frame, spec)
    if missing:
        problems.append(_missing_message(path, spec, frame, missing))
        schema = schema.remove_columns(missing)  # still check the columns that are there
        if schema.unique:
            schema.unique = [c for c in schema.unique if c not in missing] or None
    if frame.empty:
        return CheckedTable(path, frame, None, [*problems, _no_rows(path, spec)])
    table, lines = _schema_problems(schema, frame, str(path), spec.keys, max_per_check)
    problems += lines
    return CheckedTable(path, frame, None if problems else table, problems)


def _read_csv(path: Path, spec: _File, *, require: bool = True) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(f"{path}: {spec.kind} not found")
    try:
        frame = pd.read_csv(path)
        # Ids such as "NA", "null" or "007" are valid text: read those columns again, raw.
        present = [c for c in spec.text if c in frame.columns]
        if present:
            raw = pd.read_csv(path, usecols=present, dtype=str, keep_default_na=False)
            for column in present:
                frame[column] = raw[column]
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: {spec.kind} is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        reason = " ".join(str(exc).split())
        raise DataError(f"{path}: {spec.kind} is not a readable CSV file ({reason})") from None
    if require:
        missing = _missing(frame, spec)
        if missing:
            raise DataError(_missing_message(path, spec, frame, missing))
        if frame.empty:
            raise DataError(_no_rows(path, spec))
    return frame


def _missing(frame: pd.DataFrame, spec: _File) -> list[str]:
    return [c for c in spec.required if c not in frame.columns]


def _missing_message(path: Path, spec: _File, frame: pd.DataFrame, missing: list[str]) -> str:
    return (
        f"{path}: {spec.kind} lacks required column(s) {', '.join(missing)} "
        f"(found: {', '.join(map(str, frame.columns)) or 'none'})"
    )


def _no_rows(path: Path, spec: _File) -> str:
    return f"{path}: {spec.kind} has a header but no {spec.rows}"


# --------------------------------------------------------------------------------------------
# Validation


def validate_lots(
    df: pd.DataFrame, source: str, *, max_per_check: int | None = None
) -> pd.DataFrame:
    """``df`` checked against :data:`LOTS_SCHEMA` (dtypes coerced), or :class:`ValidationFailed`.

    ``source`` names the file in the report. Row numbers in the report are CSV line numbers
    (index label + 2), right for frames read with :func:`pandas.read_csv`.
    """
    return _validate(LOTS_SCHEMA, df, source, _LOTS.keys, max_per_check)


def validate_manifest(
    df: pd.DataFrame, source: str, *, max_per_check: int | None = 50
) -> pd.DataFrame:
    """``df`` checked against :data:`MANIFEST_SCHEMA`, or :class:`ValidationFailed`.

    A manifest has one row per tile, so one broken column can fail thousands of rows; at most
    ``max_per_check`` lines are listed per (column, check), followed by a count of the rest
    (``None`` lists every one).
    """
    return _validate(MANIFEST_SCHEMA, df, source, _MANIFEST.keys, max_per_check)


def _validate(
    schema: pa.DataFrameSchema,
    df: pd.DataFrame,
    source: str,
    keys: Sequence[str],
    max_per_check: int | None,
) -> pd.DataFrame:
    if not isinstance(df, pd.DataFrame):
        raise DataError(f"{source}: expected a table, got {type(df).__name__}")
    table, lines = _schema_problems(schema, df, source, keys, max_per_check)
    if lines:
        raise ValidationFailed(f"{source} does not match its schema:\n" + "\n".join(lines))
    return table


def _schema_problems(
    schema: pa.DataFrameSchema,
    df: pd.DataFrame,
    source: str,
    keys: Sequence[str],
    max_per_check: int | None,
) -> tuple[pd.DataFrame | None, list[str]]:
    """(the validated table, []) or (None, one line per failure): pandera's lazy validation."""
    if not df.index.is_unique:
        df = df.reset_index(drop=True)
    try:
        return schema.validate(df, lazy=True), []
    except SchemaErrors as exc:
        lines = failure_lines(exc.failure_cases, df, source, keys, max_per_check)
    except SchemaError as exc:  # raised outside the lazy collection (rare): still one line
        lines = [f"{source}: {' '.join(str(exc).split())}"]
    return None, lines or [f"{source}: does not match its schema"]


def failure_lines(
    cases: pd.DataFrame,
    df: pd.DataFrame,
    source: str,
    keys: Sequence[str] = ("lot",),
    max_per_check: int | None = None,
) -> list[str]:
    """One readable line per failure in pandera's ``failure_cases`` table.

    Redundant entries are dropped: a column that failed coercion or has missing values also
    fails its dtype check, which would only repeat the same cells.
    """
    cases = cases.copy()
    cases["check"] = cases["check"].astype(str)
    noisy = set(
        cases.loc[cases["check"].str.startswith(("coerce_dtype", "not_nullable")), "column"]
    )
    is_dtype = cases["check"].str.startswith("dtype(") & cases["column"].isin(noisy)
    nulls = cases["check"].str.startswith("not_nullable")
    null_cells = set(zip(cases.loc[nulls, "column"], cases.loc[nulls, "index"], strict=True))
    coerced_nulls = cases["check"].str.startswith("coerce_dtype") & np.array(
        [(c, i) in null_cells for c, i in zip(cases["column"], cases["index"], strict=True)],
        dtype=bool,
    )
    # A check that raised (index None) on a column that could not be coerced adds nothing.
    errored = (
        cases["index"].isna()
        & cases["column"].isin(noisy)
        & ~cases["check"].str.startswith(("coerce_dtype", "not_nullable", "dtype("))
    )
    cases = cases[~is_dtype & ~coerced_nulls & ~errored]

    lines: list[str] = []
    unique_checks = ("field_uniqueness", "multiple_fields_uniqueness")
    for check, group in cases[cases["check"].isin(unique_checks)].groupby("check", sort=False):
        lines += _uniqueness_lines(str(check), group, df, source, max_per_check)
    rest = cases[~cases["check"].isin(unique_checks)]
    for _, group in rest.groupby(["column", "check"], sort=False, dropna=False):
        shown = group if max_per_check is None else group.iloc[:max_per_check]
        for case in shown.itertuples(index=False):
            lines.append(_case_line(case, df, source, keys))
        if len(group) > len(shown):
            first = shown.iloc[0]
            lines.append(
                f"{source}: ... and {len(group) - len(shown)} more rows failing "
                f"{first['column']} {first['check']}"
            )
    return lines


def _case_line(case: Any, df: pd.DataFrame, source: str, keys: Sequence[str]) -> str:
    column, check, value, index = case.column, case.check, case.failure_case, case.index
    where = _where(df, index, keys)
    if check == "column_in_dataframe":
        return f"{source}: missing required column {value!r}"
    if check.startswith("dtype("):
        return f"{source}: column {column} has dtype {value}, expected {check[6:-1]}"
    if check.startswith("not_nullable"):
        return f"{source}: {where}{column} is missing (empty cell or NaN)"
    if check.startswith("coerce_dtype("):
        dtype = check[13:-1].strip("'")
        return f"{source}: {where}{column} = {_show(value)} cannot be read as {dtype}"
    if not where and column in df.columns:  # the check itself raised, on the whole column
        return f"{source}: column {column}: check {check} could not run ({value})"
    if column == "lot" and "lot" in keys:  # the bad value is the id itself: say so once
        return (
            f"{source}: {_line(index)}: lot {_show(value)} fails {check}: lot ids name folders "
            "and files, so only letters, digits, '_' and '-' are allowed"
        )
    return f"{source}: {where}{column} = {_show(value)} fails {check}"


def _uniqueness_lines(
    check: str, group: pd.DataFrame, df: pd.DataFrame, source: str, max_per_check: int | None
) -> list[str]:
    lines = []
    if check == "field_uniqueness":
        for (column, value), rows in group.groupby(["column", "failure_case"], sort=False):
            lines.append(
                f"{source}: {column} {_show(value)} appears {len(rows)} times "
                f"({_lines(rows['index'])}); {column} values must be unique"
            )
    else:  # a DataFrameSchema(unique=[...]) failure: one case per cell, regroup by value
        columns = list(dict.fromkeys(group["column"]))
        rows = df.loc[[i for i in dict.fromkeys(group["index"]) if i in df.index], columns]
        for key, indexes in rows.groupby(columns, sort=False, dropna=False).groups.items():
            values = ", ".join(map(_show, key if isinstance(key, tuple) else (key,)))
            lines.append(
                f"{source}: ({', '.join(columns)}) = ({values}) appears {len(indexes)} times "
                f"({_lines(indexes)}); it must be unique"
            )
    if max_per_check is not None and len(lines) > max_per_check:
        extra = len(lines) - max_per_check
        lines = [*lines[:max_per_check], f"{source}: ... and {extra} more duplicated values"]
    return lines


def _where(df: pd.DataFrame, index: Any, keys: Sequence[str]) -> str:
    """``line 8 (lot 'L07'): `` for a lots table, ``line 9 (lot 'L03', tile 7): `` for a
    manifest: the CSV line to open and the ids to recognise it by."""
    if index is None or (isinstance(index, float) and np.isnan(index)) or index not in df.index:
        return ""
    known = []
    for key in keys:
        value = df.loc[index, key] if key in df.columns else None
        if isinstance(value, str) or _is_number(value):
            known.append(f"{key} {_show(value)}")
    detail = f" ({', '.join(known)})" if known else ""
    return f"{_line(index)}{detail}: "


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _line(index: Any) -> str:
    return f"line {int(index) + 2}" if _is_number(index) else f"row {index!r}"


def _lines(indexes: Iterable[Any], limit: int = 10) -> str:
    indexes = list(indexes)
    more = f", ... ({len(indexes) - limit} more)" if len(indexes) > limit else ""
    return ", ".join(_line(i) for i in indexes[:limit]) + more


def _show(value: Any) -> str:
    if isinstance(value, (float, np.floating)):
        return "NaN" if np.isnan(value) else repr(float(value))
    if isinstance(value, np.integer):
        return str(int(value))
    return repr(value)
