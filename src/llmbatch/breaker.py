"""A circuit breaker for server-wide outages: pause, probe with backoff, resume, or give up.

    breaker = OutageBreaker(max_outage=300)
    async with breaker.admit(request) as permit:   # waits while the server is down
        ...

When the server goes away (connection refused, resets, 5xx on everything in flight), retrying
each request on its own burns every request's retries within seconds and marks the whole
batch failed, though the server may be back in twenty seconds. The breaker sees the outage
instead: after `trip_after` consecutive attempts that failed that way, of at least three
different requests, with no success in between, it opens. While open, admissions wait and a
single probe goes out after a backoff (0.5 s, 1 s, then every 2 s); the first probe that gets
an answer closes it and releases everyone. The probes stay 2 s apart however long the outage
lasts: one request every 2 s costs a down server nothing, and a server that comes back is
seen within 2 s (a backoff doubling to 15 s left a run idle for up to 15 s after a restart).
Attempts that failed because of the outage do not count against a request's retries (the
engine asks `excuses(error)`). Only after `max_outage` seconds of outage do the waiting and
remaining requests fail, with `ProviderOutageError`.

A server that *answers* a 5xx itself (not a gateway's 502/503/504 for a server gone behind
it) is not unreachable, so its answers count differently. The same answer to every request
(llama.cpp's HTTP 500 for a `json_schema` response format it cannot serve) is those
requests' problem: it never trips the breaker, and each request fails on its own retries
with the server's message. Varied answers may trip it, but once `MAX_ANSWERED_PROBES`
probes in a row are answered that way the breaker gives up at once instead of waiting for
`max_outage`: a server that answers is not coming back, it is there.

Outages are kept in `outages` (start, duration, recovered) for the run's summary, measured
from the server's answers: from the first failure of the streak that tripped the breaker to
the sending of the probe that got an answer (not from the trip, nor to the probe's answer).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from .admission import Admission, Feedback, PermitBase, feedback
from .errors import BatchCancelledError, ProviderOutageError, ServerError, TokenLimitError
from .types import CompletionRequest, CompletionResponse

__all__ = ["MAX_ANSWERED_PROBES", "Breaker", "Outage", "OutageBreaker", "Probe"]

DEFAULT_MAX_OUTAGE = 300.0
DEFAULT_TRIP_AFTER = 5
MAX_ANSWERED_PROBES = 5  # with the probes' backoff: given up some 7.5 s after opening
_GATEWAY_STATUSES = (502, 503, 504)  # a proxy saying the server behind it is gone
_MIN_REQUESTS = 3
_PROBE_FIRST = 0.5
_PROBE_MAX = 2.0


@dataclass(slots=True, frozen=True)
class Outage:
    """One outage: when it began (the breaker's clock), how long it lasted, and whether the
    server came back before the tolerance ran out."""

    started: float
    duration: float
    recovered: bool


class Breaker(Admission, Protocol):
    """What the engine needs of an outage breaker: `OutageBreaker`, or a Ray worker's view of
    the cluster's one (`llmbatch.ray.breaker.SharedBreaker`)."""

    outages: list[Outage]

    def excuses(self, error: BaseException) -> bool: ...


class Probe(Protocol):
    """What the breaker keeps on a permit it admitted: whether it went out as the probe of
    an outage (and when), and which request it carries."""

    probe: bool
    sent_at: float
    request_key: int


class _BreakerPermit(PermitBase):
    __slots__ = ("breaker", "probe", "request_key", "sent_at")

    def __init__(self, breaker: OutageBreaker, request_key: int) -> None:
        super().__init__()
        self.breaker = breaker
        self.request_key = request_key
        self.probe = False
        self.sent_at = 0.0  # a probe's admission time: the server was up by then

    def _admit_now(self) -> bool:
        return self.breaker.closed()

    async def _acquire(self) -> None:
        await self.breaker._acquire(self)

    def _release(self, response: CompletionResponse | None, error: BaseException | None) -> None:
        self.breaker._finish(self, response, error)


class OutageBreaker:
    """Closed (normal), open (waiting out an outage, one probe at a time), or given up."""

    def __init__(
        self,
        *,
        max_outage: float = DEFAULT_MAX_OUTAGE,
        trip_after: int = DEFAULT_TRIP_AFTER,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if max_outage < 0 or trip_after < 1:
            raise ValueError("max_outage must be >= 0 and trip_after >= 1")
        self.max_outage = max_outage
        self.trip_after = trip_after
        self._clock = clock
        self._sleep = sleep
        self._failures = 0
        self._failing: set[int] = set()  # requests among the consecutive failures
        self._only_refused = True  # all of them refused or reset connections
        self._answers: set[str] = set()  # the server's own 5xx messages among them
        self._unanswered = 0  # and how many of them got no answer of the server's
        self._answered_probes = 0  # probes in a row answered with a 5xx
        self.last_answer: ServerError | None = None  # the last of those answers
        self._opened_at: float | None = None
        self._first_failure = 0.0  # when the current streak of failures began
        self._probe_out = False
        self._next_probe = 0.0
        self._backoff = _PROBE_FIRST
        self._closed = asyncio.Event()
        self._closed.set()
        self.gave_up: ProviderOutageError | None = None
        self.outages: list[Outage] = []

    @property
    def is_open(self) -> bool:
        return self._opened_at is not None

    def admit(self, request: CompletionRequest) -> _BreakerPermit:
        return _BreakerPermit(self, id(request))

    def permit(self, request_key: int) -> _BreakerPermit:
        """A permit for the request `request_key` names, used without entering it: the Ray
        cluster's breaker admits (`try_admit`) and records outcomes (`finish`) for workers."""
        return _BreakerPermit(self, request_key)

    def finish(
        self,
        permit: _BreakerPermit,
        response: CompletionResponse | None,
        error: BaseException | None,
    ) -> None:
        """Record how `permit`'s attempt ended (what leaving an entered permit does)."""
        self._finish(permit, response, error)

    def probe_lost(self) -> None:
        """The probe out will never report (the Ray worker sending it died): another may go."""
        self._probe_out = False

    def excuses(self, error: BaseException) -> bool:
        """True when `error` is part of an outage the breaker is waiting out: the attempt
        should not count against the request's retries."""
        return self._opened_at is not None and self.gave_up is None and feedback(None, error).down

    def closed(self) -> bool:
        """Admitting without a wait: no outage is being waited out, none was given up on."""
        return self._opened_at is None and self.gave_up is None

    async def _acquire(self, permit: Probe) -> None:
        while (wait := self.try_admit(permit)) is not None:
            await self._closed_or_timer(wait)

    def try_admit(self, permit: Probe) -> float | None:
        """None: `permit` may go (as the probe if `permit.probe`); else seconds to wait
        before asking again (unless the breaker closes first). Raises `ProviderOutageError`
        once the breaker gave up. Without I/O: the Ray cluster's breaker runs it in an actor."""
        while True:
            if self.gave_up is not None:
                # Fresh: one traceback each.
                raise ProviderOutageError(str(self.gave_up), last_answer=self.last_answer)
            if self._opened_at is None:
                return None
            now = self._clock()
            if now - self._opened_at > self.max_outage:
                self._give_up(now)
                continue
            if not self._probe_out and now >= self._next_probe:
                self._probe_out = True
                permit.probe = True
                permit.sent_at = now
                return None
            # Wake at the next probe time (or after a backoff while a probe is out), or as
            # soon as the breaker closes.
            wait = self._backoff if self._probe_out else self._next_probe - now
            return max(0.0, min(wait, self._opened_at + self.max_outage - now + 1e-3))

    def _finish(
        self,
        permit: Probe,
        response: CompletionResponse | None,
        error: BaseException | None,
    ) -> None:
        self._heard(permit, feedback(response, error), error)

    def _heard(self, permit: Probe, fb: Feedback, error: BaseException | None) -> None:
        """An attempt admitted under `permit` ended with `fb` (read from `error`, if any)."""
        if fb.ok and not self._failures and self._opened_at is None and not permit.probe:
            return  # the hot path: a success while all is well changes nothing
        if permit.probe:
            self._probe_out = False
        if self.gave_up is not None:
            return  # the outage is over for this run, and already logged as not recovered
        if fb.down:
            if not self._failures:
                self._first_failure = self._clock()
            self._failures += 1
            self._failing.add(permit.request_key)
            if not isinstance(error, ConnectionError):
                self._only_refused = False
            answer = _server_answer(error)
            if answer is None:
                self._unanswered += 1
            else:
                self._answers.add(str(answer))
                self.last_answer = answer
            now = self._clock()
            # One request failing with a 5xx again and again may be that request's fault (and
            # its retries' business); an outage is failures across requests. A refused or
            # reset connection is never one request's fault: with one or two requests in
            # flight (low or "auto" concurrency) those alone are enough. One answer given to
            # every request is the requests' fault too.
            across = len(self._failing) >= _MIN_REQUESTS or self._only_refused
            same_answer = self._unanswered == 0 and len(self._answers) == 1
            tripped = self._failures >= self.trip_after and across and not same_answer
            if self._opened_at is None and tripped:
                self._opened_at = now
                self._closed.clear()
                self._backoff = _PROBE_FIRST
                self._next_probe = now + self._backoff
                self._answered_probes = 0
            elif permit.probe:
                self._backoff = min(_PROBE_MAX, self._backoff * 2)
                self._next_probe = now + self._backoff
                self._answered_probes = self._answered_probes + 1 if answer is not None else 0
                if self._answered_probes >= MAX_ANSWERED_PROBES:
                    self._give_up(now)
            return
        if isinstance(error, asyncio.CancelledError | BatchCancelledError | TokenLimitError):
            # Cancelled, or refused by a limiter after this link (the request is larger than
            # the per-minute token limit): the attempt never got an answer from the server.
            return
        if fb.timed_out:
            # No answer either: not an outage sign on its own (a queueing server times out
            # under load; the concurrency gate answers that), but no proof of life: a probe
            # that timed out keeps the breaker open.
            if permit.probe:
                now = self._clock()
                self._backoff = min(_PROBE_MAX, self._backoff * 2)
                self._next_probe = now + self._backoff
            return
        # Any answer that is not an outage (a success, a 400, a 429) means the server is up.
        self._failures = 0
        self._failing.clear()
        self._only_refused = True
        self._answers.clear()
        self._unanswered = 0
        if self._opened_at is not None:
            # Up since this probe was sent, at the latest; down since the streak's first failure.
            began = min(self._first_failure, self._opened_at)
            back = permit.sent_at if permit.probe else self._clock()
            self.outages.append(Outage(began, max(0.0, back - began), True))
            self._opened_at = None
            self._closed.set()

    async def _closed_or_timer(self, seconds: float) -> None:
        # The timer is the injected sleep, so tests run the breaker in virtual time.
        closed = asyncio.ensure_future(self._closed.wait())
        timer = asyncio.ensure_future(self._sleep(seconds))
        try:
            await asyncio.wait({closed, timer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            closed.cancel()
            timer.cancel()

    def _give_up(self, now: float) -> None:
        assert self._opened_at is not None
        duration = now - self._opened_at
        began = min(self._first_failure, self._opened_at)
        self.outages.append(Outage(began, now - began, False))
        if self._answered_probes >= MAX_ANSWERED_PROBES and self.last_answer is not None:
            self.gave_up = ProviderOutageError(
                f"the server answered every attempt with an error for {duration:.0f}s (last: "
                f"{self.last_answer}); not sent",
                last_answer=self.last_answer,
            )
        else:
            self.gave_up = ProviderOutageError(
                f"the server was unreachable for {duration:.0f}s, longer than "
                f"max_outage={self.max_outage:g}s; not sent",
                last_answer=self.last_answer,
            )
        self._closed.set()


def _server_answer(error: BaseException | None) -> ServerError | None:
    """`error` when it is a 5xx the server answered itself, with a body (not a gateway's)."""
    if isinstance(error, ServerError) and error.status_code not in _GATEWAY_STATUSES:
        return error if getattr(error, "body", None) is not None else None
    return None
