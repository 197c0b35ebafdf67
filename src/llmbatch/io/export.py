"""Results back in input order, next to the input's columns, in bounded memory.

    index = OutputIndex.build("results.jsonl")              # one pass: offsets, columns
    rows = ordered_records(index, ids_of_rows("papers.csv", "id"), Shape(join=True))
    for record in rows: ...                                  # dicts, in the input's order

The output file (the journal) is in completion order. Exporting walks the *input* in its
order and, for each id, seeks to that id's result line and reads it, so memory holds an index,
not the results: one 64-bit word per result line (a 24-bit hash of the id and the line's
40-bit byte offset), sorted, plus one byte per line marking it exported. A 1,000,000-line
output needs about 9 MB of index (see bench/export_scale.py). Hash collisions cost an extra
read, never a wrong row: the line read is checked to carry the id. When an id has several
lines (a failed one redone, the file not compacted yet) the newest wins, as on resume.

The first pass also decodes each line's `llmbatch.parsed` to learn the columns (nested objects
flattened to `prefix + "a.b"`, arrays kept whole) and their types, so CSV and Parquet writers
know their header and schema before the first row. Results whose id is not in the input come
last, in file order; input ids without a result come as `status: "missing"` rows.
"""

from __future__ import annotations

import bisect
import csv
import glob
import heapq
import itertools
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal

import orjson

from ..responses_api import is_response, output_text, refusal_of
from .formats import MAX_FIELD_CHARS, bom_encoding, jsonl_rows, strict_csv
from .line import ResultLine
from .tables import BadRow, Table, is_table, is_table_path, open_table

__all__ = [
    "ColumnClash",
    "ColumnKinds",
    "ExportCounts",
    "FailedRows",
    "OutputIndex",
    "RowProblems",
    "RowsEncodingError",
    "Shape",
    "ids_of_files",
    "ids_of_input",
    "ids_of_rows",
    "ordered_records",
    "reply_text",
    "row_columns",
    "table_of",
]

FailedRows = Literal["include", "skip", "only"]
_HASH_BITS = 24
_OFFSET_BITS = 40
_OFFSET_MASK = (1 << _OFFSET_BITS) - 1
MAX_COLUMNS = 4096


def _key(rid: str) -> int:
    # Python's str hash is salted per process; the index lives and dies in this one.
    return hash(rid) & ((1 << _HASH_BITS) - 1)


class ColumnKinds:
    """The columns seen, in first-seen order, and the kinds of value each held."""

    def __init__(self) -> None:
        self.kinds: dict[str, set[str]] = {}

    def add(self, name: str, value: Any) -> None:
        kinds = self.kinds.get(name)
        if kinds is None:
            if len(self.kinds) >= MAX_COLUMNS:
                raise ValueError(
                    f"more than {MAX_COLUMNS} distinct columns; export as JSONL instead"
                )
            kinds = self.kinds[name] = set()
        if value is not None:
            kinds.add(_kind(value))

    def names(self) -> list[str]:
        return list(self.kinds)


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "str"
    return "json"


class ColumnClash(ValueError):
    """Two fields of one parsed reply flatten to the same column (`column`): a key holding a
    dot, `{"a.b": 1}`, and a nested key, `{"a": {"b": 2}}`. One value would be lost, so the
    export stops, naming the column and the result (`custom_id`) where it was seen."""

    def __init__(self, column: str, custom_id: str = "") -> None:
        self.column, self.custom_id = column, custom_id
        of = f" of {custom_id!r}" if custom_id else ""
        super().__init__(
            f"the parsed reply{of} has two fields that both flatten to column {column!r} "
            "(a key with a dot in it, and a key inside a nested object); a table cannot "
            "hold both, so nothing was exported"
        )


def flatten(value: Any, prefix: str, into: dict[str, Any]) -> dict[str, Any]:
    """`value`'s fields as flat columns: nested objects joined with ".", arrays kept whole;
    a value that is not an object is one column, `prefix + "value"`. Two fields that would
    share a column raise `ColumnClash` (never one value silently replacing the other)."""
    if not isinstance(value, dict):
        into[prefix + "value"] = value
        return into
    _flatten(value, prefix, into, set())
    return into


def _flatten(value: dict[str, Any], prefix: str, into: dict[str, Any], made: set[str]) -> None:
    for key, item in value.items():
        name = prefix + str(key)
        if isinstance(item, dict) and item:
            _flatten(item, name + ".", into, made)
            continue
        if name in made:
            raise ColumnClash(name)
        made.add(name)
        into[name] = item


def reply_text(line: ResultLine) -> str | None:
    """The reply's text from a result line's provider body (OpenAI chat or Responses,
    Anthropic or Gemini)."""
    body = line.body
    if not isinstance(body, dict):
        return body if isinstance(body, str) else None
    if is_response(body):  # OpenAI Responses: the message items' output_text, or a refusal
        return output_text(body) or refusal_of(body) or ""
    choices = body.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        choice = choices[0]
        message = choice.get("message")
        if isinstance(message, dict):
            content = message.get("content")
            return content if isinstance(content, str) else message.get("refusal")
        text = choice.get("text")
        return text if isinstance(text, str) else None
    candidates = body.get("candidates")  # Gemini: the first candidate's text parts
    if isinstance(candidates, list) and candidates and isinstance(candidates[0], dict):
        content = candidates[0].get("content")
        parts = content.get("parts") if isinstance(content, dict) else None
        return "".join(
            p["text"]
            for p in (parts if isinstance(parts, list) else ())
            if isinstance(p, dict) and isinstance(p.get("text"), str) and not p.get("thought")
        )
    blocks = body.get("content")
    if isinstance(blocks, list):
        parts = []
        for block in blocks:
            if not isinstance(block, dict):
                continue
            if block.get("type") == "tool_use":
                return orjson.dumps(block.get("input")).decode()
            if isinstance(block.get("text"), str):
                parts.append(block["text"])
        return "".join(parts)
    content = body.get("content")
    return content if isinstance(content, str) else None


class _SortedWords:
    """64-bit words added in any order, given back as one sorted `array`, holding at most
    `RUN` of them as Python ints at a time (a list of 10M ints is 400 MB; the array 80 MB):
    runs are sorted as they fill, then merged."""

    RUN = 1 << 20

    def __init__(self) -> None:
        self._runs: list[array[int]] = []
        self._open: list[int] = []

    def add(self, word: int) -> None:
        self._open.append(word)
        if len(self._open) >= self.RUN:
            self._close_run()

    def _close_run(self) -> None:
        self._open.sort()
        self._runs.append(array("Q", self._open))
        self._open.clear()

    def result(self) -> array[int]:
        if self._open or not self._runs:
            self._close_run()
        runs, self._runs = self._runs, []
        if len(runs) == 1:
            return runs[0]
        merged = array("Q")
        merged.extend(heapq.merge(*runs))
        return merged


@dataclass(slots=True)
class OutputIndex:
    """Where each result line of an output file starts, sorted by a hash of its id."""

    path: Path
    entries: array[int] = field(default_factory=lambda: array("Q"))
    columns: ColumnKinds = field(default_factory=ColumnKinds)
    lines: int = 0
    foreign_lines: int = 0
    unparsed: bool = False  # some line holds no parsed object: a reply column is needed
    prefix: str = ""

    @classmethod
    def build(cls, path: str | Path, *, prefix: str = "") -> OutputIndex:
        """One pass over `path`: offsets of result lines, parsed columns and their kinds."""
        index = cls(Path(path), prefix=prefix)
        words = _SortedWords()
        offset = 0
        with open(path, "rb") as f:
            for raw in f:
                start, offset = offset, offset + len(raw)
                if not raw.endswith(b"\n"):
                    break  # a torn tail is never data
                record = ResultLine.decode(raw)
                if record is None:
                    index.foreign_lines += 1
                    continue
                if start > _OFFSET_MASK:
                    raise ValueError(f"{path} is larger than 1 TiB; split it to export")
                words.add((_key(record.custom_id) << _OFFSET_BITS) | start)
                index.lines += 1
                parsed = record.parsed
                if parsed is None:
                    index.unparsed = True
                    continue
                try:
                    flat = flatten(parsed, prefix, {})
                except ColumnClash as exc:
                    raise ColumnClash(exc.column, record.custom_id) from None
                for name, value in flat.items():
                    index.columns.add(name, value)
        index.entries = words.result()
        return index

    def open(self) -> BinaryIO:
        return open(self.path, "rb")


class _Reader:
    """Finds and reads the newest result line of an id; marks lines exported."""

    def __init__(self, index: OutputIndex, f: BinaryIO) -> None:
        self.index = index
        self.f = f
        self.used = bytearray(len(index.entries))

    def read_at(self, position: int) -> ResultLine | None:
        self.f.seek(self.index.entries[position] & _OFFSET_MASK)
        return ResultLine.decode(self.f.readline())

    def find(self, rid: str) -> tuple[int, ResultLine] | None:
        """(position, line) of `rid`'s newest line; every line of `rid` is marked used."""
        entries = self.index.entries
        low = _key(rid) << _OFFSET_BITS
        first = bisect.bisect_left(entries, low)
        last = bisect.bisect_left(entries, low + (1 << _OFFSET_BITS))
        found: tuple[int, ResultLine] | None = None
        # Highest offset first: the newest line of the id wins.
        for position in range(last - 1, first - 1, -1):
            record = self.read_at(position)
            if record is None or record.custom_id != rid:
                continue
            if found is None:
                if self.used[position]:
                    return None  # a second input row with this id: exported once
                found = (position, record)
            self.used[position] = 1
        return found


@dataclass(slots=True, frozen=True)
class Shape:
    """What each exported record holds.

    `join`: the input row's columns come first and every output column is prefixed
    (`prefix`). `failed`: include failed (and missing) rows, skip them, or only them.
    """

    join: bool = False
    prefix: str = ""
    failed: FailedRows = "include"
    id_field: str = "id"  # with join: the input's id column, filled for results it lacks

    def fixed(self, index: OutputIndex) -> list[str]:
        p = self.prefix if self.join else ""
        names = [f"{p}status", f"{p}error_code", f"{p}error_message"]
        if index.unparsed:
            names.append(f"{p}reply")
        return names if self.join else ["id", *names]

    def columns(self, index: OutputIndex, input_columns: list[str]) -> list[str]:
        names = [*(input_columns if self.join else []), *self.fixed(index)]
        taken = set(names)
        for name in index.columns.names():
            if name in taken:
                raise ValueError(
                    f"column {name!r} of the parsed replies clashes with "
                    + ("an input column" if self.join else "a fixed column")
                    + "; pass --prefix to tell them apart"
                )
            names.append(name)
        return names


def _row(
    shape: Shape, index: OutputIndex, rid: str, record: ResultLine | None
) -> dict[str, Any] | None:
    if record is None:
        status, parsed = "missing", None
    else:
        status = "ok" if record.ok else "failed"
        parsed = record.parsed
    if shape.failed == "skip" and status != "ok":
        return None
    if shape.failed == "only" and status == "ok":
        return None
    p = shape.prefix if shape.join else ""
    row: dict[str, Any] = {} if shape.join else {"id": rid}
    row[f"{p}status"] = status
    failed = record if record is not None and not record.ok else None
    row[f"{p}error_code"] = failed.code if failed else None
    row[f"{p}error_message"] = failed.message if failed else None
    if index.unparsed:
        row[f"{p}reply"] = reply_text(record) if record is not None and parsed is None else None
    if parsed is not None:
        flatten(parsed, index.prefix, row)
    return row


@dataclass(slots=True)
class ExportCounts:
    rows: int = 0
    ok: int = 0
    failed: int = 0
    missing: int = 0
    not_in_input: int = 0
    duplicate_input_ids: int = 0


InputRows = Iterator[tuple[str, dict[str, Any]]]


def ordered_records(
    index: OutputIndex,
    inputs: InputRows | None,
    shape: Shape,
    counts: ExportCounts | None = None,
) -> Iterator[dict[str, Any]]:
    """Records in the order of `inputs` ((id, row) pairs; None: the output's own order),
    then the results whose id the input lacks, in file order."""
    counts = counts if counts is not None else ExportCounts()

    def emit(row: dict[str, Any] | None) -> Iterator[dict[str, Any]]:
        if row is None:
            return
        counts.rows += 1
        status = row.get(f"{shape.prefix if shape.join else ''}status")
        if status == "ok":
            counts.ok += 1
        elif status == "failed":
            counts.failed += 1
        else:
            counts.missing += 1
        yield row

    with index.open() as f:
        reader = _Reader(index, f)
        if inputs is not None:
            for rid, columns in inputs:
                found = reader.find(rid)
                if found is None and _seen(reader, rid):
                    counts.duplicate_input_ids += 1
                    continue
                row = _row(shape, index, rid, found[1] if found else None)
                if row is not None and shape.join:
                    row = {**columns, **row}
                yield from emit(row)
        # What the input did not name (everything, without an input), newest line per id,
        # in file order. Only their offsets are held: few after an input-ordered walk.
        entries, used = index.entries, reader.used
        rest = array(
            "Q", sorted(entries[i] & _OFFSET_MASK for i in range(len(used)) if not used[i])
        )
        for offset in rest:
            f.seek(offset)
            record = ResultLine.decode(f.readline())
            if record is None:
                continue
            rid = record.custom_id
            position = bisect.bisect_left(entries, (_key(rid) << _OFFSET_BITS) | offset)
            if used[position]:
                continue  # an older line of an id already exported
            found = reader.find(rid)
            if found is None:
                continue
            if inputs is not None:
                counts.not_in_input += 1
            row = _row(shape, index, rid, found[1])
            if row is not None and shape.join:
                row = {shape.id_field: rid, **row}  # else the row would not say whose it is
            yield from emit(row)


def _seen(reader: _Reader, rid: str) -> bool:
    """True if `rid` has a line that was already exported (a duplicate input row)."""
    entries = reader.index.entries
    low = _key(rid) << _OFFSET_BITS
    first = bisect.bisect_left(entries, low)
    last = bisect.bisect_left(entries, low + (1 << _OFFSET_BITS))
    for position in range(first, last):
        if reader.used[position]:
            record = reader.read_at(position)
            if record is not None and record.custom_id == rid:
                return True
    return False


# -- the order (and columns) of the input ---------------------------------------------------


def ids_of_input(path: str | Path) -> InputRows:
    """A run's JSONL input: ids from `custom_id` (batch lines) or `id` (simple lines)."""
    with open(path, "rb") as f:
        for raw in f:
            if not raw.strip():
                continue
            try:
                obj = orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue  # a bad line never ran: it has no result to place
            if not isinstance(obj, dict):
                continue
            rid = obj.get("custom_id", obj.get("id"))
            if isinstance(rid, bool) or not isinstance(rid, str | int) or rid == "":
                continue
            yield str(rid), {}


def ids_of_files(pattern: str) -> InputRows:
    """`--files GLOB`: the ids `llmbatch run` gave them (the sorted paths)."""
    paths = sorted(p for p in glob.iglob(pattern, recursive=True) if Path(p).is_file())
    for path in paths:
        yield path, {"path": path}


def row_columns(path: str | Path | object) -> list[str]:
    """The columns of a CSV (its header) or JSONL rows file (keys in first-seen order), or of
    a table (`llmbatch.io.tables`: Parquet, Arrow IPC, a dataset folder, a table object).

    A CSV is read in the encoding `csv_encoding` finds, or refused with `RowsEncodingError`."""
    table = table_of(path)
    if table is not None:
        return table.columns()
    assert isinstance(path, str | Path)
    if str(path).endswith(".csv"):
        with open(path, newline="", encoding=csv_encoding(path)) as f:
            return next(csv.reader(f), [])
    names: dict[str, None] = {}
    for _, row in _jsonl_rows(path, RowProblems()):
        names.update(dict.fromkeys(row))
    return list(names)


class RowsEncodingError(ValueError):
    """A rows CSV that is not text in the encoding it was read in (`encoding`): the first bad
    byte is at `line` (from 1) and, when known, byte `offset` of the file."""

    def __init__(self, path: str | Path, encoding: str, line: int, offset: int | None, why: str):
        self.path, self.encoding, self.line, self.offset = Path(path), encoding, line, offset
        at = f"line {line}" + (f", byte offset {offset}" if offset is not None else "")
        super().__init__(
            f"{path} is not valid {encoding} ({at}: {why}); save it as UTF-8, or as UTF-16 "
            "with a byte-order mark (other encodings, such as Latin-1 and Windows-1252, "
            "cannot be told apart, so none is guessed)"
        )


def csv_encoding(path: str | Path) -> str:
    """The encoding to read a rows CSV in, after checking the whole file decodes in it.

    A byte-order mark names it (UTF-8, UTF-16, UTF-32); without one the file must be UTF-8.
    Anything else is refused rather than guessed: decoding a Latin-1 file as UTF-8 turned
    every accented letter into U+FFFD, and decoding a mostly-UTF-8 file as Latin-1 would
    garble all its other non-ASCII text. NUL bytes mean UTF-16 or UTF-32 without a mark."""
    with open(path, "rb") as f:
        head = f.read(4)
        encoding = bom_encoding(head)
        f.seek(0)
        if encoding == "utf-8":
            offset = 0
            for n, raw in enumerate(f, 1):
                if b"\x00" in raw:
                    at = offset + raw.index(b"\x00")
                    why = "a NUL byte: UTF-16 or UTF-32 without a byte-order mark?"
                    raise RowsEncodingError(path, "UTF-8", n, at, why)
                try:
                    raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    why = f"byte 0x{raw[exc.start]:02x} {exc.reason}"
                    raise RowsEncodingError(path, "UTF-8", n, offset + exc.start, why) from None
                offset += len(raw)
            return encoding
    lines = 0
    with open(path, newline="", encoding=encoding) as text:
        try:
            for _ in text:
                lines += 1
        except UnicodeDecodeError as exc:
            name = encoding.upper()
            raise RowsEncodingError(path, name, lines + 1, None, exc.reason) from None
    return encoding


@dataclass(slots=True)
class RowProblems:
    """Rows of a --rows/--join file skipped or cut short: how many, and the first (bounded)."""

    count: int = 0
    first: str = ""

    def append(self, what: str) -> None:
        self.count += 1
        self.first = self.first or what


def ids_of_rows(
    path: str | Path | object, id_field: str, problems: RowProblems | None = None
) -> InputRows:
    """`--rows FILE` / `--join FILE`: each row with its id (rows without one are skipped).
    `problems` collects "row N: why" for rows skipped or cut short (malformed CSV, values past
    the header's columns, JSONL lines that are not objects), so the caller can say so. A
    CSV's encoding is checked here, before the first row (`RowsEncodingError`). A table
    (`table_of`) is read a record batch at a time, its values as they are (lists, structs,
    timestamps), so a Parquet export keeps their types; its ids are read as a run reads them."""
    problems = problems if problems is not None else RowProblems()
    table = table_of(path)
    if table is not None:
        return _table_rows(table, id_field)
    assert isinstance(path, str | Path)
    if str(path).endswith(".csv"):
        rows = _csv_rows(path, csv_encoding(path), problems)
    else:
        rows = _jsonl_rows(path, problems)
    return ((str(row[id_field]), row) for _, row in rows if row.get(id_field) not in (None, ""))


def guess_id_field(
    rows: str | Path | object, output: str | Path, *, sample: int = 200
) -> str | None:
    """The column of `rows` that holds the ids of `output`: the run's `id_field`, found from
    the data (the column whose values of the first `sample` rows are most often ids of the
    output), so `export --join` needs no `--id-field` again. None if no column matches.
    Memory: the sampled values only; the output is streamed."""
    from .journal import iter_lines

    table = table_of(rows)
    found: Iterator[tuple[int, dict[str, Any]]]
    if table is not None:
        found = ((n, row) for n, row in table.rows() if isinstance(row, dict))
    elif str(rows).endswith(".csv"):
        assert isinstance(rows, str | Path)
        found = _csv_rows(rows, csv_encoding(rows), RowProblems())
    else:
        assert isinstance(rows, str | Path)
        found = _jsonl_rows(rows, RowProblems())
    values: dict[str, set[str]] = {}
    for _, row in itertools.islice(found, sample):
        for column, value in row.items():
            if value not in (None, "") and not isinstance(value, dict | list):
                values.setdefault(column, set()).add(str(value))
    wanted = set().union(*values.values()) if values else set()
    hits: dict[str, int] = dict.fromkeys(values, 0)
    for _, rec in iter_lines(output):
        cid = rec.custom_id if rec is not None else None
        if cid in wanted:
            for column, seen in values.items():
                hits[column] += cid in seen
    best = max(hits.items(), key=lambda kv: (kv[1], kv[0] == "id"), default=None)
    return best[0] if best is not None and best[1] > 0 else None


def _csv_rows(
    path: str | Path, encoding: str, problems: RowProblems
) -> Iterator[tuple[int, dict[str, Any]]]:
    if csv.field_size_limit() < MAX_FIELD_CHARS:
        csv.field_size_limit(MAX_FIELD_CHARS + 1)
    with open(path, newline="", encoding=encoding) as f:
        header: list[str] = []
        for n, values, first, last in strict_csv(f):
            if isinstance(values, csv.Error):
                if n == 0:
                    problems.append(f"the header is malformed CSV ({values}); no row was read")
                else:
                    problems.append(f"row {n} (lines {first}-{last}): skipped, {values}")
                continue
            if n == 0:
                header = values
                continue
            if len(values) > len(header) and any(values[len(header) :]):
                problems.append(
                    f"row {n}: {len(values)} fields, but the header names {len(header)}; "
                    "the values past the last column are not in the table"
                )
            yield n, dict(zip(header, values, strict=False))


def _jsonl_rows(path: str | Path, problems: RowProblems) -> Iterator[tuple[int, dict[str, Any]]]:
    for n, row in jsonl_rows(path):
        if isinstance(row, str):
            problems.append(f"line {n}: skipped, {row}")
        else:
            yield n, row


def table_of(source: str | Path | object) -> Table | None:
    """`source` as a columnar table (a Parquet, Arrow IPC or dataset path, or a table object),
    or None for a CSV or JSONL file. `TableError` (an `OSError`) if it cannot be read."""
    if isinstance(source, str | Path):
        return open_table(source) if is_table_path(source) else None
    return open_table(source) if is_table(source) else None


def _table_rows(table: Table, id_field: str) -> InputRows:
    for _, row in table.rows(raw=True):
        if isinstance(row, BadRow):
            continue  # not in raw mode; kept for the type
        rid = row.get(id_field)
        if rid is None or rid == "":
            continue
        if isinstance(rid, bytes):  # as the run decoded it
            rid = rid.decode("utf-8", "replace")
        yield str(rid), row
