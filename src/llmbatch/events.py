"""What the engine reports, and its plug points: listeners, admission and the cache.

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

from .admission import Admission, Permit
from .breaker import Outage
from .types import BatchRequest, BatchResult, CompletionRequest, CompletionResponse

__all__ = [
    "Admission",
    "BatchFinished",
    "BatchStarted",
    "Event",
    "Listener",
    "Permit",
    "ProviderOutage",
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


@dataclass(slots=True, frozen=True)
class ProviderOutage:
    """The server was down for everyone and the batch waited (`outage.recovered`) or gave up."""

    outage: Outage
    time: float


Event = (
    BatchStarted
    | RequestStarted
    | RequestRetrying
    | RequestFinished
    | BatchFinished
    | ProviderOutage
)
Listener = Callable[[Event], None]


class ResponseCache(Protocol):
    """Answers a request without calling the provider; checked before admission.

    `get` returns a response marked `cached=True`, or None; `put` stores a fresh success.
    """

    def get(self, request: CompletionRequest) -> CompletionResponse | None: ...

    def put(self, request: CompletionRequest, response: CompletionResponse) -> None: ...
