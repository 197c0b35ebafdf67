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

from .admission import feedback
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
        super().__init__(limiter, None, request)
        self.breaker = breaker
        self.request_key = id(request)
        self.probe = False
        self.sent_at = 0.0

    def _admit_now(self) -> bool:
        # While the breaker is closed it holds nothing: a refusal of the limiter's (a request
        # larger than a whole budget) leaves nothing to give back.
        return self.breaker.closed() and self.limiter._admit_now(self)

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
        fb = feedback(response, error)
        # Released in the chain's order, the limiter first; each release runs even if the
        # other fails, and the first failure is raised.
        failure: BaseException | None = None
        try:
            self.limiter._heard(self, response, self.as_load(fb))
        except BaseException as exc:
            failure = exc
        try:
            self.breaker._heard(self, fb, error)
        except BaseException as exc:
            failure = failure or exc
        if failure is not None:
            raise failure


class GuardedLimiter:
    """`AdmissionChain(breaker, limiter)` for exactly these two: one permit per attempt."""

    def __init__(self, breaker: OutageBreaker, limiter: RateLimiter) -> None:
        self.breaker = breaker
        self.limiter = limiter

    def admit(self, request: CompletionRequest) -> _GuardedPermit:
        return _GuardedPermit(self.breaker, self.limiter, request)
