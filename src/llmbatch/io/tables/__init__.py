"""Rows in columnar formats, read a record batch at a time: Parquet (a file or a directory of
files), Arrow IPC / Feather, a Hugging Face dataset saved to disk, a DuckDB query over local
files (`duckdb:SELECT ...`), and, from Python, a `pyarrow.Table`, a `datasets.Dataset` or a
pandas `DataFrame`.

    table = open_table("papers.parquet")         # or a directory, an .arrow file, a DataFrame
    table.columns()                              # ['doi', 'title', 'abstract']
    for n, row in table.rows(["doi", "title"]):  # row numbers from 1; dicts of Python values
        ...

Every table is read again from the start on each `rows()` call (a run reads its input twice:
to check it, then to send it; `llmbatch export` reads it once more), and only the columns asked
for are decoded, `DEFAULT_BATCH_ROWS` rows at a time, so memory holds one batch whatever the
size of the table (`bench/sources_scale.py` measures it). pyarrow (`llmbatch[parquet]`),
`datasets` (`llmbatch[datasets]`) and pandas are imported only when such an input is used.
Nothing is ever downloaded: a Hugging Face dataset is read from the folder
`Dataset.save_to_disk` wrote.

Values come as Python values (`None` for nulls; pandas' NaN, NA and NaT are nulls too); lists
and structs as JSON text, so a template shows `["a", "b"]`, not Python's repr; a binary value
that is not UTF-8 text spoils its own row only (`BadRow`).
"""

from __future__ import annotations

import codecs
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

__all__ = [
    "DEFAULT_BATCH_ROWS",
    "DUCKDB_PREFIX",
    "BadRow",
    "Table",
    "TableError",
    "is_table",
    "is_table_path",
    "open_table",
    "table_kind",
]

# Rows decoded at once: big enough that pyarrow's per-batch cost vanishes, small enough that a
# batch of long documents stays a few MB.
DEFAULT_BATCH_ROWS = 4096
DUCKDB_PREFIX = "duckdb:"  # `--rows "duckdb:SELECT ..."`: a query over local files


class TableError(OSError):
    """A table that cannot be read (not the format its name says, corrupt, a missing extra).

    An `OSError`, as for any input file that cannot be read: the run names the input and stops
    before anything is sent."""


class BadRow:
    """A row that cannot be used, with the reason (`message`) and the column at fault."""

    __slots__ = ("column", "message")

    def __init__(self, message: str, column: str | None = None) -> None:
        self.message = message
        self.column = column


class Table(Protocol):
    """A table of rows read in record batches."""

    name: str  # how messages name it: the path, or "the DataFrame"

    def columns(self) -> list[str]:
        """The column names, in the table's order (read from the schema only)."""
        ...

    def rows(
        self, columns: Sequence[str] | None = None, *, raw: bool = False
    ) -> Iterator[tuple[int, dict[str, Any] | BadRow]]:
        """(row number from 1, row) for every row, only `columns` (None: all) in each.
        `raw`: values as they are (lists, structs, bytes), for tables written back out."""
        ...

    def arrow_types(self) -> dict[str, Any]:
        """The pyarrow type of each column, where the table has them (not a DataFrame)."""
        ...


_PARQUET_SUFFIXES = (".parquet", ".pq", ".parq")
_IPC_SUFFIXES = (".arrow", ".feather", ".ipc", ".arrows")


def table_kind(path: str | Path) -> str | None:
    """The kind of table at `path`: parquet, ipc, dataset (a Hugging Face dataset folder),
    parquet-dir, duckdb (a `duckdb:SELECT ...` query), or None for a file that is not a
    table (CSV, JSONL). The bytes decide over the name: a Parquet file starts with PAR1, an
    Arrow IPC file with ARROW1."""
    if isinstance(path, str) and path.startswith(DUCKDB_PREFIX):
        return "duckdb"
    path = Path(path)
    if path.is_dir():
        if (path / "state.json").is_file() or (path / "dataset_dict.json").is_file():
            return "dataset"
        return "parquet-dir"
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError:
        head = b""
    if head.startswith(b"PAR1"):
        return "parquet"
    if head.startswith(b"ARROW1") or head.startswith(b"\xff\xff\xff\xff"):
        return "ipc"  # a file, or the stream format (continuation marker first)
    if head.startswith(codecs.BOM_UTF8) or path.suffix.lower() in (".csv", ".jsonl", ".json"):
        return None
    suffix = path.suffix.lower()
    if suffix in _PARQUET_SUFFIXES:
        return "parquet"
    if suffix in _IPC_SUFFIXES:
        return "ipc"
    return None


def is_table_path(path: str | Path) -> bool:
    """True for a path `open_table` reads (a table file or a folder), False for CSV/JSONL."""
    return table_kind(path) is not None


def is_table(value: object) -> bool:
    """True for an in-memory table `open_table` takes: a pyarrow Table, a datasets Dataset,
    a pandas DataFrame (or a subclass). No import: an object of a library not imported cannot
    be one."""
    return _memory_table(value) is not None


def open_table(source: object, *, batch_rows: int = DEFAULT_BATCH_ROWS) -> Table:
    """The table at a path (or folder) or in memory; `TableError` if it cannot be read."""
    if isinstance(source, str | Path):
        kind = table_kind(source)
        if kind in ("parquet", "parquet-dir"):
            from .arrow import ParquetTable

            return ParquetTable(Path(source), batch_rows)
        if kind == "ipc":
            from .arrow import IpcTable

            return IpcTable(Path(source), batch_rows)
        if kind == "dataset":
            from .hf import DiskDataset

            return DiskDataset(Path(source), batch_rows)
        if kind == "duckdb":
            from .duck import DuckTable

            return DuckTable(str(source)[len(DUCKDB_PREFIX) :], batch_rows)
        raise TableError(f"{source} is not a Parquet, Arrow IPC or Hugging Face dataset")
    table = _memory_table(source, batch_rows)
    if table is None:
        raise TableError(
            f"cannot read rows from a {type(source).__name__}: give a path, a pyarrow.Table, "
            "a datasets.Dataset or a pandas.DataFrame"
        )
    return table


def _memory_table(value: object, batch_rows: int = DEFAULT_BATCH_ROWS) -> Table | None:
    import sys

    pa = sys.modules.get("pyarrow")
    if pa is not None and isinstance(value, pa.Table):
        from .arrow import MemoryTable

        return MemoryTable(value, batch_rows)
    hf = sys.modules.get("datasets")
    if hf is not None and isinstance(value, hf.Dataset):
        from .hf import MemoryDataset

        return MemoryDataset(value, batch_rows)
    pd = sys.modules.get("pandas")
    if pd is not None and isinstance(value, pd.DataFrame):
        from .frame import FrameTable

        return FrameTable(value, batch_rows)
    return None
