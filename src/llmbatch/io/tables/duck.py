"""Rows from a DuckDB query over local files: `--rows "duckdb:SELECT ... FROM 'docs/*.parquet'"`.

    table = DuckTable("SELECT id, title FROM 'papers.parquet' WHERE lang = 'en'", 4096)

The query runs in a fresh in-memory DuckDB for each pass over the rows (a run reads its rows
twice) and its result streams as Arrow record batches (`pip install 'llmbatch[duckdb]'`).
Only the columns the template and the id need are selected from it, so DuckDB reads no
others. DuckDB keeps the order of what it scans; a query that joins or groups has no order
unless it says `ORDER BY`, and `llmbatch export` follows the order the query gives.

Nothing is downloaded: installing DuckDB extensions on demand (`httpfs` for an https:// path)
is turned off; extensions already installed still load.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from . import DUCKDB_PREFIX as PREFIX
from . import BadRow, TableError
from .arrow import rows_of_batches

__all__ = ["DuckTable"]

_CONFIG = {"autoinstall_known_extensions": False}


def _duckdb() -> Any:
    try:
        import duckdb
    except ImportError:
        raise TableError("a duckdb: query needs DuckDB: pip install 'llmbatch[duckdb]'") from None
    return duckdb


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class DuckTable:
    def __init__(self, query: str, batch_rows: int) -> None:
        self.duckdb = _duckdb()
        self.query = query.strip().rstrip(";")
        self.batch_rows = batch_rows
        shown = " ".join(self.query.split())
        self.name = PREFIX + (shown if len(shown) <= 80 else shown[:77] + "...")
        if not self.query:
            raise TableError(f"{PREFIX} needs a query: {PREFIX}SELECT ... FROM 'file.parquet'")
        with self._connect() as con:
            relation = self._relation(con, self.query)
            self._columns = list(relation.columns)

    def _connect(self) -> Any:
        return self.duckdb.connect(":memory:", config=_CONFIG)

    def _relation(self, con: Any, query: str) -> Any:
        try:
            relation = con.sql(query)
        except self.duckdb.Error as exc:
            raise TableError(f"the DuckDB query cannot be run: {exc}") from None
        if relation is None:  # a statement that returns no rows (CREATE, SET ...)
            raise TableError(f"{self.name} returns no rows: give a SELECT")
        return relation

    def columns(self) -> list[str]:
        return list(self._columns)

    def arrow_types(self) -> dict[str, Any]:
        return {}  # known once the batches come; the writer infers

    def rows(
        self, columns: Sequence[str] | None = None, *, raw: bool = False
    ) -> Iterator[tuple[int, dict[str, Any] | BadRow]]:
        query = self.query
        if columns is not None:
            present = set(self._columns)
            wanted = [c for c in dict.fromkeys(columns) if c in present]
            selected = ", ".join(_quoted(c) for c in wanted) or "NULL AS _"
            query = f"SELECT {selected} FROM ({self.query})"
        with self._connect() as con:
            relation = self._relation(con, query)
            try:
                reader = relation.fetch_record_batch(self.batch_rows)
                yield from rows_of_batches(reader, self.batch_rows, raw=raw)
            except self.duckdb.Error as exc:
                raise TableError(f"{self.name}: {exc}") from None
