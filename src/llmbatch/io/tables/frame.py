"""A pandas `DataFrame` given from Python as rows. See `llmbatch.io.tables`.

    for n, row in FrameTable(df, 4096).rows(["id", "title"]): ...

Read in slices of `batch_rows` rows (`DataFrame.to_dict("records")` of each, which gives
Python values), so no second copy of the whole frame is made. pandas marks a missing value as
NaN, `NA` or `NaT` depending on the column's type; each is a null here, as in every table
(a template field holding one is missing). pyarrow is not needed.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import orjson

from . import BadRow

__all__ = ["FrameTable"]


class FrameTable:
    name = "the DataFrame"

    def __init__(self, frame: Any, batch_rows: int) -> None:
        self.frame = frame
        self.batch_rows = batch_rows

    def columns(self) -> list[str]:
        return [str(c) for c in self.frame.columns]

    def arrow_types(self) -> dict[str, Any]:
        return {}  # pandas' dtypes say too little (object columns); the writer infers

    def rows(
        self, columns: Sequence[str] | None = None, *, raw: bool = False
    ) -> Iterator[tuple[int, dict[str, Any] | BadRow]]:
        import pandas as pd

        names = self.columns()
        wanted = set(names if columns is None else columns)
        # Positions, not labels: a slice of the wanted columns is copied per batch, never
        # the whole frame (and duplicate or non-text labels cannot confuse the lookup).
        positions = [i for i, name in enumerate(names) if name in wanted]
        keys = [names[i] for i in positions]
        missing = _Missing(pd.NA, pd.NaT)
        n = 1
        for offset in range(0, len(self.frame), self.batch_rows):
            part = self.frame.iloc[offset : offset + self.batch_rows, positions]
            for values in part.itertuples(index=False, name=None):
                record = dict(zip(keys, values, strict=True))
                for key, value in record.items():
                    if value is None or isinstance(value, str | int):
                        continue
                    if value in missing or (isinstance(value, float) and math.isnan(value)):
                        record[key] = None
                    elif hasattr(value, "tolist") and not isinstance(value, float):
                        # a numpy array (or scalar) in a cell: Python values
                        value = record[key] = value.tolist()
                        if not raw and isinstance(value, list):
                            record[key] = orjson.dumps(value, default=str).decode()
                    elif not raw and isinstance(value, list | dict | tuple):
                        record[key] = orjson.dumps(value, default=str).decode()
                yield n, record
                n += 1


class _Missing:
    """pandas' NA and NaT, tested by identity (`==` on NA gives NA, whose truth is an error)."""

    __slots__ = ("marks",)

    def __init__(self, *marks: object) -> None:
        self.marks = marks

    def __contains__(self, value: object) -> bool:
        return any(value is mark for mark in self.marks)
