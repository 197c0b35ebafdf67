"""`llmbatch report OUTPUT -o report.html`: a run, as one HTML file of plots that opens offline.

    llmbatch report results.jsonl -o report.html --rpm 600

Streams the output file (a million lines in bounded memory; see `llmbatch.report`) and
writes a self-contained page: summary, throughput, latency with p50/p95/p99, errors by code
over time, admission wait vs provider time, retries, the slowest and the failed requests.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..metrics import MissingExtraError
from ..pipeline.paths import output_files
from ._common import EXIT_OK, EXIT_OUTPUT, EXIT_USAGE, os_reason, positive_float

__all__ = ["add_parser", "main"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "report",
        help="write an HTML report of an output file (plots; opens offline)",
        description="Read an llmbatch output file and write one self-contained HTML file with "
        "plots of the run (pip install 'llmbatch[report]').",
    )
    p.add_argument("output", metavar="OUTPUT", help="an output file written by `llmbatch run`")
    p.add_argument("-o", "--out", required=True, metavar="REPORT", help="the HTML file to write")
    p.add_argument(
        "--rpm",
        type=positive_float,
        help="the run's request limit per minute, shown beside the effective rate",
    )
    p.add_argument("--title", help="the report's title (default: the output file's name)")


def main(args: argparse.Namespace) -> int:
    path = Path(args.output)

    def fail(message: str, code: int = EXIT_USAGE) -> int:
        print(f"llmbatch report: error: {message}", file=sys.stderr)
        return code

    if not path.is_file():
        return fail(f"{path} does not exist or is not a file")
    target = Path(args.out)
    if target.exists() and os.path.samefile(target, path):
        return fail(f"-o {target} is OUTPUT: the report would overwrite the results")
    for what, sibling in output_files(path.resolve()):
        if target.resolve() == sibling:
            return fail(f"-o {target} is {what.replace('the output', 'OUTPUT')}: pick another name")
    try:
        from ..report import aggregate, render, write_atomic

        data = aggregate(path, limit_rpm=args.rpm)
        page = render(data, args.title)
    except MissingExtraError as exc:
        return fail(str(exc))
    except ImportError:
        return fail("the report needs plotly: pip install 'llmbatch[report]'")
    except OSError as exc:
        return fail(f"cannot read {path}: {os_reason(exc)}")
    try:
        write_atomic(args.out, page)
    except OSError as exc:
        return fail(f"cannot write {args.out}: {os_reason(exc)}", EXIT_OUTPUT)
    s = data["summary"]
    print(
        f"report: {args.out} ({s['requests']:,} requests, {s['failed']:,} failed, "
        f"{len(page) / 1e6:.1f} MB)",
        file=sys.stderr,
    )
    return EXIT_OK
