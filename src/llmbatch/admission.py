"""Admission: the one plug point that decides when an attempt may start, and hears how it ended.

    async with limiter.admit(request) as permit:      # waits for a slot; gives it back if cancelled
        response = await client.complete(request)     # an exception here is fed back on exit
        permit.record(response)                       # a success: settle tokens, learn headers

Every pacing component speaks this one protocol: the `RateLimiter` (requests and tokens per
minute), the `ConcurrencyLimiter` (how many attempts are in flight), and the Ray cluster's
leased limiter. A `Permit` is released exactly once, on every exit path of the `async with`
block: a success recorded with `record`, an exception escaping the block, or a cancellation.

How an attempt ended is read in exactly one place, `feedback()` below: it turns a response or
an error into the signals a limiter acts on (the server's rate-limit headers, a congestion
refusal with its Retry-After, an overload timeout). Clients only map statuses to the error
tree; limiters only act on signals; the retry policy only decides whether to try again.
"""

from __future__ import annotations

import asyncio
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Any, Protocol, runtime_checkable

from .errors import (
    APIConnectionError,
    CapacityError,
    FatalError,
    OverloadedError,
    RateLimitError,
    RequestTimeoutError,
    ServerError,
)
from .types import CompletionRequest, CompletionResponse, RateLimitInfo

__all__ = [
    "Admission",
    "AdmissionChain",
    "Feedback",
    "Permit",
    "PermitBase",
    "feedback",
    "mark_outage",
]

# 5xx statuses that say "too busy", not "broken": vLLM, Ollama and most gateways answer 503
# above their capacity, Anthropic 529.
_CONGESTION_STATUSES = frozenset({429, 503, 529})


@dataclass(slots=True, frozen=True)
class Feedback:
    """What one attempt tells a limiter.

    `congested`: the server refused for load (429, 503, 529, "overloaded"): slow down.
    `retry_after`: the server's wait, in seconds, when it gave one.
    `rate_limit`: the server's rate-limit headers, from a success or a refusal.
    `timed_out`: the attempt hit our request timeout (queueing servers: an overload sign).
    `down`: the connection failed or the server answered a 5xx: a possible outage.
    `ok`: a success. All false: the attempt ended for a reason that says nothing about load
    (a bad request, cancellation).
    """

    ok: bool = False
    congested: bool = False
    timed_out: bool = False
    down: bool = False
    retry_after: float | None = None
    rate_limit: RateLimitInfo | None = None


_NEUTRAL = Feedback()
_OK = Feedback(ok=True)  # a success without headers: the common case, not allocated each time


def feedback(response: CompletionResponse | None, error: BaseException | None) -> Feedback:
    """Read how an attempt ended: the one place a 429 / 503 / 529 becomes "slow down".

    `error` wins over `response` (a reply that arrived but failed validation is no success).
    """
    if error is None:
        info = response.rate_limit if response is not None else None
        return _OK if info is None else Feedback(ok=True, rate_limit=info)
    if isinstance(error, FatalError):
        return _NEUTRAL  # ours or the request's fault, nothing about the server's load
    if isinstance(error, CapacityError):
        return _NEUTRAL  # a service tier short of room (flex): our pace is not the cause
    if isinstance(error, RateLimitError):
        return Feedback(congested=True, retry_after=error.retry_after, rate_limit=error.rate_limit)
    if isinstance(error, OverloadedError) or (
        isinstance(error, ServerError) and error.status_code in _CONGESTION_STATUSES
    ):
        retry_after = getattr(error, "retry_after", None)
        # A 503 is also what a gateway answers when the model server behind it is gone.
        return Feedback(congested=True, down=error.status_code == 503, retry_after=retry_after)
    if isinstance(error, RequestTimeoutError):
        return Feedback(timed_out=True)
    if isinstance(error, APIConnectionError | ServerError):
        return Feedback(down=True)
    if isinstance(error, ConnectionError):  # hand-written clients
        return Feedback(down=True)
    if isinstance(error, TimeoutError) and not isinstance(error, asyncio.CancelledError):
        return Feedback(timed_out=True)
    return _NEUTRAL


@runtime_checkable
class Permit(Protocol):
    """One admitted attempt, held for the duration of an `async with admission.admit(...)`."""

    def record(self, response: CompletionResponse) -> None:
        """The attempt succeeded with `response` (settles tokens, reads headers on release)."""
        ...

    @property
    def paused_for_retry(self) -> bool:
        """True when releasing this permit made the limiter itself wait out the server's
        Retry-After, so a retry need not sleep it again."""
        ...


@runtime_checkable
class Admission(Protocol):
    """Decides when an attempt may start; a `RateLimiter` is one.

    `admit(request)` returns an async context manager. Entering it may wait, and may raise a
    `FatalError` (e.g. a request larger than the whole per-minute token limit), which becomes the
    request's result; a cancelled waiter gives back whatever it reserved. Leaving it releases
    the permit with the outcome.
    """

    def admit(self, request: CompletionRequest) -> AbstractAsyncContextManager[Permit]: ...


class PermitBase:
    """A permit that is its own context manager: `admit` returns one, entering it acquires.

    Subclasses implement `_acquire()` (wait for the slot; on cancellation give it back) and
    `_release(response, error)` (called exactly once after a successful `_acquire`), and
    may implement `_admit_now()`: take the slot at once if no wait is needed (True), so a
    chain admits its links without a coroutine each on the hot path.
    """

    __slots__ = ("_entered", "_response", "outage", "paused_for_retry")

    def __init__(self) -> None:
        self._response: CompletionResponse | None = None
        self._entered = False
        self.paused_for_retry = False
        self.outage = False  # set by `mark_outage`

    def record(self, response: CompletionResponse) -> None:
        self._response = response

    def load_feedback(
        self, response: CompletionResponse | None, error: BaseException | None
    ) -> Feedback:
        """`feedback(response, error)` as a pacing limiter should read it: an attempt lost to
        a server-wide outage (see `mark_outage`) says nothing about our sending rate."""
        return self.as_load(feedback(response, error))

    def as_load(self, fb: Feedback) -> Feedback:
        """`fb` as a pacing limiter should read it (see `load_feedback`)."""
        if self.outage:
            return replace(fb, congested=False, timed_out=False, retry_after=None)
        return fb

    def _admit_now(self) -> bool:
        return False

    async def _acquire(self) -> None:
        raise NotImplementedError

    def _release(self, response: CompletionResponse | None, error: BaseException | None) -> None:
        raise NotImplementedError

    def enter_now(self) -> bool:
        """Enter without a coroutine if no wait is needed (True); else `await enter_later()`.

        The engine's hot path: `async with` costs two coroutines per attempt."""
        if self._admit_now():
            self._entered = True
            return True
        return False

    async def enter_later(self) -> None:
        """Wait for the slot `enter_now` could not take at once."""
        await self._acquire()
        self._entered = True

    async def __aenter__(self) -> PermitBase:
        if not self.enter_now():
            await self.enter_later()
        return self

    def answered(self, response: CompletionResponse) -> None:
        """`record(response)`, then `leave(None)`: the engine's hot path, in one call."""
        self._response = response
        if self._entered:
            self._entered = False
            self._release(response, None)

    def leave(self, error: BaseException | None) -> None:
        """`__aexit__` without a coroutine (what a chain calls)."""
        if self._entered:
            self._entered = False
            self._release(self._response, error)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._entered:
            return
        self._entered = False
        # A recorded response is passed even when the block then failed (a JSON-mode reply
        # that does not parse): its usage was still spent.
        self._release(self._response, exc)


def mark_outage(permit: Permit) -> None:
    """The attempt under `permit` failed in a server-wide outage the breaker is waiting out.

    A gateway whose model server is gone answers 503, which also reads as "too busy": without
    this, every probe of the outage would cut the rate (and the concurrency) again, and the
    run would crawl for minutes after the server came back. The breaker still hears "down".
    """
    if isinstance(permit, _ChainPermit):
        for inner in permit.permits:
            mark_outage(inner.permit if isinstance(inner, _Foreign) else inner)
    elif isinstance(permit, PermitBase):
        permit.outage = True


class _ChainPermit:
    """The permits of a chain, entered in order and released in reverse."""

    __slots__ = ("_held", "_links", "_request", "permits")

    def __init__(self, links: tuple[Admission, ...], request: CompletionRequest) -> None:
        self._links = links
        self._request = request
        self.permits: list[Any] = []  # entered, in order: `PermitBase`s or other managers
        self._held = 0

    def record(self, response: CompletionResponse) -> None:
        for permit in self.permits:
            permit.record(response)

    @property
    def paused_for_retry(self) -> bool:
        return any(p.paused_for_retry for p in self.permits)

    async def __aenter__(self) -> _ChainPermit:
        request = self._request
        try:
            for link in self._links:
                manager = link.admit(request)
                if isinstance(manager, PermitBase):
                    # No coroutine for a link that admits at once (the hot path).
                    if not manager._admit_now():
                        await manager._acquire()
                    manager._entered = True
                    self.permits.append(manager)
                else:
                    permit = await manager.__aenter__()
                    self.permits.append(_Foreign(manager, permit))
                self._held += 1
        except BaseException as exc:
            await self._unwind(type(exc), exc, exc.__traceback__)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._unwind(exc_type, exc, tb)

    async def _unwind(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Every link is released even if one fails to: a slot (or the breaker's probe) held
        # for ever would stall every later attempt. The first failure is raised afterwards.
        failure: BaseException | None = None
        permits = self.permits
        # Kept after release (`paused_for_retry` is read then): `_held` counts those held.
        while self._held:
            self._held -= 1
            permit = permits[self._held]
            try:
                if isinstance(permit, PermitBase):
                    permit.leave(exc)
                else:
                    await permit.manager.__aexit__(exc_type, exc, tb)
            except BaseException as error:  # re-raised below, once every link is released
                failure = failure or error
        if failure is not None:
            raise failure


class _Foreign:
    """A link that is not a `PermitBase`: its manager, and the permit it gave."""

    __slots__ = ("manager", "permit")

    def __init__(self, manager: AbstractAsyncContextManager[Permit], permit: Permit) -> None:
        self.manager = manager
        self.permit = permit

    def record(self, response: CompletionResponse) -> None:
        self.permit.record(response)

    @property
    def paused_for_retry(self) -> bool:
        return self.permit.paused_for_retry


class AdmissionChain:
    """Several admissions as one: `AdmissionChain(breaker, limiter, gate)`. An attempt waits
    for each in turn; a cancellation or failure part-way gives back what it already holds."""

    def __init__(self, *links: Admission) -> None:
        self.links = links

    def admit(self, request: CompletionRequest) -> _ChainPermit:
        return _ChainPermit(self.links, request)
