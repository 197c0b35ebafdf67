"""The command line: the only place that reads argv and the environment.

    llmbatch run requests.jsonl -o results.jsonl --model gpt-4o-mini --rpm 500
    llmbatch run --template "Summarize this file: {content}" --files "src/**/*.py" -o out.jsonl
    llmbatch stats results.jsonl
    llmbatch report results.jsonl -o report.html
    llmbatch plan requests.jsonl --model gpt-4o-mini --rpm 500      # cost and time, sends nothing
    llmbatch export results.jsonl -o labels.csv --join papers.csv
    llmbatch batches list results.jsonl        # the provider batches of a --batch-api run
    llmbatch watch results.jsonl               # a live page of a run, on 127.0.0.1
    llmbatch simulate --port 8080 --latency-ms 200 --rpm 600 --fail-rate 0.05

Exit codes: 0 all succeeded; 1 some requests failed (results written); 2 usage or input
error; 3 the output file could not be written (the run stopped; rerun to resume);
4 --max-cost reached (sending stopped; rerun with a higher cap to go on); 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from . import batches, export, plan, report, run, simulate, stats, watch

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    """No abbreviated flags: `--api-key K` must not silently mean `--api-key-env K`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = _Parser(
        prog="llmbatch",
        description="Run thousands to millions of LLM requests, as fast as the provider allows.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run.add_parser(sub)
    stats.add_parser(sub)
    report.add_parser(sub)
    plan.add_parser(sub)
    simulate.add_parser(sub)
    export.add_parser(sub)
    batches.add_parser(sub)
    watch.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handlers = {
        "run": run.main,
        "stats": stats.main,
        "report": report.main,
        "simulate": simulate.main,
        "plan": plan.main,
        "export": export.main,
        "batches": batches.main,
        "watch": watch.main,
    }
    return handlers[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
