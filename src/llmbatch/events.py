"""What the engine reports, and the two plug points it offers: listeners and admission.

    def on_event(event: Event) -> None:
        if isinstance(event, RequestFinished) and event.result.error:
            print("failed", event.result.id)

    engine = Engine(client, EngineConfig(listeners=[on_event]))

The engine never draws, logs or writes files: progress bars, loggers, stats, the error log and
the results journal all listen to these events. Listeners run on the event loop and must be
quick; one that raises is logged and does not break the batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from .types import BatchRequest, BatchResult, CompletionRequest, CompletionResponse

__all__ = [
    "Admission",
    "BatchFinished",
    "BatchStarted",
    "Event",
    "Listener",
    "Permit",
    "RequestFinished",
    "RequestRetrying",
    "RequestStarted",
    "ResponseCache",
]


@dataclass(slots=True, frozen=True)
class BatchStarted:
    total: int | None
    time: float


@dataclass(slots=True, frozen=True)
class RequestStarted:
    """An attempt was admitted and is about to call the client."""

    request: BatchRequest
    attempt: int
    time: float


@dataclass(slots=True, frozen=True)
class RequestRetrying:
    """An attempt failed with a retryable error; the next starts after `delay` seconds."""

    request: BatchRequest
    attempt: int
    error: BaseException
    delay: float
    time: float


@dataclass(slots=True, frozen=True)
class RequestFinished:
    """A request has its final result (success, final error, deadline or cancellation)."""

    request: BatchRequest
    result: BatchResult
    time: float


@dataclass(slots=True, frozen=True)
class BatchFinished:
    completed: int
    failed: int
    elapsed: float
    interrupted: bool


Event = BatchStarted | RequestStarted | RequestRetrying | RequestFinished | BatchFinished
Listener = Callable[[Event], None]


class Permit(Protocol):
    """Returned by `Admission.admit`; told how the attempt ended exactly once."""

    def release(self, response: CompletionResponse | None, error: BaseException | None) -> None: ...


class Admission(Protocol):
    """Decides when an attempt may start; the rate limiter is one.

    `admit` may wait; it may raise a `FatalError` (e.g. a request larger than the whole token
    budget), which becomes the request's result. If the waiting task is cancelled, the
    implementation must give back whatever it reserved.
    """

    async def admit(self, request: CompletionRequest) -> Permit: ...


class ResponseCache(Protocol):
    """Answers a request without calling the provider; checked before admission.

    `get` returns a response marked `cached=True`, or None; `put` stores a fresh success.
    """

    def get(self, request: CompletionRequest) -> CompletionResponse | None: ...

    def put(self, request: CompletionRequest, response: CompletionResponse) -> None: ...
