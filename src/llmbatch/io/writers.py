"""Table writers for `llmbatch export`: JSONL, CSV, Parquet and Arrow IPC, streamed, replaced
atomically.

    with open_writer("out.parquet", columns, kinds) as writer:   # format from the extension
        for row in rows:
            writer.write(row)             # a dict; absent columns are empty

Each writer writes to `FILE.tmp` and renames it over FILE only when it closes without an
error, so an interrupted export never leaves a half file under the real name. Parquet needs
pyarrow (`pip install 'llmbatch[parquet]'`); rows are buffered and written a row group at a
time (`row_group_size`), so memory is bounded by one group. Column types come from the values
seen in the first pass (`ColumnKinds`): a column of only booleans, integers or numbers is
typed so, anything else (text, mixed, objects, arrays) is a string (JSON text for objects and
arrays); input columns are strings, except those whose pyarrow type the input table gives
(`types`: a Parquet, Arrow or dataset input joined to the results keeps its column types).
Arrow IPC (`.arrow`, `.feather`: Feather v2) is written the same way as Parquet, a batch at a
time.
"""

from __future__ import annotations

import base64
import csv
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import orjson

__all__ = ["FORMATS", "Format", "TableWriter", "format_of", "open_writer"]

Format = Literal["jsonl", "csv", "parquet", "arrow"]
FORMATS: tuple[Format, ...] = ("jsonl", "csv", "parquet", "arrow")
DEFAULT_ROW_GROUP = 50_000


def format_of(path: str | Path) -> Format | None:
    """The format a file name implies (.jsonl/.json/.ndjson, .csv, .parquet/.pq,
    .arrow/.feather/.ipc), or None."""
    suffix = Path(path).suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if suffix == ".csv":
        return "csv"
    if suffix in (".parquet", ".pq"):
        return "parquet"
    if suffix in (".arrow", ".feather", ".ipc"):
        return "arrow"
    return None


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, list | dict | tuple):
        return orjson.dumps(value, default=_jsonable).decode()
    if isinstance(value, bytes):
        return _jsonable(value)
    return value.isoformat() if hasattr(value, "isoformat") else str(value)  # dates, Decimal


def _jsonable(value: Any) -> str:
    """What orjson cannot write itself (Decimal, bytes from a binary input column) as text;
    bytes that are not UTF-8 as base64, so nothing is lost."""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return base64.b64encode(value).decode()
    return str(value)


class TableWriter:
    """Base: a temp file renamed into place on a clean close."""

    def __init__(self, path: Path, columns: Sequence[str]) -> None:
        self.path = path
        self.tmp = path.with_name(path.name + ".tmp")
        self.columns = list(columns)
        self.rows = 0

    def write(self, row: Mapping[str, Any]) -> None:
        raise NotImplementedError

    def _finish(self) -> None:
        raise NotImplementedError

    def _discard(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self._finish()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        try:
            self._discard()
        finally:
            self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> TableWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class _Jsonl(TableWriter):
    def __init__(self, path: Path, columns: Sequence[str]) -> None:
        super().__init__(path, columns)
        self.f = open(self.tmp, "wb")  # noqa: SIM115 (closed in _finish / _discard)

    def write(self, row: Mapping[str, Any]) -> None:
        record = {name: row.get(name) for name in self.columns}
        self.f.write(orjson.dumps(record, default=_jsonable) + b"\n")
        self.rows += 1

    def _finish(self) -> None:
        self.f.close()

    def _discard(self) -> None:
        self.f.close()


class _Csv(TableWriter):
    def __init__(self, path: Path, columns: Sequence[str]) -> None:
        super().__init__(path, columns)
        self.f = open(self.tmp, "w", newline="", encoding="utf-8")  # noqa: SIM115
        self.writer = csv.writer(self.f)
        self.writer.writerow(self.columns)

    def write(self, row: Mapping[str, Any]) -> None:
        self.writer.writerow([_text(row.get(name)) for name in self.columns])
        self.rows += 1

    def _finish(self) -> None:
        self.f.close()

    def _discard(self) -> None:
        self.f.close()


class _Parquet(TableWriter):
    def __init__(
        self,
        path: Path,
        columns: Sequence[str],
        kinds: Mapping[str, set[str]],
        row_group_size: int,
        given: Mapping[str, Any] | None = None,
        *,
        arrow: bool = False,
    ) -> None:
        import pyarrow as pa

        super().__init__(path, columns)
        self.pa = pa
        types = {"bool": pa.bool_(), "int": pa.int64(), "float": pa.float64()}
        given = given or {}
        fields, self.kinds = [], []
        for name in self.columns:
            if name in given:  # the input table's own type: values go in as they are
                self.kinds.append("given")
                fields.append(pa.field(name, given[name]))
                continue
            seen = kinds.get(name, {"str"})
            if seen <= {"int", "float"} and "float" in seen:
                kind = "float"
            elif len(seen) == 1 and next(iter(seen)) in types:
                kind = next(iter(seen))
            else:
                kind = "str"
            self.kinds.append(kind)
            fields.append(pa.field(name, types.get(kind, pa.string())))
        self.schema = pa.schema(fields)
        if arrow:
            self.writer = pa.ipc.new_file(str(self.tmp), self.schema)
        else:
            import pyarrow.parquet as pq

            self.writer = pq.ParquetWriter(str(self.tmp), self.schema)
        self.group = row_group_size
        self.buffer: list[list[Any]] = [[] for _ in self.columns]

    def write(self, row: Mapping[str, Any]) -> None:
        for name, kind, column in zip(self.columns, self.kinds, self.buffer, strict=True):
            value = row.get(name)
            if value is not None:
                if kind == "str":
                    value = _text(value)
                elif kind == "float":
                    value = float(value)
            column.append(value)
        self.rows += 1
        if len(self.buffer[0]) >= self.group:
            self._flush()

    def _flush(self) -> None:
        if not self.buffer or not self.buffer[0]:
            return
        arrays = [
            self.pa.array(column, type=field.type)
            for column, field in zip(self.buffer, self.schema, strict=True)
        ]
        self.writer.write_table(self.pa.Table.from_arrays(arrays, schema=self.schema))
        self.buffer = [[] for _ in self.columns]

    def _finish(self) -> None:
        self._flush()
        self.writer.close()

    def _discard(self) -> None:
        self.writer.close()


def open_writer(
    path: str | Path,
    columns: Sequence[str],
    kinds: Mapping[str, set[str]] | None = None,
    *,
    fmt: Format | None = None,
    row_group_size: int = DEFAULT_ROW_GROUP,
    types: Mapping[str, Any] | None = None,
) -> TableWriter:
    """A writer for `path` in `fmt` (default: from the extension). Raises ValueError for an
    unknown format, ImportError (with the install hint) for Parquet or Arrow without pyarrow.
    `types`: pyarrow types of columns to keep (Parquet and Arrow only)."""
    path = Path(path)
    fmt = fmt or format_of(path)
    if fmt == "jsonl":
        return _Jsonl(path, columns)
    if fmt == "csv":
        return _Csv(path, columns)
    if fmt in ("parquet", "arrow"):
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise ImportError(
                f"{fmt.capitalize()} export needs pyarrow: pip install 'llmbatch[parquet]'"
            ) from None
        return _Parquet(path, columns, kinds or {}, row_group_size, types, arrow=fmt == "arrow")
    raise ValueError(
        f"cannot tell the format of {path}: name it .jsonl, .csv, .parquet or .arrow, or pass "
        "--format"
    )
