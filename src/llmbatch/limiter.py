"""Pacing to requests/min and tokens/min: smooth, fair, cancellation-safe and adaptive.

    limiter = RateLimiter(requests_per_minute=1200, tokens_per_minute=400_000)
    processor = BatchProcessor(client, BatchProcessorConfig(rate_limiter=limiter))
    client = ThrottledLLMClient(client, requests_per_minute=10)     # the seed's face

How it paces: GCRA (the "virtual scheduling" form of a leaky bucket). Each admission reserves
the next slot on a timeline and sleeps until it: waiters are served strictly in arrival order,
each wakes exactly once at its own time (no thundering herd), and at most `burst_seconds`
worth of requests (default one second's) can go at once after an idle spell. The seed's Go
limiter released a whole minute's quota at start and then stalled; this one never does.
Requests and tokens are two timelines; a request takes the later of its two slots.

Tokens are charged from an estimate before the call (characters / 4 plus `max_tokens`) and
settled with the usage the provider returns: unused tokens are refunded, extra ones charged.

Adaptive: rate-limit headers (`x-ratelimit-*`, `anthropic-ratelimit-*`) tighten the limits to
what the server says and sync the remaining budget; a 429 pauses the whole limiter for its
Retry-After (or a backoff) instead of letting every worker hammer again, and with no header
to go by the rate is cut multiplicatively and regrown additively (AIMD). With no limits
configured the limiter admits freely until the server first pushes back, then converges.

Written here rather than taken from aiolimiter: that library has no token/request pair, no
settle step, no pause, and no adaptation to server feedback.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from .errors import RateLimitError, TokenBudgetError
from .types import CompletionRequest, CompletionResponse, RateLimitInfo

__all__ = [
    "RateLimiter",
    "RateLimiterStatus",
    "Reservation",
    "estimate_tokens",
]

DEFAULT_CHARS_PER_TOKEN = 4.0
DEFAULT_BURST_SECONDS = 1.0
# Pace a little under the limit: a server's bucket has no slack once we run at exactly its
# rate, and any jitter in arrival times would then cost a 429.
DEFAULT_SAFETY_MARGIN = 0.02
DEFAULT_PAUSE = 1.0
DEFAULT_MAX_PAUSE = 120.0
MIN_ADAPTIVE_RPM = 1.0


def estimate_tokens(
    request: CompletionRequest, chars_per_token: float = DEFAULT_CHARS_PER_TOKEN
) -> int:
    """Tokens a request may use: its input characters / `chars_per_token` plus `max_tokens`.

    Never downloads a tokenizer; the provider's reported usage corrects the estimate later.
    """
    return math.ceil(request.text_length() / chars_per_token) + (request.max_tokens or 0)


@dataclass(slots=True, frozen=True)
class RateLimiterStatus:
    """A snapshot, like the seed's `GetStatus()`. Limits are the effective ones (after
    adaptation); `available_*` is what could go right now; `paused_for` is seconds left of a
    429 pause."""

    requests_per_minute: float | None
    tokens_per_minute: float | None
    available_requests: float | None
    available_tokens: float | None
    waiting: int
    in_flight: int
    paused_for: float
    rate_limited: int


class Reservation:
    """One admitted attempt. `release` settles tokens and feeds back the outcome."""

    __slots__ = ("_done", "estimate", "limiter")

    def __init__(self, limiter: RateLimiter, estimate: int) -> None:
        self.limiter = limiter
        self.estimate = estimate
        self._done = False

    def release(self, response: CompletionResponse | None, error: BaseException | None) -> None:
        if self._done:
            return
        self._done = True
        self.limiter._finish(self, response, error)


class RateLimiter:
    """Requests-per-minute and tokens-per-minute limits for any number of batches and clients.

    `None` for a limit means "unknown": admit freely, learn it from the server. Set
    `adaptive=False` to ignore server feedback entirely. `clock` and `sleep` are injectable.
    The limiter binds to no event loop until used, and must be used from one loop at a time.
    """

    def __init__(
        self,
        requests_per_minute: float | None = None,
        tokens_per_minute: float | None = None,
        *,
        burst_seconds: float = DEFAULT_BURST_SECONDS,
        safety_margin: float = DEFAULT_SAFETY_MARGIN,
        adaptive: bool = True,
        chars_per_token: float = DEFAULT_CHARS_PER_TOKEN,
        default_pause: float = DEFAULT_PAUSE,
        max_pause: float = DEFAULT_MAX_PAUSE,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        for name, value in (
            ("requests_per_minute", requests_per_minute),
            ("tokens_per_minute", tokens_per_minute),
        ):
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        if burst_seconds < 0 or not 0 <= safety_margin < 1:
            raise ValueError("burst_seconds must be >= 0 and safety_margin in [0, 1)")
        self.configured_rpm = requests_per_minute
        self.configured_tpm = tokens_per_minute
        self.burst_seconds = burst_seconds
        self.safety_margin = safety_margin
        self.adaptive = adaptive
        self.chars_per_token = chars_per_token
        self.default_pause = default_pause
        self.max_pause = max_pause
        self._clock = clock
        self._sleep = sleep
        self._rpm = requests_per_minute  # effective limits, after adaptation
        self._tpm = tokens_per_minute
        start = clock()
        # Theoretical arrival times: the earliest moment the next unit would be "on time".
        self._tat_r = start
        self._tat_t = start
        self._pause_until = start
        self._epoch = 0  # bumped by a pause: sleeping waiters must then take a new slot
        self._waiting = 0
        self._in_flight = 0
        self._rate_limited = 0
        self._grow_step = 0.0  # set when a 429 without headers made us guess the rate

    # -- public ---------------------------------------------------------------------------

    @property
    def requests_per_minute(self) -> float | None:
        return self._rpm

    @property
    def tokens_per_minute(self) -> float | None:
        return self._tpm

    @property
    def epoch(self) -> int:
        """Bumped by every pause: slots reserved before it belong to a discarded schedule."""
        return self._epoch

    def status(self) -> RateLimiterStatus:
        now = self._clock()
        avail_r = avail_t = None
        if self._rpm:
            avail_r = max(0.0, (now + self.burst_seconds - self._tat_r) / self._interval_r())
        if self._tpm:
            avail_t = max(0.0, (now + self.burst_seconds - self._tat_t) / self._interval_t())
        return RateLimiterStatus(
            requests_per_minute=self._rpm,
            tokens_per_minute=self._tpm,
            available_requests=avail_r,
            available_tokens=avail_t,
            waiting=self._waiting,
            in_flight=self._in_flight,
            paused_for=max(0.0, self._pause_until - now),
            rate_limited=self._rate_limited,
        )

    async def admit(self, request: CompletionRequest) -> Reservation:
        """The engine's admission hook: wait for a slot sized to the request's estimate."""
        return await self.acquire(estimate_tokens(request, self.chars_per_token))

    async def acquire(self, tokens: int = 0) -> Reservation:
        """Wait until one request of `tokens` estimated tokens may start.

        Raises `TokenBudgetError` at once if `tokens` exceeds the whole per-minute budget.
        If the waiting task is cancelled, its reservation is given back.
        """
        if self._tpm is not None and tokens > self._tpm:
            raise TokenBudgetError(
                f"request needs ~{tokens} tokens but the limit is {self._tpm:.0f} tokens/min:"
                " it can never be sent (shorten the prompt or lower max_tokens)"
            )
        self._waiting += 1
        try:
            while True:
                epoch = self._epoch
                slot, cost_r, cost_t = self._reserve(tokens)
                delay = slot - self._clock()
                if delay <= 0:
                    break
                try:
                    await self._sleep(delay)
                except BaseException:
                    self._unreserve(cost_r, cost_t)
                    raise
                if self._epoch == epoch or self._clock() >= self._pause_until:
                    break
                # A 429 paused the limiter while we slept and our slot falls inside the
                # pause: give it back and queue again behind the pause.
                self._unreserve(cost_r, cost_t)
        finally:
            self._waiting -= 1
        self._in_flight += 1
        return Reservation(self, tokens)

    def lease(self, count: int, tokens: int = 0) -> list[float]:
        """Reserve `count` request slots at once (`tokens` charged with the first); return
        each slot's delay in seconds from now.

        For handing capacity to other processes in slices (the Ray cluster limiter): they
        wait out the delays locally instead of asking once per request.
        """
        if self._tpm is not None and tokens > self._tpm:
            raise TokenBudgetError(
                f"a lease of {tokens} tokens exceeds the limit of {self._tpm:.0f} tokens/min"
            )
        now = self._clock()
        delays = []
        for i in range(count):
            slot, _, _ = self._reserve(tokens if i == 0 else 0)
            delays.append(max(0.0, slot - now))
        return delays

    def give_back(self, count: int, tokens: int = 0) -> None:
        """Return leased slots and tokens that were not used."""
        cost_r = count * self._interval_r() if self._rpm else 0.0
        cost_t = tokens * self._interval_t() if self._tpm else 0.0
        self._unreserve(cost_r, cost_t)

    def settle(self, reservation_or_estimate: Reservation | int, actual_tokens: int) -> None:
        """Correct a charge with the tokens actually used: refund the rest or charge extra."""
        estimate = (
            reservation_or_estimate.estimate
            if isinstance(reservation_or_estimate, Reservation)
            else reservation_or_estimate
        )
        if self._tpm:
            self._tat_t += (actual_tokens - estimate) * self._interval_t()
            # A refund never creates more than the burst allowance.
            self._tat_t = max(self._tat_t, self._clock() - self.burst_seconds)

    def pause(self, seconds: float) -> None:
        """Stop all admissions for `seconds` (a 429). Waiters are rescheduled after it."""
        now = self._clock()
        until = now + min(max(0.0, seconds), self.max_pause)
        if until <= self._pause_until:
            return
        self._pause_until = until
        self._epoch += 1
        # After a pause the server's bucket is nearly empty: resume at one request per
        # interval, without a burst into it. The schedule is only ever pushed back, never
        # pulled forward: slots already handed out (to sleeping waiters here, or leased to
        # other processes) keep their place, so a pause cannot double-book them.
        if self._rpm:
            resume = until + max(0.0, self.burst_seconds - self._interval_r())
            self._tat_r = max(self._tat_r, resume)
        self._tat_t = max(self._tat_t, until)

    def observe(self, info: RateLimitInfo) -> None:
        """Tighten to the limits a server reports, and sync to its remaining budget."""
        if not self.adaptive:
            return
        now = self._clock()
        if info.limit_requests:
            self._rpm = _tighter(self.configured_rpm, info.limit_requests)
            if info.remaining_requests is not None and self._rpm:
                floor = now + self.burst_seconds - info.remaining_requests * self._interval_r()
                self._tat_r = max(self._tat_r, floor)
        if info.limit_tokens:
            self._tpm = _tighter(self.configured_tpm, info.limit_tokens)
            if info.remaining_tokens is not None and self._tpm:
                floor = now + self.burst_seconds - info.remaining_tokens * self._interval_t()
                self._tat_t = max(self._tat_t, floor)

    # -- internals ------------------------------------------------------------------------

    def _interval_r(self) -> float:
        assert self._rpm
        return 60.0 / (self._rpm * (1.0 - self.safety_margin))

    def _interval_t(self) -> float:
        assert self._tpm
        return 60.0 / (self._tpm * (1.0 - self.safety_margin))

    def _reserve(self, tokens: int) -> tuple[float, float, float]:
        """Book the next slot; return (start time, request cost, token cost) in seconds."""
        now = self._clock()
        slot = max(now, self._pause_until)
        cost_r = self._interval_r() if self._rpm else 0.0
        cost_t = tokens * self._interval_t() if self._tpm else 0.0
        # A unit fits when, with its own cost added, the bucket holds at most `burst_seconds`
        # of work; a unit larger than the burst needs the bucket empty.
        if self._rpm:
            slot = max(slot, self._tat_r - max(0.0, self.burst_seconds - cost_r))
        if self._tpm:
            slot = max(slot, self._tat_t - max(0.0, self.burst_seconds - cost_t))
        if self._rpm:
            self._tat_r = max(self._tat_r, slot) + cost_r
        if self._tpm:
            self._tat_t = max(self._tat_t, slot) + cost_t
        return slot, cost_r, cost_t

    def _unreserve(self, cost_r: float, cost_t: float) -> None:
        # Never below "bucket full now", and never so low that a slot would fall inside a
        # pause (or burst right after one).
        floor = self._clock() - self.burst_seconds
        if self._rpm:
            after_pause = self._pause_until + max(0.0, self.burst_seconds - self._interval_r())
            self._tat_r = max(floor, after_pause, self._tat_r - cost_r)
        if self._tpm:
            self._tat_t = max(floor, self._pause_until, self._tat_t - cost_t)

    def _finish(
        self,
        reservation: Reservation,
        response: CompletionResponse | None,
        error: BaseException | None,
    ) -> None:
        self._in_flight -= 1
        if response is not None and self._tpm:
            self.settle(reservation, response.usage.total_tokens or reservation.estimate)
        self.report(response, error)

    def report(self, response: CompletionResponse | None, error: BaseException | None) -> None:
        """Feed back how an attempt ended: headers tighten, a 429 pauses, successes regrow."""
        if response is not None:
            if response.rate_limit is not None:
                self.observe(response.rate_limit)
            self._grow()
        elif isinstance(error, RateLimitError):
            self._on_rate_limited(error)

    def _on_rate_limited(self, error: RateLimitError) -> None:
        self._rate_limited += 1
        if not self.adaptive:
            return
        if error.rate_limit is not None:
            self.observe(error.rate_limit)
        if error.rate_limit is None or not error.rate_limit.limit_requests:
            # Nothing to go by: cut the rate (AIMD's multiplicative decrease).
            current = self._rpm or self._observed_rpm()
            floor = MIN_ADAPTIVE_RPM
            self._rpm = max(floor, current * 0.7)
            self._grow_step = max(0.5, self._rpm * 0.01)
        self.pause(error.retry_after if error.retry_after is not None else self.default_pause)

    def _grow(self) -> None:
        # AIMD's additive increase, only for a rate we learned by cutting (not one the server
        # or the user stated), and never past the configured limit.
        if self._grow_step and self._rpm is not None:
            ceiling = self.configured_rpm or math.inf
            self._rpm = min(ceiling, self._rpm + self._grow_step)

    def _observed_rpm(self) -> float:
        # With no rate known, assume what is in flight turns over about once a second.
        return max(MIN_ADAPTIVE_RPM, 60.0 * max(1, self._in_flight + 1))


def _tighter(configured: float | None, reported: int) -> float:
    return float(reported) if configured is None else min(configured, float(reported))
