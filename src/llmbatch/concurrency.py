"""`max_concurrency="auto"`: find the concurrency where throughput stops growing and latency
starts to, for servers that queue instead of refusing.

    gate = ConcurrencyLimiter()                       # what the engine builds for "auto"
    async with gate.admit(request) as slot:           # waits while `limit` attempts are out
        ...                                           # the attempt's latency is measured

llama.cpp's server, vLLM and Ollama rarely answer 429: past their capacity they queue, and
latency grows with everything in flight until requests time out. No rate limit helps there;
the knob is how many requests are in flight. This is TCP Vegas applied to concurrency, as in
Netflix's concurrency-limits library: with `rtt_min` the latency without queueing (the lowest
recently seen) and `rtt` the recent latency, `queue = limit * (1 - rtt_min / rtt)` estimates
how many of our requests wait in the server's queue. Fewer than `alpha` queued: there is idle
capacity, grow; more than `beta`: shrink; in between: hold. A timeout or a refusal (429/503)
is a drop: cut multiplicatively, once per latency interval. Chosen over Gradient2 because the
queue estimate targets a small, bounded number of waiting requests directly, which is what
keeps latency near the best fixed setting; Gradient2's long-term average drifts up under
sustained queueing and lets latency creep.

Vegas reads latency as load. An LLM's latency also grows with the length of its answer, so
on providers whose answers vary a lot in length, `auto` can hold concurrency lower than a
fixed setting would; this is why it is not the default (see the README).
"""

from __future__ import annotations

import asyncio
import collections
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from .admission import PermitBase
from .types import CompletionRequest, CompletionResponse

__all__ = ["ConcurrencyLimiter", "ConcurrencyStatus"]

DEFAULT_INITIAL = 1  # start low: the first latencies are then the server's unloaded ones
DEFAULT_MAX = 256
_DROP_FACTOR = 0.7
_RTT_WINDOW = 30.0  # seconds after which the lowest latency is measured afresh
_RTT_MIN_DRIFT = 1.01  # at most +1% per window
_SMOOTHING = 0.3  # weight of a new latency sample in the recent average (reported only)


@dataclass(slots=True, frozen=True)
class ConcurrencyStatus:
    limit: int
    in_flight: int
    waiting: int
    rtt_min: float | None
    rtt: float | None


class _Slot(PermitBase):
    __slots__ = ("gate", "started")

    def __init__(self, gate: ConcurrencyLimiter) -> None:
        super().__init__()
        self.gate = gate
        self.started = 0.0

    async def _acquire(self) -> None:
        await self.gate._acquire()
        self.started = self.gate._clock()

    def _release(self, response: CompletionResponse | None, error: BaseException | None) -> None:
        self.gate._finish(self, response, error)


class ConcurrencyLimiter:
    """An adaptive bound on attempts in flight (an `Admission`). Waiters are served FIFO."""

    def __init__(
        self,
        *,
        initial: int = DEFAULT_INITIAL,
        min_limit: int = 1,
        max_limit: int = DEFAULT_MAX,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 1 <= min_limit <= initial <= max_limit:
            raise ValueError("need 1 <= min_limit <= initial <= max_limit")
        self.min_limit = min_limit
        self.max_limit = max_limit
        self._limit = float(initial)
        self._clock = clock
        self._in_flight = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._rtt: float | None = None
        self._rtt_min: float | None = None
        self._rtt_min_next: float | None = None  # the minimum of the window being measured
        self._window_start = clock()
        self._last_drop = -math.inf

    @property
    def limit(self) -> int:
        return max(self.min_limit, int(self._limit))

    def status(self) -> ConcurrencyStatus:
        return ConcurrencyStatus(
            self.limit, self._in_flight, len(self._waiters), self._rtt_min, self._rtt
        )

    def admit(self, request: CompletionRequest) -> _Slot:
        return _Slot(self)

    async def _acquire(self) -> None:
        if self._in_flight < self.limit and not self._waiters:
            self._in_flight += 1
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        try:
            await future
        except BaseException:
            if future.done() and not future.cancelled():
                self._in_flight -= 1  # handed a slot as we were cancelled: give it back
                self._wake()
            elif future in self._waiters:  # `_wake` may have dropped it, being cancelled
                self._waiters.remove(future)
            raise

    def _wake(self) -> None:
        while self._waiters and self._in_flight < self.limit:
            future = self._waiters.popleft()
            if not future.done():
                self._in_flight += 1
                future.set_result(None)

    def _finish(
        self, slot: _Slot, response: CompletionResponse | None, error: BaseException | None
    ) -> None:
        now = self._clock()
        in_flight = self._in_flight
        self._in_flight -= 1
        fb = slot.load_feedback(response, error)
        if fb.ok:
            self._sample(now - slot.started, now, in_flight)
        elif fb.timed_out or fb.congested:
            self._drop(now)
        self._wake()

    def _sample(self, rtt: float, now: float, in_flight: int) -> None:
        if rtt <= 0:
            return
        if now - self._window_start > _RTT_WINDOW:
            # Forget an old minimum slowly, in case the server became slower for good; not at
            # once, since while we keep it busy every recent latency includes its queue.
            if self._rtt_min is not None and self._rtt_min_next is not None:
                self._rtt_min = min(self._rtt_min_next, self._rtt_min * _RTT_MIN_DRIFT)
            self._rtt_min_next = None
            self._window_start = now
        self._rtt_min = rtt if self._rtt_min is None else min(self._rtt_min, rtt)
        assert self._rtt_min is not None
        self._rtt_min_next = rtt if self._rtt_min_next is None else min(self._rtt_min_next, rtt)
        self._rtt = rtt if self._rtt is None else (1 - _SMOOTHING) * self._rtt + _SMOOTHING * rtt
        limit = self._limit
        if in_flight * 2 < limit:
            return  # not using the limit: the latency says nothing about it
        step = max(1.0, math.log10(limit))
        alpha, beta = 2 * step, 4 * step
        # The sample itself, not the smoothed latency: a lagging average lets the limit
        # overshoot while the queue builds.
        queue = limit * (1 - self._rtt_min / rtt)
        if queue < alpha:
            limit += step
        elif queue > beta:
            limit -= step
        self._limit = min(float(self.max_limit), max(float(self.min_limit), limit))

    def _drop(self, now: float) -> None:
        # Timeouts and refusals of one overload arrive together: cut once per latency.
        if now - self._last_drop < (self._rtt_min or 0.0):
            return
        self._last_drop = now
        self._limit = max(float(self.min_limit), self._limit * _DROP_FACTOR)
