"""A template run's rows: a CSV or JSONL file, a columnar table (Parquet file or folder,
Arrow IPC / Feather, Hugging Face dataset folder, a `duckdb:SELECT ...` query), or a table
object from Python.

    source = rows_source(config, base)    # each call reads the rows again, a batch at a time
    for item in source(): ...             # InputItem or BadLine ("row 12: ...")

A columnar table says its columns up front, so a template field or `id_field` no column
holds is refused here, before the first row is read, naming the columns there are (with
`missing_field="empty"` an absent template column is empty text, as an absent CSV column).
Only the columns the template and the id need are read. Rows are numbered from 1, as CSV rows
are; each bad row names its number and the field at fault and spoils only itself.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..io.formats import BadLine, InputItem, TemplateError, items_of_rows, read_rows
from ..io.tables import (
    DUCKDB_PREFIX,
    BadRow,
    Table,
    TableError,
    is_table,
    is_table_path,
    open_table,
)
from ..types import CompletionRequest
from .config import RunConfig
from .errors import ConfigError

__all__ = ["not_a_table", "rows_name", "rows_source"]


def rows_name(rows: object) -> str:
    """How messages name the rows: the path, or what the object is."""
    if isinstance(rows, str | os.PathLike):
        return os.fspath(rows)
    try:
        return open_table(rows).name
    except TableError:
        return "rows"


def rows_source(
    config: RunConfig, base: CompletionRequest
) -> Callable[[], Iterator[InputItem | BadLine]]:
    """The run's rows as a `Source` (a callable; each call reads them again)."""
    template, id_field, missing = config.template or "", config.id_field, config.missing_field
    rows = config.rows
    if isinstance(rows, str) and rows.startswith(DUCKDB_PREFIX):
        pass  # a query, not a path
    elif isinstance(rows, str | os.PathLike):
        path = Path(rows)
        if not path.exists():
            raise ConfigError("rows", f"`rows` {path}: no such file or folder")
        if not is_table_path(path):  # CSV or JSONL (a folder is always a table)
            return lambda: read_rows(template, path, id_field, base, missing=missing)
    elif not is_table(rows):
        raise ConfigError("rows", not_a_table(rows))
    try:
        table = open_table(rows)
        columns = table.columns()
    except TableError as exc:
        raise ConfigError("rows", f"`rows` {exc}") from None
    try:
        fields = _fields(template)
    except TemplateError as exc:
        raise ConfigError("template", str(exc)) from None
    shown = _shown(columns)
    if id_field not in columns:
        raise ConfigError(
            "id_field", f"`id_field` {id_field!r}: {table.name} has no such column ({shown})"
        )
    if missing == "error":
        for name in fields:
            if name not in columns:
                raise ConfigError(
                    "template",
                    f"`template` field {{{name}}}: {table.name} has no column {name!r} "
                    f"({shown}; or set `missing_field` to empty)",
                )
    wanted = [id_field, *fields]

    def items() -> Iterator[InputItem | BadLine]:
        return items_of_rows(
            template, _lines(table, wanted), id_field, base, missing=missing, fields=fields
        )

    return items


def _fields(template: str) -> list[str]:
    from ..io.formats import template_fields

    return template_fields(template)


def _lines(table: Table, columns: list[str]) -> Iterator[tuple[int, dict[str, Any] | BadLine]]:
    for n, row in table.rows(columns):
        if isinstance(row, BadRow):
            yield n, BadLine(n, row.message, where="row")
        else:
            yield n, row


def _shown(columns: list[str], most: int = 20) -> str:
    if not columns:
        return "it has no columns"
    names = ", ".join(repr(c) for c in columns[:most])
    more = f" and {len(columns) - most} more" if len(columns) > most else ""
    return f"its columns: {names}{more}"


def not_a_table(rows: object) -> str:
    what = type(rows).__name__
    hint = ""
    if type(rows).__module__.split(".", 1)[0] in ("pyarrow", "datasets", "pandas"):
        # A RecordBatchReader, an IterableDataset, a Series...: read once, or not a table.
        hint = (
            ": a run reads its rows twice (check, then send), so it needs the whole table, "
            "not a one-shot reader or a stream"
        )
    return (
        f"`rows` must be a file or folder path, a pyarrow.Table, a datasets.Dataset or a "
        f"pandas.DataFrame; got a {what}{hint}"
    )
