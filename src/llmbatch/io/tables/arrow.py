"""Tables pyarrow reads: Parquet (a file, or a folder of files), Arrow IPC / Feather, and a
`pyarrow.Table` in memory. See `llmbatch.io.tables`.

    for n, row in ParquetTable(Path("docs/"), 4096).rows(["id", "text"]): ...

A folder of Parquet files is read file by file in path order (files whose name starts with
"_" or "." are not data: Spark's `_SUCCESS`, `_metadata`, `.crc`), and Hive-style folder
names (`lang=en/part-0.parquet`) add their key as a text column, as `pyarrow.dataset` and
Spark read them. Row numbers run on across the files.

Files are read through plain reads, not memory maps: a mapped file's pages count in the
process's resident memory as they are touched, so a 10 GB file read to the end would look like
(and, under a container's memory limit, be charged as) 10 GB.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson

from . import BadRow, TableError

__all__ = ["IpcTable", "MemoryTable", "ParquetTable", "rows_of_batches"]


def _pyarrow() -> Any:
    try:
        import pyarrow as pa
    except ImportError:
        raise TableError(
            "reading Parquet or Arrow files needs pyarrow: pip install 'llmbatch[parquet]'"
        ) from None
    return pa


def rows_of_batches(
    batches: Iterable[Any], batch_rows: int, start: int = 1, *, raw: bool = False
) -> Iterator[tuple[int, dict[str, Any] | BadRow]]:
    """(row number, row) for every row of pyarrow record batches (or tables), `batch_rows` at a
    time, numbered from `start`; `raw`: nested and binary values left as they are."""
    import pyarrow as pa

    n = start
    for whole in batches:
        for offset in range(0, whole.num_rows, batch_rows):
            batch = whole.slice(offset, batch_rows)
            names = batch.schema.names
            columns: list[list[Any]] = []
            binary: list[int] = []
            for i, field in enumerate(batch.schema):
                values = batch.column(i).to_pylist()
                kind = field.type
                if pa.types.is_dictionary(kind):
                    kind = kind.value_type
                if raw:
                    pass
                elif pa.types.is_nested(kind):
                    values = [None if v is None else _json(v) for v in values]
                elif _is_binary(pa, kind):
                    binary.append(i)
                columns.append(values)
            for values in zip(*columns, strict=True) if columns else ([()] * batch.num_rows):
                row = dict(zip(names, values, strict=True))
                bad = _decode_binary(row, names, binary) if binary else None
                yield n, bad if bad is not None else row
                n += 1


def _json(value: Any) -> str:
    return orjson.dumps(value, default=str).decode()


def _is_binary(pa: Any, kind: Any) -> bool:
    return bool(
        pa.types.is_binary(kind)
        or pa.types.is_large_binary(kind)
        or pa.types.is_fixed_size_binary(kind)
        or getattr(pa.types, "is_binary_view", lambda _: False)(kind)
    )


def _decode_binary(row: dict[str, Any], names: list[str], binary: list[int]) -> BadRow | None:
    """Binary values as text, in place; a value that is not UTF-8 makes the row bad."""
    for i in binary:
        name = names[i]
        value = row[name]
        if value is None:
            continue
        try:
            row[name] = value.decode("utf-8")
        except UnicodeDecodeError as exc:
            return BadRow(f"field {name!r} holds bytes that are not UTF-8 (byte {exc.start})", name)
    return None


def _wanted(schema_names: Sequence[str], columns: Sequence[str] | None) -> list[str]:
    if columns is None:
        return list(schema_names)
    present = set(schema_names)
    return [c for c in dict.fromkeys(columns) if c in present]


class ParquetTable:
    """A Parquet file, or a folder of them."""

    def __init__(self, path: Path, batch_rows: int) -> None:
        self.pq = _parquet()
        self.path = path
        self.name = str(path)
        self.batch_rows = batch_rows
        self.files = _parquet_files(path) if path.is_dir() else [(path, {})]
        if not self.files:
            raise TableError(
                f"{path} is a folder with no Parquet files (*.parquet, *.pq) and no Hugging "
                "Face dataset (state.json) in it"
            )
        self._schema_names = self._names(self.files[0][0])

    def _open(self, path: Path) -> Any:
        try:
            # Column chunks are read in pieces through a buffer, not whole: a row group of a
            # million long texts would otherwise sit in memory at once.
            return self.pq.ParquetFile(str(path), buffer_size=1 << 20, pre_buffer=False)
        except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
            raise TableError(f"{path} cannot be read as Parquet: {exc}") from None

    def _names(self, path: Path) -> list[str]:
        return list(self._open(path).schema_arrow.names)

    def columns(self) -> list[str]:
        keys = [k for k in self.files[0][1] if k not in self._schema_names]
        return [*self._schema_names, *keys]

    def arrow_types(self) -> dict[str, Any]:
        schema = self._open(self.files[0][0]).schema_arrow
        return {field.name: field.type for field in schema}

    def rows(
        self, columns: Sequence[str] | None = None, *, raw: bool = False
    ) -> Iterator[tuple[int, dict[str, Any] | BadRow]]:
        start = 1
        for path, keys in self.files:
            reader = self._open(path)
            names = _wanted(reader.schema_arrow.names, columns)
            extra = {k: v for k, v in keys.items() if columns is None or k in columns}
            try:
                batches = reader.iter_batches(batch_size=self.batch_rows, columns=names)
                for n, row in rows_of_batches(batches, self.batch_rows, start, raw=raw):
                    if extra and not isinstance(row, BadRow):
                        for key, value in extra.items():
                            row.setdefault(key, value)
                    yield n, row
                    start = n + 1
            except (OSError, ValueError) as exc:
                raise TableError(f"{path}: cannot be read as Parquet: {exc}") from None
            finally:
                reader.close()


def _parquet() -> Any:
    _pyarrow()
    import pyarrow.parquet as pq

    return pq


def _parquet_files(root: Path) -> list[tuple[Path, dict[str, str]]]:
    """The data files under `root`, in path order, with their Hive partition keys."""
    found: list[tuple[Path, dict[str, str]]] = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith(("_", ".")))
        for name in files:
            if name.startswith(("_", ".")) or not name.lower().endswith((".parquet", ".pq")):
                continue
            path = Path(folder) / name
            keys = {}
            for part in path.relative_to(root).parts[:-1]:
                key, sep, value = part.partition("=")
                if sep and key:
                    keys[key] = value
            found.append((path, keys))
    return sorted(found, key=lambda item: item[0].relative_to(root).parts)


class IpcTable:
    """An Arrow IPC file (Feather v2) or stream, or several read one after the other (the
    files of a saved Hugging Face dataset). Only the wanted columns' buffers are read
    (`IpcReadOptions.included_fields`), one record batch at a time."""

    def __init__(self, path: Path, batch_rows: int, parts: Sequence[Path] | None = None) -> None:
        self.pa = _pyarrow()
        self.path = path
        self.name = str(path)
        self.batch_rows = batch_rows
        self.parts = list(parts) if parts is not None else [path]
        with self._reader(self.parts[0], None) as (schema, _):
            self._schema_names = list(schema.names)
            self._types = {field.name: field.type for field in schema}

    @contextlib.contextmanager
    def _reader(
        self, path: Path, columns: Sequence[str] | None
    ) -> Iterator[tuple[Any, Iterator[Any]]]:
        pa = self.pa
        source = pa.OSFile(str(path))
        try:
            try:
                schema = pa.ipc.open_file(source).schema
                stream = False
            except pa.ArrowInvalid:
                source.seek(0)
                try:
                    schema = pa.ipc.open_stream(source).schema
                except pa.ArrowInvalid as exc:
                    raise TableError(
                        f"{path} cannot be read as Arrow IPC ({exc}); a Feather v1 file must "
                        "be written again as v2 (pyarrow.feather.write_feather)"
                    ) from None
                stream = True
            source.seek(0)
            options = None
            if columns is not None:
                wanted = set(columns)
                included = [i for i, name in enumerate(schema.names) if name in wanted]
                options = pa.ipc.IpcReadOptions(included_fields=included)
            if stream:
                yield schema, iter(pa.ipc.open_stream(source, options=options))
            else:
                reader = pa.ipc.open_file(source, options=options)
                count = reader.num_record_batches
                yield schema, (reader.get_batch(i) for i in range(count))
        finally:
            source.close()

    def columns(self) -> list[str]:
        return list(self._schema_names)

    def arrow_types(self) -> dict[str, Any]:
        return dict(self._types)

    def rows(
        self, columns: Sequence[str] | None = None, *, raw: bool = False
    ) -> Iterator[tuple[int, dict[str, Any] | BadRow]]:
        start = 1
        for path in self.parts:
            try:
                with self._reader(path, columns) as (_, batches):
                    for n, row in rows_of_batches(batches, self.batch_rows, start, raw=raw):
                        yield n, row
                        start = n + 1
            except TableError:
                raise
            except (OSError, ValueError) as exc:
                raise TableError(f"{path}: cannot be read as Arrow IPC: {exc}") from None


class MemoryTable:
    """A `pyarrow.Table` given from Python."""

    name = "the pyarrow Table"

    def __init__(self, table: Any, batch_rows: int) -> None:
        self.table = table
        self.batch_rows = batch_rows

    def columns(self) -> list[str]:
        return list(self.table.schema.names)

    def arrow_types(self) -> dict[str, Any]:
        return {field.name: field.type for field in self.table.schema}

    def rows(
        self, columns: Sequence[str] | None = None, *, raw: bool = False
    ) -> Iterator[tuple[int, dict[str, Any] | BadRow]]:
        table = self.table.select(_wanted(self.table.schema.names, columns))
        batches = table.to_batches(max_chunksize=self.batch_rows)
        yield from rows_of_batches(batches, self.batch_rows, raw=raw)
