"""Small pieces the subcommands share: exit codes, argument types, the event loop."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
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
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be a positive {name}, got {text}")
        return value

    return parse


positive_int = _positive(int, "integer")
positive_float = _positive(float, "number")


def install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:
        return
    uvloop.install()
