"""Hugging Face datasets: a folder written by `Dataset.save_to_disk`, or a `datasets.Dataset`
given from Python. See `llmbatch.io.tables`.

    for n, row in DiskDataset(Path("papers_ds"), 4096).rows(["id", "title"]): ...

Read with `datasets.load_from_disk`, which memory-maps the dataset's Arrow files and never
touches the network (`pip install 'llmbatch[datasets]'`). Rows come in the dataset's order,
after any `select`/`shuffle`/`filter` it was saved with. A folder holding a `DatasetDict`
(several splits) is refused with the splits' folders named: a run reads one table.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from . import BadRow, TableError
from .arrow import rows_of_batches

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

    def rows(
        self, columns: Sequence[str] | None = None
    ) -> Iterator[tuple[int, dict[str, Any] | BadRow]]:
        dataset = self.dataset
        if columns is not None:
            present = set(dataset.column_names)
            dataset = dataset.select_columns([c for c in dict.fromkeys(columns) if c in present])
        # The Arrow format yields pyarrow tables: no per-row Python conversion by datasets,
        # and the same value rules as every other table.
        batches = dataset.with_format("arrow").iter(batch_size=self.batch_rows)
        yield from rows_of_batches(batches, self.batch_rows)


class DiskDataset(MemoryDataset):
    """A folder written by `Dataset.save_to_disk`."""

    def __init__(self, path: Path, batch_rows: int) -> None:
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
        datasets = _datasets()
        try:
            dataset = datasets.load_from_disk(str(path), keep_in_memory=False)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # FileNotFoundError for a folder missing its files, ValueError/KeyError for a
            # state.json that is not one, pyarrow's errors (ValueError, OSError) for bad data.
            raise TableError(f"{path} cannot be read as a Hugging Face dataset: {exc}") from None
        super().__init__(dataset, batch_rows)
        self.name = str(path)
