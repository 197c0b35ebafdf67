"""Small pieces the subcommands share: exit codes, argument types, the event loop, retries."""

from __future__ import annotations

import argparse
import asyncio
import math
import time
from collections.abc import Callable
from typing import Any

from rich.console import Console

from ..limiter import RateLimiter
from ..retry import RetryPolicy

EXIT_OK = 0
EXIT_FAILED = 1  # some requests failed (their lines hold the error), or unfinished
EXIT_USAGE = 2  # nothing sent
EXIT_OUTPUT = 3  # the output file could not be written: the run stopped; rerun to resume
EXIT_BUDGET = 4  # --max-cost reached: sending stopped; rerun with a higher cap to go on
EXIT_INTERRUPTED = 130


def fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def _positive(kind: type[int] | type[float], name: str) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a positive {name}, got {text!r}") from None
        # nan passes `<= 0` and inf has no use: both crashed timers (call_later) or paced
        # nothing, far from the flag that caused it.
        if not value > 0 or value == math.inf:
            raise argparse.ArgumentTypeError(f"must be a positive {name}, got {text}")
        return value

    return parse


positive_int = _positive(int, "integer")
positive_float = _positive(float, "number")


DEFAULT_CONCURRENCY = 32


def finish_by(text: str) -> float:
    """`--finish-by`: a duration from now ("6h", "1h30m") or a date and time; a `time.time()`."""
    from ..deadline import parse_deadline

    try:
        return parse_deadline(text, now=time.time())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def concurrency(text: str) -> int | str:
    """`--concurrency`: a positive integer, or "auto"."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return positive_int(text)  # type: ignore[no-any-return]
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f'must be a positive integer or "auto", got {text!r}'
        ) from None


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text!r}")
    return value


def rate_limiter(args: argparse.Namespace) -> RateLimiter | None:
    """The limiter the pace flags ask for, or None to let the engine adapt on its own."""
    limits = (args.rpm, args.tpm, args.itpm, args.otpm)
    if not any(limits):
        return None
    return RateLimiter(
        args.rpm, args.tpm, input_tokens_per_minute=args.itpm, output_tokens_per_minute=args.otpm
    )


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop when installed, for `asyncio.Runner(loop_factory=...)`.

    (`uvloop.install()` sets a global policy, deprecated from Python 3.12.)
    """
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def retry_policy(args: argparse.Namespace) -> RetryPolicy:
    """The one retry policy of a run, local or on Ray: --max-retries after the first try."""
    return RetryPolicy(max_attempts=max(1, args.max_retries + 1))


def os_reason(exc: OSError) -> str:
    """`[Errno 28] No space left on device`, without the file name Python may append."""
    return f"[Errno {exc.errno}] {exc.strerror}" if exc.errno else str(exc)


def say(console: Console, message: str) -> None:
    """Print a message that may hold paths, ids or OS errors: never read as markup."""
    console.print(message, markup=False, highlight=False)
