"""Watching a run from outside: `--metrics-port` serves Prometheus metrics during the run,
`--report` writes the HTML report at its end.

    add_arguments(parser)                       # the "observability" group of `llmbatch run`
    with serve_metrics(args, console) as metrics:
        ... sink.observers.append(metrics.record) ...  # request counts: what was written
    write_run_report(args, console)             # after the output is closed

In a local run the metrics also listen to the engine (attempts, in flight, waiting, the
limiter's rate); in a --ray run the driver counts the results its workers send back, each
with its attempt log. Requests are counted as they are written, so the counters match the
output file.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from pathlib import Path

from rich.console import Console

from ..metrics import MetricsListener, MissingExtraError
from ._common import os_reason, say
from .usage import UsageError

__all__ = [
    "add_arguments",
    "check_report_extra",
    "port",
    "serve_metrics",
    "write_run_report",
]


def port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a port number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be between 0 and 65535, got {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("observability")
    g.add_argument(
        "--metrics-port",
        type=port,
        metavar="PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics during the run "
        "(pip install 'llmbatch[metrics]'; 0: any free port, printed)",
    )
    g.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        metavar="HOST",
        help="address the metrics listen on (default 127.0.0.1; 0.0.0.0 for every interface)",
    )
    g.add_argument(
        "--report",
        metavar="PATH",
        help="write an HTML report of OUTPUT (plots, slowest and failed requests) at the end "
        "(pip install 'llmbatch[report]')",
    )


@contextlib.contextmanager
def serve_metrics(args: argparse.Namespace, console: Console) -> Iterator[MetricsListener | None]:
    """The run's metrics, served for the block; None without --metrics-port."""
    if args.metrics_port is None:
        yield None
        return
    try:
        metrics = MetricsListener(count_finished=False)
    except MissingExtraError as exc:
        raise UsageError(f"--metrics-port: {exc}") from None
    try:
        server = metrics.serve(args.metrics_port, args.metrics_host)
    except OSError as exc:
        raise UsageError(
            f"--metrics-port {args.metrics_port}: cannot listen on "
            f"{args.metrics_host}:{args.metrics_port} ({os_reason(exc)})"
        ) from None
    say(console, f"metrics at {server.url}")
    try:
        yield metrics
    finally:
        server.close()


def check_report_extra(args: argparse.Namespace) -> None:
    """Refuse a --report that could not be written, before anything is sent: plotly missing,
    no such directory, or the path of a file the run reads or writes."""
    if args.report is None:
        return
    try:
        import plotly  # noqa: F401
    except ImportError:
        raise UsageError("--report needs plotly: pip install 'llmbatch[report]'") from None
    report = Path(args.report)
    if not report.resolve().parent.is_dir():
        raise UsageError(f"--report {report}: the directory {report.parent} does not exist")
    if report.is_dir():
        raise UsageError(f"--report {report}: is a directory")
    for flag, other in (("OUTPUT", args.output), ("INPUT", args.input)):
        if other and report.resolve() == Path(other).resolve():
            raise UsageError(f"--report {report}: is the {flag} file")


def write_run_report(args: argparse.Namespace, console: Console) -> bool:
    """Write --report from the output file; False (said why) if it could not be written."""
    if args.report is None:
        return True
    from ..report import write_report

    try:
        write_report(args.output, args.report, limit_rpm=args.rpm)
    except OSError as exc:
        say(
            console, f"llmbatch run: error: cannot write the report {args.report}: {os_reason(exc)}"
        )
        return False
    say(console, f"report: {Path(args.report)}")
    return True
