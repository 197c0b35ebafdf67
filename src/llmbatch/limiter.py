"""Pacing to requests and tokens per minute: smooth, fair, cancellation-safe and adaptive.

    limiter = RateLimiter(requests_per_minute=1200, tokens_per_minute=400_000)
    processor = BatchProcessor(client, BatchProcessorConfig(limiter=limiter))
    async with limiter.admit(request) as permit: ...          # what the engine does

How it paces: GCRA (the "virtual scheduling" form of a leaky bucket). Each admission reserves
the next slot on a timeline and sleeps until it: waiters are served strictly in arrival order,
each wakes exactly once at its own time (no thundering herd), and at most `burst_seconds`
worth of requests (default one second's) can go at once after an idle spell. The seed's Go
limiter released a whole minute's quota at start and then stalled; this one never does.
There is one timeline per budget: requests, tokens (input + output, OpenAI's one limit), and
input and output tokens apart (Anthropic limits them separately); a request takes the latest
of its slots. Tokens are charged from an estimate before the call (input characters / 4;
output `max_tokens`) and settled with the usage the provider reports.

Adaptive (the default): rate-limit headers (`x-ratelimit-*`, `anthropic-ratelimit-*`) state
the server's limits and remaining budgets; the limiter tightens to them and syncs. A server
that refuses without saying its limit (429 with only a `retry-after` or nothing at all, 503
or 529 "overloaded") is probed with CUBIC congestion control, one cut per congestion event
(see `llmbatch.rate_control`). A Retry-After the server states precisely (with its limits, or
longer than a second) pauses the whole limiter, so no worker hammers the server meanwhile;
a bare `retry-after: 1` (the smallest a seconds-granular header can say) only delays the
refused request, since the cut already lets the server's bucket refill. With no limits
configured the limiter admits freely until the server first pushes back.

Written here rather than taken from aiolimiter: that library has no token/request pair, no
settle step, no pause, and no adaptation to server feedback.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from .admission import Feedback, PermitBase, feedback
from .errors import TokenLimitError
from .rate_control import CubicRate
from .text import chars_to_tokens
from .types import CompletionRequest, CompletionResponse, RateLimitInfo

__all__ = [
    "Estimate",
    "RateLimiter",
    "RateLimiterStatus",
    "RatePermit",
    "estimate_tokens",
]

DEFAULT_CHARS_PER_TOKEN = 4.0
DEFAULT_BURST_SECONDS = 1.0
# Pace a little under the limit: a server's bucket has no slack once we run at exactly its
# rate, and any jitter in arrival times would then cost a 429.
DEFAULT_SAFETY_MARGIN = 0.02
DEFAULT_MAX_PAUSE = 120.0
# A seconds-granular Retry-After of 1 says "within a second", usually far less: not worth
# stopping every worker for. Longer ones, and precise ones sent with the limits, are.
SHORT_RETRY_AFTER = 1.0
_NO_LIMITS = (None, None, None, None)
_NO_COSTS = (0.0, 0.0, 0.0, 0.0)


@dataclass(slots=True, frozen=True)
class Estimate:
    """Tokens a request is charged before the call: input from its text, output from its
    output limit (`max_tokens` or the body's own; 0 when unset; settled with the real usage
    afterwards)."""

    input: int
    output: int

    @property
    def total(self) -> int:
        return self.input + self.output

    @classmethod
    def of(
        cls, request: CompletionRequest, chars_per_token: float = DEFAULT_CHARS_PER_TOKEN
    ) -> Estimate:
        chars = request.text_length()
        return cls(chars_to_tokens(chars, chars_per_token), request.output_limit() or 0)


def estimate_tokens(
    request: CompletionRequest, chars_per_token: float = DEFAULT_CHARS_PER_TOKEN
) -> int:
    """Tokens a request may use: its input characters / `chars_per_token` plus `max_tokens`.

    Never downloads a tokenizer; the provider's reported usage corrects the estimate later.
    """
    return Estimate.of(request, chars_per_token).total


@dataclass(slots=True, frozen=True)
class RateLimiterStatus:
    """A snapshot, like the seed's `GetStatus()`. Limits are the effective ones (after
    adaptation); `available_*` is what could go right now; `paused_for` is seconds left of a
    pause; `cuts` counts congestion events answered by a rate cut."""

    requests_per_minute: float | None
    tokens_per_minute: float | None
    available_requests: float | None
    available_tokens: float | None
    waiting: int
    in_flight: int
    paused_for: float
    rate_limited: int
    input_tokens_per_minute: float | None = None
    output_tokens_per_minute: float | None = None
    cuts: int = 0


class _Timeline:
    """One timeline: a per-minute limit (configured, stated by the server) and its GCRA state."""

    __slots__ = ("configured", "name", "stated", "tat")

    def __init__(self, name: str, configured: float | None, start: float) -> None:
        if configured is not None and configured <= 0:
            raise ValueError(f"{name} must be > 0, got {configured}")
        self.name = name
        self.configured = configured
        self.stated: float | None = None
        self.tat = start  # theoretical arrival time: when the next unit would be "on time"

    def limit(self) -> float | None:
        if self.stated is None:
            return self.configured
        if self.configured is None:
            return self.stated
        return min(self.configured, self.stated)


class RatePermit(PermitBase):
    """One attempt admitted by a `RateLimiter`: `async with limiter.admit(req) as permit`."""

    __slots__ = ("_estimate", "_request", "booked", "costs", "generation", "limiter")

    def __init__(
        self,
        limiter: RateLimiter,
        estimate: Estimate | None,
        request: CompletionRequest | None = None,
    ) -> None:
        super().__init__()
        self.limiter = limiter
        # Made from the request when first needed: a limiter that knows no limit yet (the
        # default) admits without one.
        self._estimate = estimate
        self._request = request
        self.generation = 0
        self.costs: tuple[float, ...] = ()
        # The slot `_admit_now` booked but could not take at once: (slot, costs, generation,
        # pause epoch, cut epoch); `_acquire` waits for it.
        self.booked: tuple[float, tuple[float, ...], int, int, int] | None = None

    @property
    def estimate(self) -> Estimate:
        if self._estimate is None:
            assert self._request is not None
            self._estimate = Estimate.of(self._request, self.limiter.chars_per_token)
        return self._estimate

    def _admit_now(self) -> bool:
        return self.limiter._admit_now(self)

    async def _acquire(self) -> None:
        await self.limiter._acquire(self)

    def _release(self, response: CompletionResponse | None, error: BaseException | None) -> None:
        self.limiter._finish(self, response, error)

    def release(self, response: CompletionResponse | None, error: BaseException | None) -> None:
        """Release a permit taken with `acquire()` (the context manager does this itself)."""
        if self._entered:
            self._entered = False
            self._release(response, error)


class RateLimiter:
    """Requests and tokens per minute for any number of batches and clients.

    `None` for a limit means "unknown": admit freely, learn it from the server. Set
    `adaptive=False` to ignore server feedback entirely. `clock` and `sleep` are injectable.
    The limiter binds to no event loop until used, and must be used from one loop at a time.
    """

    def __init__(
        self,
        requests_per_minute: float | None = None,
        tokens_per_minute: float | None = None,
        *,
        input_tokens_per_minute: float | None = None,
        output_tokens_per_minute: float | None = None,
        burst_seconds: float = DEFAULT_BURST_SECONDS,
        safety_margin: float = DEFAULT_SAFETY_MARGIN,
        adaptive: bool = True,
        chars_per_token: float = DEFAULT_CHARS_PER_TOKEN,
        default_pause: float | None = None,  # unused since refusals without Retry-After cut
        max_pause: float = DEFAULT_MAX_PAUSE,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if burst_seconds < 0 or not 0 <= safety_margin < 1:
            raise ValueError("burst_seconds must be >= 0 and safety_margin in [0, 1)")
        start = clock()
        self._req = _Timeline("requests_per_minute", requests_per_minute, start)
        self._tok = _Timeline("tokens_per_minute", tokens_per_minute, start)
        self._in = _Timeline("input_tokens_per_minute", input_tokens_per_minute, start)
        self._out = _Timeline("output_tokens_per_minute", output_tokens_per_minute, start)
        self.burst_seconds = burst_seconds
        self.safety_margin = safety_margin
        self.adaptive = adaptive
        self.chars_per_token = chars_per_token
        self.max_pause = max_pause
        self._clock = clock
        self._sleep = sleep
        self.control = CubicRate(clock=clock)
        self.control.ceiling = _per_second(requests_per_minute)
        self._pause_until = start
        self._epoch = 0  # bumped by a pause: sleeping waiters must then take a new slot
        self._cut_epoch = 0  # bumped by a cut: the booked schedule is void, rebook at the new rate
        self._waiting = 0
        self._in_flight = 0
        self._rate_limited = 0

    # -- public ---------------------------------------------------------------------------

    @property
    def configured_rpm(self) -> float | None:
        return self._req.configured

    @property
    def configured_tpm(self) -> float | None:
        return self._tok.configured

    @property
    def requests_per_minute(self) -> float | None:
        """The effective request limit: configured, stated by the server, or learned."""
        limit = self._req.limit()
        learned = self.control.rate
        if learned is None:
            return limit
        learned_rpm = learned * 60.0
        return learned_rpm if limit is None else min(limit, learned_rpm)

    @property
    def tokens_per_minute(self) -> float | None:
        return self._tok.limit()

    @property
    def input_tokens_per_minute(self) -> float | None:
        return self._in.limit()

    @property
    def output_tokens_per_minute(self) -> float | None:
        return self._out.limit()

    @property
    def epoch(self) -> int:
        """Bumped by every pause: slots reserved before it belong to a discarded schedule."""
        return self._epoch

    @property
    def generation(self) -> int:
        """Congestion events answered by a cut so far; attempts carry the one they were
        admitted under, so the refusals of one event cut once."""
        return self.control.generation

    def status(self) -> RateLimiterStatus:
        now = self._clock()
        rpm, tpm = self.requests_per_minute, self.tokens_per_minute
        avail_r = avail_t = None
        if rpm:
            avail_r = max(0.0, (now + self.burst_seconds - self._req.tat) / self._interval(rpm))
        if tpm:
            avail_t = max(0.0, (now + self.burst_seconds - self._tok.tat) / self._interval(tpm))
        return RateLimiterStatus(
            requests_per_minute=rpm,
            tokens_per_minute=tpm,
            available_requests=avail_r,
            available_tokens=avail_t,
            waiting=self._waiting,
            in_flight=self._in_flight,
            paused_for=max(0.0, self._pause_until - now),
            rate_limited=self._rate_limited,
            input_tokens_per_minute=self.input_tokens_per_minute,
            output_tokens_per_minute=self.output_tokens_per_minute,
            cuts=self.control.cuts,
        )

    def admit(self, request: CompletionRequest) -> RatePermit:
        """`async with limiter.admit(request) as permit:` waits for a slot sized to the
        request's token estimate; leaving the block feeds the outcome back."""
        return RatePermit(self, None, request)

    async def acquire(self, tokens: int = 0, *, output_tokens: int = 0) -> RatePermit:
        """Wait until one request of `tokens` estimated input tokens (plus `output_tokens`)
        may start; release the returned permit with `permit.release(response, error)`.

        Raises `TokenLimitError` at once if the request exceeds a whole per-minute budget.
        If the waiting task is cancelled, its slot is given back.
        """
        permit = RatePermit(self, Estimate(tokens, output_tokens))
        await permit.__aenter__()
        return permit

    def lease(
        self, count: int, tokens: int = 0, *, input_tokens: int = 0, output_tokens: int = 0
    ) -> list[float]:
        """Reserve `count` request slots at once (the tokens of each budget charged with the
        first); return each slot's delay in seconds from now.

        For handing capacity to other processes in slices (the Ray cluster limiter): they
        wait out the delays locally instead of asking once per request.
        """
        self._check_needs(tokens, input_tokens, output_tokens)
        now = self._clock()
        delays = []
        for i in range(count):
            units = (1, tokens, input_tokens, output_tokens) if i == 0 else (1, 0, 0, 0)
            slot, _, _ = self._reserve_units(units)
            delays.append(max(0.0, slot - now))
        return delays

    def give_back(
        self, count: int, tokens: int = 0, *, input_tokens: int = 0, output_tokens: int = 0
    ) -> None:
        """Return leased slots and tokens that were not used."""
        units = (count, tokens, input_tokens, output_tokens)
        costs = tuple(
            u * self._interval(lim) if lim else 0.0
            for u, lim in zip(units, self._limits(), strict=True)
        )
        self._unreserve(costs)

    def settle_tokens(self, tokens: int = 0, input_tokens: int = 0, output_tokens: int = 0) -> None:
        """Charge (positive) or refund (negative) tokens on each budget: usage reported
        against an estimate made elsewhere (a Ray worker's)."""
        floor = self._clock() - self.burst_seconds
        for budget, delta in (
            (self._tok, tokens),
            (self._in, input_tokens),
            (self._out, output_tokens),
        ):
            limit = budget.limit()
            if limit and delta:
                # A refund never creates more than the burst allowance.
                budget.tat = max(budget.tat + delta * self._interval(limit), floor)

    def settle(
        self, permit_or_estimate: RatePermit | int, actual_tokens: int, actual_output: int = 0
    ) -> None:
        """Correct a charge with the tokens actually used: refund the rest or charge extra.

        With a permit, `actual_tokens` is the input tokens used and `actual_output` the output
        tokens; with a bare estimate (the old form), `actual_tokens` is the total.
        """
        if isinstance(permit_or_estimate, RatePermit):
            est = permit_or_estimate.estimate
            actual = Estimate(actual_tokens, actual_output)
        else:
            est = Estimate(permit_or_estimate, 0)
            actual = Estimate(actual_tokens, 0)
        self.settle_tokens(
            actual.total - est.total, actual.input - est.input, actual.output - est.output
        )

    def pause(self, seconds: float) -> None:
        """Stop all admissions for `seconds`. Waiters are rescheduled after it."""
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
        self._restart_schedule(until)

    def observe(self, info: RateLimitInfo) -> None:
        """Tighten to the limits a server states, and sync to its remaining budgets."""
        if not self.adaptive:
            return
        now = self._clock()
        for budget, limit, remaining in (
            (self._req, info.limit_requests, info.remaining_requests),
            (self._tok, info.limit_tokens, info.remaining_tokens),
            (self._in, info.limit_input_tokens, info.remaining_input_tokens),
            (self._out, info.limit_output_tokens, info.remaining_output_tokens),
        ):
            if not limit or limit <= 0:
                continue
            budget.stated = float(limit)
            if budget is self._req:
                # A stated limit is the ceiling of whatever the probing learned.
                self.control.ceiling = _per_second(budget.limit())
            effective = self.requests_per_minute if budget is self._req else budget.limit()
            if remaining is not None and 0 <= remaining <= limit and effective:
                floor = now + self.burst_seconds - remaining * self._interval(effective)
                budget.tat = max(budget.tat, floor)

    def report(self, response: CompletionResponse | None, error: BaseException | None) -> None:
        """Feed back how an attempt ended, for callers that hold no permit."""
        self.apply(feedback(response, error), self.generation)

    def apply(self, fb: Feedback, generation: int) -> bool:
        """Act on one attempt's feedback; `generation` is the one it was admitted under.

        Returns True when the limiter paused for the server's Retry-After (so the refused
        request need not sleep it again before its retry).
        """
        if fb.ok:
            if fb.rate_limit is not None:
                self.observe(fb.rate_limit)
            self.control.succeeded()
            return False
        if not fb.congested:
            return False
        self._rate_limited += 1
        if not self.adaptive:
            return False
        if fb.rate_limit is not None:
            self.observe(fb.rate_limit)
        # The server said its limits: it refused because we ran ahead of its budget, which
        # the headers have just resynced. Otherwise probe: one cut per congestion event.
        cut = not states_limits(fb) and self.control.congested(generation)
        if pauses_everyone(fb):
            assert fb.retry_after is not None
            self.pause(fb.retry_after)
            return True
        if cut:
            self._rebook(self._clock())
        return False

    # -- internals ------------------------------------------------------------------------

    def _interval(self, per_minute: float) -> float:
        return 60.0 / (per_minute * (1.0 - self.safety_margin))

    def _limits(self) -> tuple[float | None, float | None, float | None, float | None]:
        return (
            self.requests_per_minute,
            self._tok.limit(),
            self._in.limit(),
            self._out.limit(),
        )

    def _check_fits(self, est: Estimate) -> None:
        self._check_needs(est.total, est.input, est.output)

    def _check_needs(self, tokens: int, input_tokens: int, output_tokens: int) -> None:
        needs = ((self._tok, tokens), (self._in, input_tokens), (self._out, output_tokens))
        for budget, need in needs:
            limit = budget.limit()
            if limit is not None and need > limit:
                unit = budget.name.removesuffix("_per_minute").replace("_", " ")
                raise TokenLimitError(
                    f"request needs ~{need} {unit} but the limit is {limit:.0f} {unit}/min:"
                    " it can never be sent (shorten the prompt or lower max_tokens)"
                )

    def _admit_now(self, permit: RatePermit) -> bool:
        """Book the permit's slot; take it at once if it is due (True), else leave the
        booking for `_acquire` to wait out."""
        if self._limits() == _NO_LIMITS and self._clock() >= self._pause_until:
            # Nothing known yet (the default until the server pushes back): admit freely,
            # book nothing.
            self._admitted(permit, _NO_COSTS, self.control.generation)
            return True
        est = permit.estimate
        self._check_fits(est)
        # The schedule the slot belongs to: a refusal of an attempt booked before a cut is
        # part of the event that cut.
        generation = self.control.generation
        slot, costs, now = self._reserve_units((1, est.total, est.input, est.output))
        if slot <= now:
            self._admitted(permit, costs, generation)
            return True
        permit.booked = (slot, costs, generation, self._epoch, self._cut_epoch)
        return False

    async def _acquire(self, permit: RatePermit) -> None:
        est = permit.estimate
        if permit.booked is None:  # called on its own, not after `_admit_now`
            self._check_fits(est)
        self._waiting += 1
        try:
            while True:
                if permit.booked is not None:
                    slot, costs, generation, epoch, cut_epoch = permit.booked
                    permit.booked = None
                else:
                    epoch, cut_epoch = self._epoch, self._cut_epoch
                    generation = self.control.generation
                    slot, costs, _ = self._reserve_units((1, est.total, est.input, est.output))
                delay = slot - self._clock()
                if delay <= 0:
                    break
                try:
                    await self._sleep(delay)
                except BaseException:
                    if cut_epoch == self._cut_epoch:
                        self._unreserve(costs)
                    raise
                if cut_epoch != self._cut_epoch:
                    # A cut voided the schedule our slot was on: take one on the new, slower
                    # one. Waiters wake in their old order, so they rebook in it too.
                    continue
                if self._epoch == epoch or self._clock() >= self._pause_until:
                    break
                # A pause began while we slept and our slot falls inside it: give the slot
                # back and queue again behind the pause.
                self._unreserve(costs)
        finally:
            self._waiting -= 1
        self._admitted(permit, costs, generation)

    def _admitted(self, permit: RatePermit, costs: tuple[float, ...], generation: int) -> None:
        self._in_flight += 1
        self.control.sent()
        permit.costs = costs
        permit.generation = generation

    def _reserve_units(
        self, units: tuple[int, int, int, int]
    ) -> tuple[float, tuple[float, ...], float]:
        """Book the next slot; return (start time, the cost booked on each timeline, now)."""
        now = self._clock()
        slot = max(now, self._pause_until)
        limits = self._limits()
        if limits == _NO_LIMITS:
            return slot, _NO_COSTS, now  # nothing known yet: admit freely, book nothing
        budgets = (self._req, self._tok, self._in, self._out)
        costs = tuple(
            u * self._interval(lim) if lim else 0.0 for u, lim in zip(units, limits, strict=True)
        )
        # A unit fits when, with its own cost added, the bucket holds at most `burst_seconds`
        # of work; a unit larger than the burst needs the bucket empty.
        for budget, cost, lim in zip(budgets, costs, limits, strict=True):
            if lim:
                slot = max(slot, budget.tat - max(0.0, self.burst_seconds - cost))
        for budget, cost, lim in zip(budgets, costs, limits, strict=True):
            if lim:
                budget.tat = max(budget.tat, slot) + cost
        return slot, costs, now

    def _unreserve(self, costs: tuple[float, ...]) -> None:
        # Never below "bucket full now", and never so low that a slot would fall inside a
        # pause (or burst right after one).
        floor = self._clock() - self.burst_seconds
        rpm = self.requests_per_minute
        for budget, cost in zip((self._req, self._tok, self._in, self._out), costs, strict=True):
            if not cost:
                continue
            after_pause = self._pause_until
            if budget is self._req and rpm:
                after_pause += max(0.0, self.burst_seconds - self._interval(rpm))
            budget.tat = max(floor, after_pause, budget.tat - cost)

    def _rebook(self, now: float) -> None:
        """After a cut: the slots booked at the old rate would keep sending too fast for as
        long as the queue of waiters is long. Void them; the schedule starts again now, at
        the new rate, without a burst into the server's emptied bucket."""
        self._cut_epoch += 1
        rpm = self.requests_per_minute
        if rpm:
            self._req.tat = max(now, self._pause_until) + max(
                0.0, self.burst_seconds - self._interval(rpm)
            )

    def _restart_schedule(self, at: float) -> None:
        """No burst into a server whose bucket is empty: the next slots start at `at`, one
        interval apart."""
        rpm = self.requests_per_minute
        if rpm:
            resume = at + max(0.0, self.burst_seconds - self._interval(rpm))
            self._req.tat = max(self._req.tat, resume)
        for budget in (self._tok, self._in, self._out):
            budget.tat = max(budget.tat, at)

    def _finish(
        self,
        permit: RatePermit,
        response: CompletionResponse | None,
        error: BaseException | None,
    ) -> None:
        self._in_flight -= 1
        if response is not None and permit.costs is not _NO_COSTS:
            # Nothing booked (no limit was known): nothing to settle.
            usage = response.usage
            if usage.prompt_tokens or usage.completion_tokens:
                self.settle(permit, usage.prompt_tokens, usage.completion_tokens)
        fb = permit.load_feedback(response, error)
        permit.paused_for_retry = self.apply(fb, permit.generation)


def states_limits(fb: Feedback) -> bool:
    """The refusal came with the server's limits (any of its budgets)."""
    info = fb.rate_limit
    return info is not None and bool(
        info.limit_requests
        or info.limit_tokens
        or info.limit_input_tokens
        or info.limit_output_tokens
    )


def pauses_everyone(fb: Feedback) -> bool:
    """The pause rule, shared by the local and the Ray limiters: a refusal's Retry-After stops
    every admission when the server states it precisely (with its limits, or longer than a
    second); a bare `retry-after: 1` only delays the refused request."""
    return fb.retry_after is not None and (states_limits(fb) or fb.retry_after > SHORT_RETRY_AFTER)


def _per_second(per_minute: float | None) -> float | None:
    return None if per_minute is None else per_minute / 60.0
