"""Small pieces the subcommands share: exit codes, argument types, the event loop, messages."""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from typing import Any

from rich.console import Console

from ..io.atomic import os_reason
from ..pipeline.runner import event_loop_factory
from ..pipeline.summary import (
    EXIT_BUDGET,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_OUTPUT,
    EXIT_USAGE,
)

__all__ = [
    "EXIT_BUDGET",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_OUTPUT",
    "EXIT_USAGE",
    "concurrency",
    "event_loop_factory",
    "finish_by",
    "fraction",
    "non_negative_float",
    "os_reason",
    "positive_float",
    "positive_int",
    "say",
]


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


def say(console: Console, message: str) -> None:
    """Print a message that may hold paths, ids or OS errors: never read as markup."""
    console.print(message, markup=False, highlight=False)
