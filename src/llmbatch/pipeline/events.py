"""What a run tells its listeners: the pipeline never prints, displays listen.

    def show(event: object) -> None:
        if isinstance(event, RunNotice):
            print(event.message)

    llmbatch.run(RunConfig(..., listeners=[show]))

Besides these, listeners hear the provider batch events (`BatchSubmitted`, `BatchPolled`,
`BatchEnded` from `llmbatch.batch_api`) and a deadline run's `Switched`. A listener runs on
the event loop and must be quick; one that raises is reported once (a `RunNotice`) and
dropped, never stopping the run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ..types import BatchResult
from .precheck import Precheck

__all__ = [
    "DeadlineProgress",
    "Emitter",
    "InputChecked",
    "OutputOpened",
    "PassStarted",
    "ResultWritten",
    "RunNotice",
    "RunStarted",
    "RunStopped",
]

log = logging.getLogger("llmbatch")


@dataclass(frozen=True, slots=True)
class RunNotice:
    """Something the user should know (a warning: a price unknown, the cache failing)."""

    message: str
    level: Literal["info", "warning"] = "warning"


@dataclass(frozen=True, slots=True)
class OutputOpened:
    """The existing output was read: a torn last line cut (`repaired_bytes`), lines that
    are not result lines (`corrupt_lines`, kept and ignored)."""

    path: str
    repaired_bytes: int
    corrupt_lines: Sequence[int]


@dataclass(frozen=True, slots=True)
class InputChecked:
    """The first pass is over: `check` counts the work, the bad lines, the ids skipped
    (`failed_kept` of them failed earlier and are kept without `retry_failed`)."""

    where: str
    check: Precheck
    failed_kept: int


@dataclass(frozen=True, slots=True)
class RunStarted:
    """Sending begins: `total` requests through `executor` ("realtime", "ray",
    "batch_api", "deadline")."""

    total: int
    executor: str


@dataclass(frozen=True, slots=True)
class PassStarted:
    """A batch run sends part of its work realtime: "expired" lines (expired or failed
    retryably) or "reask" (replies the schema refused)."""

    kind: Literal["expired", "reask"]
    count: int


@dataclass(frozen=True, slots=True)
class ResultWritten:
    """One result reached the output (its cost set, where prices are known)."""

    result: BatchResult


@dataclass(frozen=True, slots=True)
class DeadlineProgress:
    """A deadline run's state, about once a second."""

    seconds_left: float
    realtime_sent: int
    realtime_done: int
    batch_done: int


@dataclass(frozen=True, slots=True)
class RunStopped:
    """Sending is over (finished, interrupted or failed); the output is being closed."""

    interrupted: bool


class Emitter:
    """Hands events to the run's listeners; a listener that raises is dropped, once."""

    def __init__(self, listeners: Sequence[Callable[[Any], None]]) -> None:
        self.listeners = list(listeners)

    def __call__(self, event: object) -> None:
        for listener in list(self.listeners):
            try:
                listener(event)
            except Exception as exc:
                log.warning("run listener %r failed (%r); going on without it", listener, exc)
                self.listeners.remove(listener)
                self(RunNotice(f"listener {listener!r} failed ({exc!r}); going on without it"))

    def warn(self, message: str) -> None:
        self(RunNotice(message))
