"""`llmbatch export`: a run's results as a table, in the input's order, joined to its rows.

    llmbatch export results.jsonl -o labels.csv --join papers.csv           # rows + out_* columns
    llmbatch export results.jsonl -o results.parquet --input requests.jsonl --failed skip
    llmbatch export results.jsonl -o failed.jsonl --rows papers.csv --failed only
    llmbatch export results.jsonl -o labelled.parquet --join papers.parquet  # keeps its types

The order comes from the source the run read: `--input` (a JSONL of requests), `--rows` or
`--files` (as given to `run`, with `--id-field`), or `--join FILE`, which also puts that
file's columns first in every row. Without any, rows follow the output file. Each row holds
`status` (ok, failed, or missing: an input id with no result yet), `error_code`,
`error_message`, the parsed reply's fields (nested objects flattened as `a.b`, arrays kept
whole; prefixed with `--prefix`, default `out_` with --join), and `reply` (the reply text)
where a line has no parsed object. Memory stays bounded for any size: see
`llmbatch.io.export`. `--rows`/`--join` take every rows source `run --rows` takes (CSV, JSONL,
Parquet file or folder, Arrow IPC, a Hugging Face dataset folder); joined to a Parquet or
Arrow output, a columnar input keeps its column types (timestamps, lists, structs).
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path
from typing import Any

from rich.console import Console

from ..io.export import (
    ExportCounts,
    InputRows,
    OutputIndex,
    RowProblems,
    Shape,
    guess_id_field,
    ids_of_files,
    ids_of_input,
    ids_of_rows,
    ordered_records,
    row_columns,
    table_of,
)
from ..io.tables import DUCKDB_PREFIX, TableError
from ..io.writers import FORMATS, format_of, open_writer
from ._common import EXIT_OK, EXIT_OUTPUT, EXIT_USAGE, os_reason, say
from .usage import UsageError

__all__ = ["add_parser", "main"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "export",
        help="write a run's results as JSONL, CSV, Parquet or Arrow, in input order",
        description="Write the results in OUTPUT (a run's output file) to FILE, in the order "
        "of the run's input, optionally joined to the input rows. Streams: any size exports "
        "in bounded memory.",
    )
    p.add_argument("output", metavar="OUTPUT", help="the results file `llmbatch run` wrote")
    p.add_argument("-o", "--to", dest="file", required=True, metavar="FILE", help="table to write")
    p.add_argument(
        "--format",
        choices=FORMATS,
        help="default: from FILE's extension (.jsonl .csv .parquet .arrow/.feather)",
    )
    g = p.add_argument_group("order (the run's input)")
    g.add_argument("--input", metavar="INPUT", help="the JSONL of requests the run read")
    g.add_argument(
        "--rows",
        metavar="PATH",
        help="the rows a --template run read (CSV, JSONL, Parquet, Arrow, dataset folder)",
    )
    g.add_argument("--files", metavar="GLOB", help="the files a --template run read")
    g.add_argument("--template", help="accepted for symmetry with run; not needed here")
    g.add_argument(
        "--id-field",
        help="row field holding the id (default: the one the run used, found from the rows "
        "whose values are OUTPUT's ids; else id)",
    )
    g.add_argument(
        "--join",
        metavar="PATH",
        help="rows to put the results next to (also sets the order): CSV, JSONL, Parquet file "
        "or folder, Arrow IPC, or a Hugging Face dataset folder",
    )
    g = p.add_argument_group("what goes in")
    g.add_argument(
        "--failed",
        choices=("include", "skip", "only"),
        default="include",
        help="failed and missing rows: include (default), skip, or only them",
    )
    g.add_argument(
        "--prefix",
        help="prefix of the result columns (default out_ with --join, none without)",
    )


def _inputs(
    args: argparse.Namespace, problems: RowProblems
) -> tuple[InputRows | None, list[str], dict[str, Any]]:
    """The input's (id, row) pairs in order, its columns (with --join) and their pyarrow
    types where the input is a columnar table (with --join)."""
    given = [f for f in ("input", "rows", "files", "join") if getattr(args, f)]
    if len(given) > 1:
        flags = " and ".join(f"--{f}" for f in given)
        raise UsageError(f"{flags}: give one source of order (--join also sets it)")
    for flag in ("input", "rows", "join"):
        value = getattr(args, flag)
        path = Path(value) if value and not value.startswith(DUCKDB_PREFIX) else None
        if path is not None and not (path.is_file() or (flag != "input" and path.is_dir())):
            raise UsageError(f"--{flag} {value}: no such file")
    if args.id_field is None:
        table = args.rows or args.join
        found = guess_id_field(table, args.output) if table else None
        args.id_field = found or "id"
    if args.input:
        return ids_of_input(args.input), [], {}
    if args.rows:
        return ids_of_rows(args.rows, args.id_field, problems), [], {}
    if args.files:
        return ids_of_files(args.files), [], {}
    if args.join:
        columns = row_columns(args.join)
        if args.id_field not in columns:
            raise UsageError(f"--join {args.join} has no column {args.id_field!r} (--id-field)")
        table = table_of(args.join)
        types = table.arrow_types() if table is not None else {}
        return ids_of_rows(args.join, args.id_field, problems), columns, types
    return None, [], {}


def _export(args: argparse.Namespace, console: Console) -> int:
    out = Path(args.output)
    if not out.is_file():
        raise UsageError(f"OUTPUT {out}: no such file")
    target = Path(args.file)
    if target.exists() and target.resolve() == out.resolve():
        raise UsageError(f"FILE {target} is OUTPUT: the export would overwrite the results")
    for flag in ("input", "rows", "join"):
        source = getattr(args, flag)
        if source and target.exists() and target.resolve() == Path(source).resolve():
            raise UsageError(f"FILE {target} is --{flag}: the export would overwrite the input")
    fmt = args.format or format_of(target)
    if fmt is None:
        raise UsageError(
            f"cannot tell the format of {target}: name it .jsonl, .csv, .parquet or .arrow, "
            "or pass --format"
        )
    if fmt in ("parquet", "arrow") and importlib.util.find_spec("pyarrow") is None:
        raise UsageError(f"{fmt} export needs pyarrow: pip install 'llmbatch[parquet]'")
    join = bool(args.join)
    prefix = args.prefix if args.prefix is not None else ("out_" if join else "")
    problems = RowProblems()  # rows of --rows/--join skipped or changed, said at the end
    try:
        inputs, input_columns, types = _inputs(args, problems)  # RowsEncodingError: ValueError
        index = OutputIndex.build(out, prefix=prefix)
        shape = Shape(join=join, prefix=prefix, failed=args.failed, id_field=args.id_field)
        columns = shape.columns(index, input_columns)
    except (ValueError, TableError) as exc:
        raise UsageError(str(exc)) from None
    counts = ExportCounts()
    try:
        writer = open_writer(target, columns, index.columns.kinds, fmt=fmt, types=types)
    except (ValueError, ImportError) as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:
        say(console, f"llmbatch export: error: cannot write {target}: {os_reason(exc)}")
        return EXIT_OUTPUT
    try:
        with writer:
            for row in ordered_records(index, inputs, shape, counts):
                writer.write(row)
    except TableError as exc:  # the input, mid-way; nothing was written to FILE
        say(console, f"llmbatch export: error: {exc}")
        return EXIT_USAGE
    except OSError as exc:
        say(console, f"llmbatch export: error: cannot write {target}: {os_reason(exc)}")
        return EXIT_OUTPUT
    summary = (
        f"wrote {counts.rows:,} row(s) to {target}: {counts.ok:,} ok, {counts.failed:,} failed"
    )
    if inputs is not None:
        summary += f", {counts.missing:,} missing (no result yet)"
    say(console, summary)
    if problems.count:
        source = args.join or args.rows
        more = f" (and {problems.count - 1:,} more)" if problems.count > 1 else ""
        say(console, f"{source}: {problems.first}{more}")
    if counts.not_in_input:
        say(console, f"{counts.not_in_input:,} result(s) have ids not in the input; they come last")
    if counts.duplicate_input_ids:
        say(console, f"{counts.duplicate_input_ids:,} input row(s) repeat an id; exported once")
    if index.foreign_lines:
        say(console, f"{index.foreign_lines:,} line(s) of {out} are not result lines; ignored")
    return EXIT_OK


def main(args: argparse.Namespace) -> int:
    console = Console(stderr=True, soft_wrap=True)
    try:
        return _export(args, console)
    except UsageError as exc:
        say(console, f"llmbatch export: error: {exc}")
        return EXIT_USAGE
