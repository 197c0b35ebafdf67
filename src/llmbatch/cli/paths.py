"""Where a run reads and writes: the input source, and the checks on every path it touches.

    source = source_of(args)     # a callable: each call reads the input again, streaming
    check_paths(args)            # UsageError, one line, for an output or flag path unusable

The checks run before the output is opened or anything is sent, so a wrong path costs nothing.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from ..io.formats import BadLine, InputItem, read_files, read_jsonl, read_rows
from ..types import CompletionRequest
from ._common import os_reason
from .usage import UsageError

__all__ = ["Source", "check_paths", "source_of"]

Source = Callable[[], Iterator[InputItem | BadLine]]


def source_of(args: argparse.Namespace) -> Source:
    """What to read: INPUT, or requests built from --template over --files or --rows."""
    if args.template is not None:
        if args.input:
            raise UsageError("give either INPUT or --template, not both")
        base = CompletionRequest(
            temperature=args.temperature,
            max_tokens=args.max_tokens,
            response_format="json" if args.json else "text",
            model=None,
            system=args.system,
        )
        if bool(args.files) == bool(args.rows):
            raise UsageError("--template needs exactly one of --files or --rows")
        if args.files:
            return _files_source(args.template, args.files, base, _own_files(args.output))
        rows = Path(args.rows)
        if not rows.is_file():
            raise UsageError(f"--rows {rows}: no such file")
        template, id_field = args.template, args.id_field
        missing = args.missing_field
        return lambda: read_rows(template, rows, id_field, base, missing=missing)
    if args.files or args.rows:
        raise UsageError("--files and --rows need --template")
    if not args.input:
        raise UsageError("give INPUT (a JSONL file) or --template with --files/--rows")
    path = Path(args.input)
    if not path.is_file():
        raise UsageError(f"INPUT {path}: no such file")
    return lambda: read_jsonl(path)


def _own_files(output: str | None) -> set[str]:
    """The files a run itself writes: the output, its lock and its compaction temp file."""
    if output is None:  # `llmbatch plan` without -o
        return set()
    real = Path(os.path.realpath(output))
    names = [real, real.with_name(real.name + ".lock"), real.with_name(real.name + ".compact.tmp")]
    return {str(p) for p in names} | {os.path.abspath(output)}


def _files_source(template: str, pattern: str, base: CompletionRequest, own: set[str]) -> Source:
    # The output is created before the files are listed: a glob like "**/*" would otherwise
    # send the run's own output and lock file as requests.
    def items() -> Iterator[InputItem | BadLine]:
        for item in read_files(template, pattern, base):
            if isinstance(item, InputItem) and os.path.realpath(item.id) in own:
                continue
            yield item

    return items


def check_paths(args: argparse.Namespace) -> None:
    """Refuse unusable output paths before anything is opened or sent, one line each."""
    output = Path(args.output)
    for flag, other in (("INPUT", args.input), ("--rows", args.rows)):
        if other and _same_file(output, Path(other)):
            raise UsageError(f"OUTPUT {output} is {flag}: results would overwrite the input")
    if output.is_dir():
        raise UsageError(f"OUTPUT {output} is a directory")
    if not output.parent.is_dir():
        raise UsageError(f"OUTPUT {output}: directory {output.parent} does not exist")
    if output.exists() and output.stat().st_size and not args.resume:
        raise UsageError(
            f"{output} exists and --no-resume was given: remove it, or drop --no-resume"
        )
    if args.error_log:
        log_dir = Path(args.error_log)
        try:
            log_dir.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            raise UsageError(f"--error-log {log_dir} is a file; it needs a directory") from None
        except OSError as exc:
            raise UsageError(f"--error-log {log_dir}: {os_reason(exc)}") from None
    if args.stats_json:
        stats = Path(args.stats_json)
        if stats.is_dir():
            raise UsageError(f"--stats-json {stats} is a directory")
        if not stats.parent.is_dir():
            raise UsageError(f"--stats-json {stats}: directory {stats.parent} does not exist")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one does not exist yet
        return os.path.realpath(a) == os.path.realpath(b)
