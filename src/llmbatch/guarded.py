"""The engine's default admission: the outage breaker and the rate limiter, one permit for both.

    admission = GuardedLimiter(OutageBreaker(), RateLimiter())
    async with admission.admit(request) as permit:   # waits out an outage, then for a slot
        ...

Exactly what `AdmissionChain(breaker, limiter)` does (the breaker admits first and is
released last; a failure part-way gives back what was taken), at the cost of one permit
instead of three objects per attempt, and with the attempt's outcome read once for both: every
run with the defaults pays this per request, so it is worth the one class.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from .admission import _OK, feedback
from .breaker import OutageBreaker
from .limiter import RateLimiter, RatePermit
from .types import CompletionRequest, CompletionResponse

__all__ = ["GuardedLimiter"]


class _GuardedPermit(RatePermit):
    """A `RatePermit` that is also the breaker's (`breaker.Probe`)."""

    __slots__ = ("breaker", "probe", "request_key", "sent_at")

    def __init__(
        self, breaker: OutageBreaker, limiter: RateLimiter, request: CompletionRequest
    ) -> None:
        # `PermitBase`'s, `RatePermit`'s and its own fields, set in one `__init__` rather than
        # three chained ones (one is made per attempt); tests/test_guarded.py checks that
        # every slot of the three is set.
        self._response = None
        self._entered = False
        self.paused_for_retry = False
        self.outage = False
        self.limiter = limiter
        self._estimate = None
        self._request = request
        self.generation = 0
        self.costs = ()
        self.booked = None
        self.admitted_at = None
        self.window = False
        self.breaker = breaker
        self.request_key = id(request)
        self.probe = False
        self.sent_at = 0.0

    def _admit_now(self) -> bool:
        # While the breaker is closed it holds nothing: a refusal of the limiter's (a request
        # larger than a whole budget) leaves nothing to give back.
        return self.breaker.closed() and self.limiter._admit_now(self)

    def enter_now(self) -> bool:
        # `PermitBase.enter_now` with `_admit_now` and `breaker.closed()` inlined: every
        # attempt passes here, and each Python call costs (see `_release`).
        breaker = self.breaker
        if breaker._opened_at is None and breaker.gave_up is None and self.limiter._admit_now(self):
            self._entered = True
            return True
        return False

    async def _acquire(self) -> None:
        breaker, limiter = self.breaker, self.limiter
        if self.booked is None:
            await breaker._acquire(self)  # the breaker is open: wait out the outage first
        # Else the breaker was closed and the limiter booked a slot: wait for it.
        try:
            if self.booked is not None or not limiter._admit_now(self):
                await limiter._acquire(self)
        except BaseException as exc:
            breaker._finish(self, None, exc)  # as a chain gives back its first link
            raise

    def _release(self, response: CompletionResponse | None, error: BaseException | None) -> None:
        if error is None and response is not None and response.rate_limit is None:
            # A plain answer, the common case: what `feedback` reads from it, and `as_load`
            # leaves a success as it is (it clears only a refusal's or a timeout's signals).
            fb = load = _OK
        else:
            fb = feedback(response, error)
            load = self.as_load(fb)
        # Released in the chain's order, the limiter first; each release runs even if the
        # other fails, and the first failure is raised.
        failure: BaseException | None = None
        try:
            self.limiter._heard(self, response, load)
        except BaseException as exc:
            failure = exc
        breaker = self.breaker
        # `breaker._heard`'s hot path, inlined: a success while all is well changes nothing.
        # (Over HTTP the client's code evicts ours from the CPU's caches between an attempt's
        # admission and its answer: each call the admission makes costs 3-4x its in-cache
        # time, and the calls are what keep llmbatch's CPU per request above a bare loop's.)
        if fb is not _OK or breaker._failures or breaker._opened_at is not None or self.probe:
            try:
                breaker._heard(self, fb, error)
            except BaseException as exc:
                failure = failure or exc
        if failure is not None:
            raise failure


class GuardedLimiter:
    """`AdmissionChain(breaker, limiter)` for exactly these two: one permit per attempt."""

    def __init__(self, breaker: OutageBreaker, limiter: RateLimiter) -> None:
        self.breaker = breaker
        self.limiter = limiter
        # `admit(request)` builds the permit itself: a partial calls the class from C, with
        # no Python frame of its own per attempt.
        self.admit: Callable[[CompletionRequest], _GuardedPermit] = partial(
            _GuardedPermit, breaker, limiter
        )
