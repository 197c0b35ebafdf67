"""`llmbatch watch OUTPUT`: a live page of a run, served on 127.0.0.1 until Ctrl-C.

    llmbatch watch results.jsonl                    # any free port, printed
    llmbatch watch results.jsonl --port 8765 --total 100000

Follows the output file (and the batch ledger beside it) of a run in this process or any
other, on this machine or another whose output is on a shared disk: see `llmbatch.watch`.
The output need not exist yet: the page waits for it.
"""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path
from types import FrameType

from rich.console import Console

from ..metrics import MissingExtraError
from ._common import EXIT_OK, EXIT_USAGE, os_reason, positive_float, positive_int, say
from .flags import port

__all__ = ["add_parser", "main"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "watch",
        help="serve a live page of a run (progress, spend, errors, batches, plots)",
        description="Serve on 127.0.0.1 a page that follows OUTPUT (and its batch ledger) while "
        "a run writes it, in this process or another: progress, rate, spend and its "
        "projection, errors by code, latency, batches, and the report's plots. Read-only; "
        "works offline (pip install 'llmbatch[report]').",
    )
    p.add_argument("output", metavar="OUTPUT", help="the output file a run writes")
    p.add_argument(
        "--port", type=port, default=0, help="port on 127.0.0.1 (default 0: any free port)"
    )
    p.add_argument(
        "--total",
        type=positive_int,
        metavar="N",
        help="requests the run has in all, for progress and time left (a --batch-api run's "
        "ledger says it by itself)",
    )
    p.add_argument(
        "--rpm",
        type=positive_float,
        help="the run's request limit per minute, drawn beside the throughput",
    )


def main(args: argparse.Namespace) -> int:
    from ..watch import LiveState, serve_live_page

    console = Console(stderr=True, soft_wrap=True)
    output = Path(args.output)
    if output.is_dir():
        say(console, f"llmbatch watch: error: OUTPUT {output} is a directory")
        return EXIT_USAGE
    if not output.resolve().parent.is_dir():
        say(console, f"llmbatch watch: error: OUTPUT {output}: its directory does not exist")
        return EXIT_USAGE
    total = args.total
    state = LiveState(output, total=lambda: total, limit_rpm=args.rpm)
    try:
        server = serve_live_page(state, args.port)
    except MissingExtraError as exc:
        say(console, f"llmbatch watch: error: {exc}")
        return EXIT_USAGE
    except OSError as exc:
        say(
            console,
            f"llmbatch watch: error: --port {args.port}: cannot listen ({os_reason(exc)}); "
            "try --port 0",
        )
        return EXIT_USAGE
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    say(console, f"live page of {output} at {server.url} (Ctrl-C to stop)")
    try:
        while not stop.wait(3600):
            pass
    finally:
        server.close()
    return EXIT_OK
