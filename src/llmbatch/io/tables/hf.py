"""Hugging Face datasets: a folder written by `Dataset.save_to_disk`, or a `datasets.Dataset`
given from Python. See `llmbatch.io.tables`.

    for n, row in DiskDataset(Path("papers_ds"), 4096).rows(["id", "title"]): ...

A folder is read as `datasets.load_from_disk` reads it, without the network: its
`state.json` lists the Arrow files, which are streamed in order a record batch at a time (see
`_data_files` for why not through the library's memory map); a folder this reading does not
understand is handed to `load_from_disk` itself (`pip install 'llmbatch[datasets]'`). Rows
come in the dataset's order, after any `select`/`shuffle`/`filter` it was saved with
(`save_to_disk` writes the rows in that order). A folder holding a `DatasetDict`
(several splits) is refused with the splits' folders named: a run reads one table.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from . import BadRow, Table, TableError
from .arrow import IpcTable, rows_of_batches

__all__ = ["DiskDataset", "MemoryDataset"]


def _datasets() -> Any:
    try:
        import datasets
    except ImportError:
        raise TableError(
            "reading a Hugging Face dataset needs the datasets package: "
            "pip install 'llmbatch[datasets]'"
        ) from None
    return datasets


class MemoryDataset:
    """A `datasets.Dataset` given from Python."""

    name = "the datasets.Dataset"

    def __init__(self, dataset: Any, batch_rows: int) -> None:
        self.dataset = dataset
        self.batch_rows = batch_rows

    def columns(self) -> list[str]:
        return list(self.dataset.column_names)

    def arrow_types(self) -> dict[str, Any]:
        return {field.name: field.type for field in self.dataset.data.schema}

    def rows(
        self, columns: Sequence[str] | None = None, *, raw: bool = False
    ) -> Iterator[tuple[int, dict[str, Any] | BadRow]]:
        dataset = self.dataset
        if columns is not None:
            present = set(dataset.column_names)
            dataset = dataset.select_columns([c for c in dict.fromkeys(columns) if c in present])
        # The Arrow format yields pyarrow tables: no per-row Python conversion by datasets,
        # and the same value rules as every other table.
        batches = dataset.with_format("arrow").iter(batch_size=self.batch_rows)
        yield from rows_of_batches(batches, self.batch_rows, raw=raw)


class DiskDataset:
    """A folder written by `Dataset.save_to_disk`."""

    def __init__(self, path: Path, batch_rows: int) -> None:
        self.name = str(path)
        splits = path / "dataset_dict.json"
        if splits.is_file():
            try:
                names = json.loads(splits.read_text())["splits"]
            except (OSError, ValueError, KeyError, TypeError):
                names = []
            shown = ", ".join(str(path / name) for name in names) or "one split's folder"
            raise TableError(
                f"{path} is a DatasetDict (splits: {', '.join(names) or '?'}); "
                f"give one split's folder: {shown}"
            )
        parts = _data_files(path)
        self.table: Table
        if parts:
            self.table = IpcTable(path, batch_rows, parts)
        else:
            self.table = MemoryDataset(_load(path), batch_rows)

    def columns(self) -> list[str]:
        return self.table.columns()

    def arrow_types(self) -> dict[str, Any]:
        return self.table.arrow_types()

    def rows(
        self, columns: Sequence[str] | None = None, *, raw: bool = False
    ) -> Iterator[tuple[int, dict[str, Any] | BadRow]]:
        return self.table.rows(columns, raw=raw)


def _data_files(path: Path) -> list[Path] | None:
    """The dataset's Arrow files in order, as its state.json lists them; None when the
    library must read it (an indices mapping kept beside the data, a state not understood).

    Read directly, the files stream one record batch at a time in bounded memory;
    `load_from_disk` maps them, and every page read stays in the process's resident memory
    (a 10 GB dataset read to the end looked like 10 GB)."""
    try:
        state = json.loads((path / "state.json").read_text())
        files = [path / entry["filename"] for entry in state["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if state.get("_indices_data_files") or not files or not all(f.is_file() for f in files):
        return None
    return files


def _load(path: Path) -> Any:
    datasets = _datasets()
    try:
        return datasets.load_from_disk(str(path), keep_in_memory=False)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        # FileNotFoundError for a folder missing its files, ValueError/KeyError for a
        # state.json that is not one, pyarrow's errors (ValueError, OSError) for bad data.
        raise TableError(f"{path} cannot be read as a Hugging Face dataset: {exc}") from None
