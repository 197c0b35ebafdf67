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
from .types import BatchRequest, BatchResult, CompletionRequest, CompletionResponse, Outcome

__all__ = [
    "Admission",
    "AttemptFinished",
    "AttemptQueued",
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
class AttemptQueued:
    """An attempt asks for admission (breaker, limiter, concurrency gate); `RequestStarted`
    follows once it is admitted. Not emitted when the engine has no admission at all."""

    request: BatchRequest
    attempt: int
    time: float


@dataclass(slots=True, frozen=True)
class AttemptFinished:
    """A call to the client ended. `wait` is the seconds it waited for admission, `provider`
    the seconds the call took; `outcome` is the HTTP status, or the error code without one
    (`llmbatch.types.Timing`). `error` is None on success."""

    request: BatchRequest
    attempt: int
    wait: float
    provider: float
    outcome: Outcome
    error: BaseException | None
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
    | AttemptQueued
    | AttemptFinished
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
