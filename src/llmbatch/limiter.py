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
refused request, since the cut already lets the server's bucket refill.

When the limits are known (given, or stated by the server earlier), a refusal that states
none is first taken for a stray (another client on the same key spent the bucket): the
limiter holds every admission `HOLD_SECONDS` and keeps the known rate, rather than learn a
rate below it for the rest of the run. Only a second refusal event within
`STRIKE_WINDOW` of the last says the known limit is wrong (more than ~10% over what the
server lets through): that one cuts, and the limit is learned below it. With no limits
configured the limiter admits freely until the server first pushes back.

Written here rather than taken from aiolimiter: that library has no token/request pair, no
settle step, no pause, and no adaptation to server feedback.
"""

from __future__ import annotations

import asyncio
import collections
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import NamedTuple

from .admission import Feedback, PermitBase, feedback
from .errors import TokenLimitError
from .opening import POLL, OpeningWindow
from .rate_control import CubicRate, Meter
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
# While nothing is known of a server's limits, the opening admissions are paced rather than
# let go all at once (a burst that a small bucket refuses nearly whole): from OPENING_RATE
# per second, doubling every OPENING_DOUBLING seconds, until a refusal or the server's
# headers say more, and once per answer's latency when answers come faster. The first
# refusal then comes back while few requests are in the air, even on a loaded machine where
# the first answers take 50 ms to be read (a 1,000 req/min server's bucket holds 16); a
# server without limits loses little (128 workers all admitted within 0.17 s, 512 within
# 0.26 s, while their first answers are on the way).
OPENING_RATE = 200.0
# The first burst on a limit the user gave is half of `burst_seconds`. A server's bucket
# holds a second's worth; a full first burst (less the 2% margin) left it ~1 ms of slack,
# and the first requests reach it spread over their connections' setup, so a paced request
# that overtook the tail of the burst was refused (0-1 refusals a run on a 120k tokens/min
# server, and a bare 429 then cut the learned rate: 2.4x the makespan).
FIRST_BURST = 0.5
OPENING_DOUBLING = 0.05
# A refusal stating no limit on a run whose limits are known: hold everything this long (the
# server's bucket, emptied by someone else, refills half of its second) and keep the rate.
# A one-off (another client on the key) then costs half a second; a learned cut cost 2.4x the
# makespan of a token-limited run (its CUBIC rate regrew from 0.7x, then probed slowly).
HOLD_SECONDS = 0.5
# A refusal event this soon after the last hold or cut: the known limit is wrong (after a
# hold, the bucket holds HOLD_SECONDS of slack, so a refusal within 5 s means sending more
# than ~10% over the server's real rate). Cut and learn below it.
STRIKE_WINDOW = 5.0
# A wait shorter than this is none: a virtual clock may not advance by less, and a sleeper
# woken a rounding short of its time must not sleep again (it spun).
_DUE = 1e-6
_OPENING_DONE = 12  # doublings after which the opening pace holds nothing back (2M/s)
_EWMA = 0.05  # weight of one request in the running mean of token estimates
_SPEEDUP = 1.2  # a learned rate this much faster than the booked schedule's rebooks it
_NO_LIMITS = (None, None, None, None)
_NO_COSTS = (0.0, 0.0, 0.0, 0.0)


class Estimate(NamedTuple):
    """Tokens a request is charged before the call: input from its text, output from its
    output limit (`max_tokens` or the body's own; 0 when unset; settled with the real usage
    afterwards). A named tuple: one is made per admission, and a frozen dataclass is three
    times slower to build."""

    input: int
    output: int

    @property
    def total(self) -> int:
        return self.input + self.output

    @classmethod
    def of(
        cls, request: CompletionRequest, chars_per_token: float = DEFAULT_CHARS_PER_TOKEN
    ) -> Estimate:
        if request.messages is None and request.system is None and request.schema is None:
            chars = len(request.prompt)  # a plain prompt: the common case, on the hot path
            if request.extra:
                chars = request.text_length()
        else:
            chars = request.text_length()
        # `chars_to_tokens`, inlined; built as the tuple it is (`cls(...)` runs a Python
        # `__new__` frame per admission).
        return _new_tuple(cls, (math.ceil(chars / chars_per_token), request.output_limit() or 0))


_new_tuple = tuple.__new__


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
    pause; `cuts` counts congestion events answered by a rate cut, `holds` those answered by
    a hold on a known limit (see HOLD_SECONDS)."""

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
    holds: int = 0


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

    __slots__ = (
        "_estimate",
        "_request",
        "admitted_at",
        "booked",
        "costs",
        "generation",
        "limiter",
        "window",
    )

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
        self.admitted_at: float | None = None  # set during the opening only (its latency)
        self.window = False  # holds a slot of the opening's window (see `llmbatch.opening`)

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
        # Both laws measure the same admissions: one meter, requests and tokens side by side.
        self._meter = Meter(clock)
        self.control = CubicRate(clock=clock, meter=self._meter, column=0)
        self.control.ceiling = _per_second(requests_per_minute)
        # The same law on tokens per second, cut with the request rate: on a server whose
        # token budget refuses, requests of varying size then pace by their tokens.
        self.token_control = CubicRate(clock=clock, meter=self._meter, column=1)
        self.token_control.ceiling = _per_second(tokens_per_minute)
        self.mean_tokens = 0.0  # running mean of admitted requests' token estimates
        self._opening: float | None = None  # when the opening began (see OPENING_RATE)
        self._opening_next = start
        self._rebooked: asyncio.Event | None = None  # set by `_rebook`: sleeping waiters rebook
        self._booked_at: tuple[float | None, float | None] = (None, None)  # rates at `_rebook`
        self._opened = False  # the opening's pace no longer holds anything back
        # No limit configured, stated or learned: nothing to book (kept up to date by
        # `observe` and the cuts; `_limits()` is the truth, this the hot path's shortcut).
        self._free = self._limits() == _NO_LIMITS
        self._doublings = 0.0
        self._fastest_answer = math.inf  # the quickest success seen during the opening
        # The opening's window (see `llmbatch.opening`): admissions in the air bounded by the
        # answers read, while nothing is known; None once a limit is known or it is over.
        # Its waiters queue in arrival order; one ticker looks again every POLL for them.
        self._window = OpeningWindow() if adaptive and self._free else None
        self._window_queue: collections.deque[asyncio.Future[bool]] = collections.deque()
        self._window_ticker: asyncio.Future[None] | None = None
        self._pause_until = start
        self._fresh = True  # nothing booked yet (see FIRST_BURST)
        # The send gate (see `_send_wait`): a timeline per budget of when admissions really
        # went, on the budgets the user gave (None: no limit given, no gate).
        # No gate on a zero burst: its schedule sends nothing at once already.
        given = [b.configured is not None for b in (self._req, self._tok, self._in, self._out)]
        gated = any(given) and burst_seconds > 0
        self._sent_tat: list[float] | None = [start] * 4 if gated else None
        self._gated = tuple(given)
        self._epoch = 0  # bumped by a pause: sleeping waiters must then take a new slot
        self._cut_epoch = 0  # bumped by a cut: the booked schedule is void, rebook at the new rate
        self._waiting = 0
        self._in_flight = 0
        self._rate_limited = 0
        self._struck_at = -math.inf  # the last refusal event answered (hold or cut)
        self.holds = 0  # refusals answered by a hold, the known rate kept (see HOLD_SECONDS)

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
        """The effective token limit: configured, stated by the server, or learned."""
        limit = self._tok.limit()
        learned = self.token_control.rate
        if learned is None:
            return limit
        learned_tpm = learned * 60.0
        return learned_tpm if limit is None else min(limit, learned_tpm)

    @property
    def input_tokens_per_minute(self) -> float | None:
        return self._in.limit()

    @property
    def output_tokens_per_minute(self) -> float | None:
        return self._out.limit()

    @property
    def opening(self) -> bool:
        """Nothing is known of the server's limits yet and the opening paces admissions
        (see OPENING_RATE): until the first refusal, the server's headers, or its end."""
        return self.adaptive and not self._opened and self._limits() == _NO_LIMITS

    @property
    def limits_known(self) -> bool:
        """A limit is configured, stated by the server or learned from its refusals."""
        return self._limits() != _NO_LIMITS

    def hold_burst(self, after: float | None = None) -> None:
        """No burst: the next slot goes no earlier than now (or one interval after the slot
        `after`), the ones after it one interval apart, whatever credit the timelines hold
        (slots given back, an idle spell). For a Ray cluster's limiter: it runs its server's
        bucket near empty after a refusal, and slots given back must not rebook slots
        already handed out."""
        at = self._clock()
        rpm = self.requests_per_minute
        if after is not None and rpm:
            at = max(at, after + self._interval(rpm))
        self._restart_schedule(at)

    @property
    def epoch(self) -> int:
        """Bumped by every pause: slots reserved before it belong to a discarded schedule."""
        return self._epoch

    @property
    def generation(self) -> int:
        """Congestion events answered so far (by a cut, or by a hold on a known limit);
        attempts carry the one they were admitted under, so one event is answered once."""
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
            holds=self.holds,
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
        self,
        count: int,
        tokens: int = 0,
        *,
        input_tokens: int = 0,
        output_tokens: int = 0,
        horizon: float | None = None,
    ) -> list[float]:
        """Reserve up to `count` request slots at once (the tokens of each budget charged
        with the first); return each slot's delay in seconds from now. With a `horizon`, stop
        after the first slot due later than `horizon` seconds from now (one slot at least).

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
            if horizon is not None and slot - now > horizon:
                break
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
            limit = self.tokens_per_minute if budget is self._tok else budget.limit()
            if limit and delta:
                # A refund never creates more than the burst allowance.
                budget.tat = max(budget.tat + delta * self._interval(limit), floor)
                if self._sent_tat is not None:  # what went was what was used
                    i = (self._req, self._tok, self._in, self._out).index(budget)
                    self._sent_tat[i] = max(
                        self._sent_tat[i] + delta * self._interval(limit), floor
                    )

    def settle(
        self, permit_or_estimate: RatePermit | int, actual_tokens: int, actual_output: int = 0
    ) -> None:
        """Correct a charge with the tokens actually used: refund the rest or charge extra.

        With a permit, `actual_tokens` is the input tokens used and `actual_output` the output
        tokens; with a bare estimate (the old form), `actual_tokens` is the total.

        The output limit charged on the combined token budget is not refunded when the reply
        was shorter: OpenAI's tokens-per-minute counts `max_tokens` as it admits a request and
        gives nothing back (its `x-ratelimit-remaining-tokens` says so), and refunding it ran
        ahead of the server by the unused output of every reply. Output beyond the estimate
        is charged; the separate output budget (Anthropic's) is settled both ways, as
        Anthropic does.
        """
        if isinstance(permit_or_estimate, RatePermit):
            est = permit_or_estimate.estimate
            actual = Estimate(actual_tokens, actual_output)
        else:
            est = Estimate(permit_or_estimate, 0)
            actual = Estimate(actual_tokens, 0)
        input_delta = actual.input - est.input
        output_delta = actual.output - est.output
        self.settle_tokens(input_delta + max(0, output_delta), input_delta, output_delta)

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
            self._free = False
            if budget is self._req:
                # A stated limit is the ceiling of whatever the probing learned.
                self.control.ceiling = _per_second(budget.limit())
            elif budget is self._tok:
                self.token_control.ceiling = _per_second(budget.limit())
            effective = self.requests_per_minute if budget is self._req else budget.limit()
            if remaining is not None and 0 <= remaining <= limit and effective:
                floor = now + self.burst_seconds - remaining * self._interval(effective)
                budget.tat = max(budget.tat, floor)

    def report(self, response: CompletionResponse | None, error: BaseException | None) -> None:
        """Feed back how an attempt ended, for callers that hold no permit."""
        self.apply(feedback(response, error), self.generation)

    def apply(self, fb: Feedback, generation: int, tokens: float | None = None) -> bool:
        """Act on one attempt's feedback; `generation` is the one it was admitted under,
        `tokens` its token estimate (when known).

        Returns True when the limiter paused for the server's Retry-After (so the refused
        request need not sleep it again before its retry).
        """
        if fb.ok:
            if fb.rate_limit is not None:
                self.observe(fb.rate_limit)
            self.succeeded(1, tokens)
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
        if states_limits(fb):
            cut = False
        elif self._stray(generation):
            return self._hold(fb)
        else:
            cut = self.control.congested(generation)
        if cut:
            self._struck_at = self._clock()
            self._cut_tokens()
            self._free = False
        if pauses_everyone(fb):
            assert fb.retry_after is not None
            self.pause(fb.retry_after)
            return True
        if cut:
            self._rebook(self._clock())
        return False

    def _stray(self, generation: int) -> bool:
        """A new refusal event, with no limit stated in it, while the rate in force is a
        known limit (given, or stated earlier) and no event came in `STRIKE_WINDOW`: take it
        for another client's doing, not for a wrong limit."""
        control = self.control
        if generation < control.generation:
            return False  # part of an event already answered
        if self._clock() - self._struck_at < STRIKE_WINDOW:
            return False  # refusals persist: the known limit is wrong
        if not (self._req.limit() or self._tok.limit() or self._in.limit() or self._out.limit()):
            return False  # nothing known: learn
        for law in (control, self.token_control):
            if law.rate is not None and (law.ceiling is None or law.rate < law.ceiling):
                return False  # a learned rate is in force: CUBIC's business
        return True

    def _hold(self, fb: Feedback) -> bool:
        """Answer a stray refusal: everyone waits `HOLD_SECONDS` (or a Retry-After over a
        second, which the pause rule would obey anyway; a bare `retry-after: 1` is only the
        smallest a seconds-granular header says) and the known rate stays. The attempts
        admitted before it belong to this event (a new generation), as they would to a cut."""
        self._struck_at = self._clock()
        self.holds += 1
        self.control.held()
        after = fb.retry_after
        self.pause(after if after is not None and after > SHORT_RETRY_AFTER else HOLD_SECONDS)
        return True

    def succeeded(self, count: int = 1, tokens: float | None = None, resent: float = 0) -> None:
        """`count` attempts succeeded (`tokens`: their estimates; default: the running mean
        each; `resent`: what their usage adds to the tokens metered at their admission):
        regrow the learned rates along their curves."""
        now = self._clock()
        if not self.adaptive:
            self.control.succeeded(count, now)
            return
        tokens = self.mean_tokens * count if tokens is None else tokens
        self._meter.succeeded(count, tokens, now, resent)
        if self.control.rate is not None:
            self.control.regrow(now)
        if self.token_control.rate is not None:
            self.token_control.regrow(now)
        if self._waiting and self.control.rate is not None and self._sped_up():
            # The waiters booked their slots at the rate of their arrival: a queue of them
            # holds seconds of the old, slower schedule. Rebook them at the new rate.
            self._rebook(now, speedup=True)

    def _sped_up(self) -> bool:
        """The learned rates grew by `_SPEEDUP` or more since the schedule was booked."""
        rpm, tpm = self._booked_at
        now_rpm, now_tpm = self.requests_per_minute, self.tokens_per_minute
        return bool(
            (rpm and now_rpm and now_rpm > rpm * _SPEEDUP)
            or (tpm and now_tpm and now_tpm > tpm * _SPEEDUP)
        )

    # -- internals ------------------------------------------------------------------------

    def _cut_tokens(self) -> None:
        """The request rate was just cut: cut the token rate with it, in the same event.

        The server did not say which budget refused. Both are cut; the one the server does
        not limit regrows without refusals, the one it does finds its plateau. A request
        rate alone would regrow past a token budget whenever the requests grow larger.
        """
        if self._tok.limit() or self._in.limit() or self._out.limit():
            return  # a token budget is known (given or stated): it is paced exactly already
        tokens = self.token_control
        sent = tokens.measured()
        requests = self.control.measured()
        if sent <= 0 or requests <= 0:
            return  # no token estimates measured (a Ray actor, empty requests): nothing to learn
        tokens.unit = sent / requests  # tokens per request, lately
        tokens.cut(self._clock())

    def _interval(self, per_minute: float) -> float:
        return 60.0 / (per_minute * (1.0 - self.safety_margin))

    def _limits(self) -> tuple[float | None, float | None, float | None, float | None]:
        return (
            self.requests_per_minute,
            self.tokens_per_minute,
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
        if self._free and (self._opened or not self.adaptive) and self._window is None:
            now = self._clock()
            if now >= self._pause_until:
                # Nothing known yet (the default until the server pushes back): admit freely,
                # book nothing.
                self._admitted(permit, _NO_COSTS, self.control.generation, now)
                return True
        est = permit.estimate
        self._check_fits(est)
        if self._window is not None:
            if self._window_queue or self._window_room() < 1:
                return False  # the opening's window is full: `_acquire` queues for it
            self._window_take(permit)
        # The schedule the slot belongs to: a refusal of an attempt booked before a cut is
        # part of the event that cut.
        generation = self.control.generation
        slot, costs, now = self._reserve_units((1, est.total, est.input, est.output))
        if permit.window and costs is not _NO_COSTS:
            self._window_untake(permit)  # the window is over (a limit is known)
        if slot <= now and (self._sent_tat is None or self._send_wait(costs, now) <= 0):
            self._admitted(permit, costs, generation, now)
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
                    if self._window is not None and not permit.window:
                        await self._window_slot(permit)
                    epoch, cut_epoch = self._epoch, self._cut_epoch
                    generation = self.control.generation
                    slot, costs, _ = self._reserve_units((1, est.total, est.input, est.output))
                    if permit.window and costs is not _NO_COSTS:
                        self._window_untake(permit)  # the window is over (a limit is known)
                if await self._wait_for(slot, costs, epoch, cut_epoch):
                    break
                self._window_untake(permit)  # a cut or a pause voided the slot: book again
        except BaseException:
            self._window_untake(permit)
            raise
        finally:
            self._waiting -= 1
        self._admitted(permit, costs, generation, self._clock())

    async def _wait_for(
        self, slot: float, costs: tuple[float, ...], epoch: int, cut_epoch: int
    ) -> bool:
        """Sleep until `slot` is due and the send gate (see `_send_wait`) lets it go. False:
        a cut or a pause voided the slot while we slept, take another.

        One loop for both waits, so that a pause or a cut that begins while a due waiter is
        held by the gate stops it too (a gate nap that ended in an admission sent requests
        into the bucket a hold had just emptied)."""
        gated = self._sent_tat is not None
        while True:
            now = self._clock()
            delay = slot - now
            if gated:
                delay = max(delay, self._send_wait(costs, now))
            if delay <= _DUE:
                return True
            try:
                await self._nap(delay)
            except BaseException:
                if cut_epoch == self._cut_epoch:
                    self._unreserve(costs)
                raise
            if cut_epoch != self._cut_epoch:
                # A cut (or a speedup) voided the schedule our slot was on: take one on the
                # new one. Waiters wake in their old order, so they rebook in it too.
                return False
            if self._epoch != epoch and self._clock() < self._pause_until:
                # A pause began while we slept and our slot falls inside it: queue again,
                # behind the waiters already booked after the pause. The slot is not given
                # back: that takes a cost off the END of the timeline, so every waiter
                # requeued this way booked the same last slot again (traced: ten admitted in
                # one millisecond after a half-second hold, seven of them refused).
                return False
            # Slept until the slot: it is due, whatever the clock reads (a virtual clock may
            # wake a sleeper a rounding short of it, and waiting again spun for ever).
            slot = -math.inf

    def _admitted(
        self, permit: RatePermit, costs: tuple[float, ...], generation: int, now: float
    ) -> None:
        """Count the permit in flight and its admission, at `now` (the clock just read)."""
        self._in_flight += 1
        if not self.adaptive:
            self.control.sent(1, now)
        else:
            # Metered from the first admission, while no limit is known too: the first cut
            # learns the token unit from it (`_cut_tokens`). (`permit.estimate`, inlined: this
            # runs for every request.)
            est = permit._estimate
            if est is None:
                assert permit._request is not None
                est = permit._estimate = Estimate.of(permit._request, self.chars_per_token)
            total = est.input + est.output
            self._meter.sent(1, total, now)
            mean = self.mean_tokens
            self.mean_tokens = mean + _EWMA * (total - mean) if mean else float(total)
            if not self._opened:
                permit.admitted_at = now
        permit.costs = costs
        permit.generation = generation
        sent = self._sent_tat
        if sent is not None and costs is not _NO_COSTS:
            for i, cost in enumerate(costs):
                if cost:
                    sent[i] = max(sent[i], now) + cost

    def _send_wait(self, costs: tuple[float, ...], now: float) -> float:
        """Seconds until `costs` may go now by the send gate (<= 0: at once).

        The schedule (the TATs) books slots; when the event loop stalls (a starved process:
        under two CPU burners it went 0.3-1.0 s without running), the waiters whose slots
        passed meanwhile all wake at once, and requests admitted before the stall are sent
        with them: the server's bucket, a second's worth, got 16 requests and 1.01 s of budget
        in one millisecond (traced: one refused). The gate keeps what really went, on each
        budget the user gave, within FIRST_BURST of a burst above the limit's pace, as the
        first burst is: the server keeps half its bucket for requests that reach it bunched.
        """
        assert self._sent_tat is not None
        # A unit goes when what went before it is at most `room` ahead of the pace. Only units
        # smaller than the room are gated: on a slow limit (one request in seconds) a stall
        # bunches one or two, and the gate would hold each to the exact send time of the one
        # before, which a loop's jitter moves.
        room = self.burst_seconds * FIRST_BURST
        wait = 0.0
        for sent, cost, gated in zip(self._sent_tat, costs, self._gated, strict=True):
            if gated and 0 < cost < room:
                wait = max(wait, sent - room - now)
        return wait

    def _reserve_units(
        self, units: tuple[int, int, int, int]
    ) -> tuple[float, tuple[float, ...], float]:
        """Book the next slot; return (start time, the cost booked on each timeline, now)."""
        now = self._clock()
        slot = max(now, self._pause_until)
        limits = self._limits()
        if limits == _NO_LIMITS:
            # Nothing known yet: book nothing; before the first answer, pace the opening.
            if self.adaptive:
                slot = self._opening_slot(slot)
            return slot, _NO_COSTS, now
        budgets = (self._req, self._tok, self._in, self._out)
        if self._fresh:
            self._fresh = False
            self._hold_first_burst(slot)
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

    def _hold_first_burst(self, at: float) -> None:
        """The first booking: the buckets of configured limits start `FIRST_BURST` full, at
        the first send, not at the limiter's creation (a bench or a CLI run creates it
        seconds before the first request)."""
        held = at + self.burst_seconds * (1.0 - FIRST_BURST)
        for budget in (self._req, self._tok, self._in, self._out):
            if budget.configured is not None:
                budget.tat = max(budget.tat, held)

    def _opening_slot(self, earliest: float) -> float:
        if self._opened:
            return earliest
        if self._opening is None:
            self._opening = earliest
        slot = max(earliest, self._opening_next)
        # Double once per answer's latency (as TCP's slow start, once per round trip), or
        # per OPENING_DOUBLING while answers take longer: a fast server is not held back.
        period = min(OPENING_DOUBLING, self._fastest_answer)
        # (A stall of the process doubles the pace too; the window, clocked by answers,
        # bounds what goes out after it. The Ray cluster's actor leases on this pace while
        # its own window is full, and needs the time it waited counted.)
        self._doublings += (slot - self._opening) / period
        self._opening = slot
        if self._doublings > _OPENING_DONE:
            self._opened = True  # millions per second: the opening is over
            return slot
        self._opening_next = slot + 1.0 / (OPENING_RATE * 2.0**self._doublings)
        return slot

    # -- the opening's window (see `llmbatch.opening`) ------------------------------------

    def _window_room(self) -> float:
        """Room in the opening's window; closes it (None) once a limit is known or it holds
        nothing back."""
        window = self._window
        if window is None:
            return math.inf
        room = window.room() if self._free else math.inf
        if room == math.inf:
            self._window = None
        return room

    def _window_take(self, permit: RatePermit) -> None:
        if self._window is not None:  # (the room asked for may just have closed it)
            self._window.take()
            permit.window = True

    def _window_untake(self, permit: RatePermit) -> None:
        if permit.window:
            permit.window = False
            if self._window is not None:
                self._window.give_back()

    def _window_grant(self) -> None:
        """Hand the window's room to its queued waiters, in arrival order (a slot taken for
        each before it wakes: exactly as many wake as there is room for). A closed window
        lets them all go."""
        queue = self._window_queue
        while queue:
            if queue[0].done():  # cancelled
                queue.popleft()
                continue
            room = self._window_room()
            if room < 1:
                return
            waiter = queue.popleft()
            if self._window is not None:
                self._window.take()
                waiter.set_result(True)
            else:
                waiter.set_result(False)

    async def _window_slot(self, permit: RatePermit) -> None:
        """Wait for room in the opening's window, behind the waiters already queued."""
        if not self._window_queue and self._window_room() >= 1:
            self._window_take(permit)
            return
        waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._window_queue.append(waiter)
        if self._window_ticker is None or self._window_ticker.done():
            self._window_ticker = asyncio.ensure_future(self._window_tick())
        try:
            permit.window = await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled() and waiter.result():
                permit.window = True  # granted as it was cancelled: give the slot back
            raise

    async def _window_tick(self) -> None:
        """While waiters queue for the window: look again every POLL (a slot in the air long
        enough, in prompt time, counts as answered: see `llmbatch.opening`)."""
        while self._window_queue:
            due = self._clock() + POLL
            await self._sleep(POLL)
            if self._window is not None:
                self._window.looked(self._clock() - due)
            self._window_grant()

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

    async def _nap(self, delay: float) -> None:
        """Sleep `delay` seconds, or until the schedule is rebooked (`_rebook`)."""
        if self.control.rate is None:
            await self._sleep(delay)  # nothing learned: no speedup to wake for
            return
        if self._rebooked is None:
            self._rebooked = asyncio.Event()  # made here: bound to the loop that waits on it
        rebooked = self._rebooked
        sleeper = asyncio.ensure_future(self._sleep(delay))
        woken = asyncio.ensure_future(rebooked.wait())
        try:
            await asyncio.wait((sleeper, woken), return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            woken.cancel()

    def _rebook(self, now: float, speedup: bool = False) -> None:
        """After a cut: the slots booked at the old rate would keep sending too fast for as
        long as the queue of waiters is long (after a speedup: too slow). Void them; the
        schedule starts again now, at the new rate, from the server's emptied bucket, and
        every waiter wakes to book on it."""
        self._cut_epoch += 1
        self._booked_at = (self.requests_per_minute, self.tokens_per_minute)
        if self._rebooked is not None:
            self._rebooked.set()
            self._rebooked = None
        # The refusals said the server's bucket is empty: the next request waits for its own
        # cost to refill (the request refused just now would be refused again at once).
        # (After a speedup with no burst allowed, one request's cost out: the bucket's "full"
        # mark is `now` itself, and a success that sped the rate up twice in one instant sent
        # two beside the one just admitted.)
        start = max(now, self._pause_until)
        rpm, tpm = self.requests_per_minute, self.tokens_per_minute
        if rpm:
            one = self._interval(rpm) if speedup else 0.0
            self._req.tat = start + max(self.burst_seconds, one)
        if tpm and self.token_control.rate is not None:
            one = self.mean_tokens * self._interval(tpm) if speedup else 0.0
            self._tok.tat = start + max(self.burst_seconds, one)

    def _restart_schedule(self, at: float) -> None:
        """No burst into a server whose bucket is empty: the next slots start at `at`, one
        interval apart."""
        rpm = self.requests_per_minute
        if rpm:
            resume = at + max(0.0, self.burst_seconds - self._interval(rpm))
            self._req.tat = max(self._req.tat, resume)
        for budget in (self._tok, self._in, self._out):
            limit = self.tokens_per_minute if budget is self._tok else budget.limit()
            if limit:
                # An empty bucket at `at`, room for one request: not a second's burst.
                budget.tat = max(budget.tat, at + self._no_burst(limit))

    def _no_burst(self, per_minute: float) -> float:
        """How far ahead of now a token timeline's TAT stands when its bucket holds only
        one (average) request: `burst_seconds` less that request's cost."""
        return max(0.0, self.burst_seconds - self.mean_tokens * self._interval(per_minute))

    def _finish(
        self,
        permit: RatePermit,
        response: CompletionResponse | None,
        error: BaseException | None,
    ) -> None:
        self._heard(permit, response, permit.load_feedback(response, error))

    def _heard(self, permit: RatePermit, response: CompletionResponse | None, fb: Feedback) -> None:
        """The attempt admitted under `permit` ended with `fb` (as `load_feedback` reads it)."""
        self._in_flight -= 1
        est = permit._estimate  # `permit.estimate`, inlined (every request passes here)
        if est is None:
            est = permit.estimate
        adaptive = self.adaptive
        tokens = est.input + est.output if adaptive else None
        resent = 0  # tokens the usage adds to what the admission metered (see `_used`)
        if response is not None:
            usage = response.usage
            if usage.prompt_tokens or usage.completion_tokens:
                if permit.costs is not _NO_COSTS:  # nothing booked: nothing to settle
                    self.settle(permit, usage.prompt_tokens, usage.completion_tokens)
                if tokens is not None:
                    tokens, resent = self._used(est, usage.prompt_tokens, usage.completion_tokens)
        if permit.admitted_at is not None and fb.ok:
            latency = self._clock() - permit.admitted_at
            self._fastest_answer = min(self._fastest_answer, max(latency, 1e-4))
        if permit.window:
            permit.window = False
            if self._window is not None:
                self._window.finished(fb.ok)
        if fb.ok and adaptive:
            # `apply`'s success with the usage's correction: both metered in one step.
            if fb.rate_limit is not None:
                self.observe(fb.rate_limit)
            self.succeeded(1, tokens, resent)
        else:
            if resent:
                self._meter.sent(0, resent, self._clock())
            permit.paused_for_retry = self.apply(fb, permit.generation, tokens)
        if self._window_queue:
            self._window_grant()  # after `apply`: a refusal's cut closes the window first

    def _used(self, est: Estimate, input_tokens: int, output_tokens: int) -> tuple[int, int]:
        """What an answered request finally cost on the token timeline (its input plus the
        larger of its output and the output charged, as `settle` books it), and how much that
        adds to the estimate metered at its admission (the caller meters it in its place).

        The token law must learn in the unit the timeline is charged in: learned from
        estimates (a prompt's characters, no output when `max_tokens` is unset) and charged
        with the usage, a rate of "20 tokens a second" paced requests that each cost 25 at
        one a second (traced: 160 requests at 1,200/min took 110 s instead of 8).
        """
        used = input_tokens + max(output_tokens, est.output)
        delta = used - est.input - est.output
        if delta:
            self.mean_tokens += _EWMA * delta
        return used, delta


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
