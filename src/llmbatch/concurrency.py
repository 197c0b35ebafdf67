"""`max_concurrency="auto"`: find the concurrency where throughput stops growing and latency
starts to, for servers that queue instead of refusing.

    gate = ConcurrencyLimiter()                       # what the engine builds for "auto"
    async with gate.admit(request) as slot:           # waits while `limit` attempts are out
        ...                                           # the attempt's latency is measured

llama.cpp's server, vLLM and Ollama rarely answer 429: past their capacity they queue, and
latency grows with everything in flight until requests time out. No rate limit helps there;
the knob is how many requests are in flight. The gate grows it while latency stays at the
server's unloaded level and shrinks it once latency says requests wait in a queue.

An LLM's latency varies for reasons other than load: the length of each answer (decode time
is per token) and plain jitter (a cloud API's 100-700 ms for the same request). TCP Vegas,
which this gate used before, compares each latency *sample* with the lowest one seen; with
jitter that ratio reads most of the window as queued and holds a cloud API at a few requests
in flight. So the gate works in rounds, as Gradient2 in Netflix's concurrency-limits does
with its sample windows, and treats the spread of latency as noise to be measured:

- Each sample is normalised by its answer's length: latency / (`TTFT_TOKENS` + output
  tokens), so a run whose answers grow longer does not read as a growing queue.
- A round is one turn of the window: a cohort of `limit` attempts (at least `MIN_ROUND`)
  admitted after the last decision (older ones were sent under another limit), measured
  once all have returned: the first answers back are the fast ones, and a round of them
  would read a jittery server as faster than it is.
- A round's mean has a confidence interval `mean +- Z * cv * mean / sqrt(n)`, with `cv` the
  spread of samples within rounds (smoothed over rounds). The baseline (the unloaded level)
  is the lowest upper bound seen: a lucky round of a few fast samples cannot set it low.
- The lower bound more than `TOLERANCE` times the baseline: requests surely queue, shrink to
  where latency would be `GROW_BELOW` times the baseline (at most halving). The mean at
  most `GROW_BELOW` times: grow (in slow start, one more per answer, doubling every latency,
  until the first sign of a queue; then +25% a round, and only if the window was full).
  In between: hold. On a server with N slots this settles at about 1.25-1.5 x N in flight:
  every slot busy, a short queue.
- The opening: a first cohort of `DEFAULT_INITIAL` (8) sent at once, the baseline's first
  measure. (Opening at 1 measured an unloaded server for sure, but a first round of four
  latencies at 1 in flight and seven doublings after it cost a cloud API 4-5 s of a 30 s
  run; and on a server refusing without headers, the doubling window met the empty bucket
  at ~10 in flight, all refused at once.) On a server with fewer slots than that, the
  opening queues and its baseline includes the queue. So the baseline counts as unloaded
  only once a round with twice the opening's window did not read slower; until then, the
  first sign of a queue brings one round at `DIP_WINDOW` (2) in flight, which measures the
  unloaded latency, as BBR's ProbeRTT drains its queue to measure the path's; then the
  window goes back to where that queued round's latency would have been `GROW_BELOW` times
  the new baseline.
- A timeout or a refusal (429/503) is a drop: cut multiplicatively, once per overload (only
  an attempt admitted after the last cut, a latency after it, cuts again).
- Replies stating rate limits (`x-ratelimit-*`, `anthropic-ratelimit-*`): the rate limiter
  knows the limits and paces by them, so the gate steps aside: from then on its window only
  grows while full (bounded by use, below), latency does not shrink it and refusals are
  the limiter's alone; timeouts still cut it.
- A round that used less than half the limit (the rate limiter or the source held us back)
  changes only the baseline, and brings the limit down to 1.5 x what it used: its latency
  says nothing about a larger window.

Gradient2 compares a long-term average with the recent one; under sustained queueing that
average drifts up and lets latency creep, which is why the baseline here is a minimum (of
upper confidence bounds), forgotten slowly (+1% per 30 s window at most) in case the server
became slower for good.
"""

from __future__ import annotations

import asyncio
import collections
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from .admission import PermitBase
from .types import CompletionRequest, CompletionResponse, RateLimitInfo

__all__ = ["ConcurrencyLimiter", "ConcurrencyStatus"]

# The opening window: one cohort sent at once, as a fixed 8 would (a first round at 1 in
# flight took 4 latencies, then 7 doublings to a cloud API's 128: 4-5 s of a 30 s run). It
# may queue on a server with fewer slots; the dip (`DIP_WINDOW`) then re-measures the baseline.
DEFAULT_INITIAL = 8
DEFAULT_MAX = 256
TTFT_TOKENS = 32  # the time to a first token, in tokens' worth of decoding (a rough guess)
MIN_ROUND = 4  # samples in a round at least
Z = 2.0  # width of a round mean's confidence interval, in standard errors
TOLERANCE = 1.5  # surely this much slower than unloaded: requests queue, shrink
GROW_BELOW = 1.25  # a round's mean no slower than this: room to grow
_GROWTH = 0.25  # after slow start, per round
_MAX_SHRINK = 0.5  # per round
_UNUSED_HEADROOM = 1.5  # a window used at most half is brought to this times its use
_DROP_FACTOR = 0.7
_CV_INITIAL = 0.5  # the spread assumed before a round has measured one
_CV_SMOOTHING = 0.3
_BASELINE_WINDOW = 30.0  # seconds after which the baseline is measured afresh
_BASELINE_DRIFT = 1.01  # at most +1% per window
_SMOOTHING = 0.3  # weight of a new latency sample in the recent average (reported only)
# A round at this window measures the unloaded latency: few servers have fewer slots.
DIP_WINDOW = 2


@dataclass(slots=True, frozen=True)
class ConcurrencyStatus:
    """`rtt`: the recent latency (seconds, smoothed); `baseline`: the unloaded latency per
    token-equivalent (seconds / (`TTFT_TOKENS` + output tokens)); None until measured."""

    limit: int
    in_flight: int
    waiting: int
    baseline: float | None
    rtt: float | None


class _Slot(PermitBase):
    __slots__ = ("gate", "round", "started")

    def __init__(self, gate: ConcurrencyLimiter) -> None:
        super().__init__()
        self.gate = gate
        self.started = 0.0
        self.round = -1  # the round whose cohort it belongs to, if any

    async def _acquire(self) -> None:
        gate = self.gate
        await gate._acquire()
        self.started = gate._clock()
        if gate._enlisted < gate._round_size:
            gate._enlisted += 1
            self.round = gate._round

    def _release(self, response: CompletionResponse | None, error: BaseException | None) -> None:
        self.gate._finish(self, response, error)


class ConcurrencyLimiter:
    """An adaptive bound on attempts in flight (an `Admission`). Waiters are served FIFO."""

    def __init__(
        self,
        *,
        initial: int | None = None,
        min_limit: int = 1,
        max_limit: int = DEFAULT_MAX,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`initial`: the opening window (default `DEFAULT_INITIAL`, or `max_limit` if less)."""
        if initial is None:
            initial = max(min_limit, min(DEFAULT_INITIAL, max_limit))
        if not 1 <= min_limit <= initial <= max_limit:
            raise ValueError("need 1 <= min_limit <= initial <= max_limit")
        self.min_limit = min_limit
        self.max_limit = max_limit
        self._limit = float(initial)
        self._clock = clock
        self._in_flight = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._rtt: float | None = None
        self._slow_start = True
        # The round being measured: a cohort of the first `_round_size` attempts admitted
        # since it began, measured once all have returned. Not the first answers to come
        # back: those are the fast ones, and would set the baseline low on a jittery server.
        self._round = 0
        self._round_size = max(MIN_ROUND, initial)
        self._enlisted = 0
        self._returned = 0
        self._n = 0
        self._sum = 0.0
        self._sumsq = 0.0
        self._latency = 0.0  # the round's latencies in seconds, summed
        self._round_latency: float | None = None  # the last round's mean, in seconds
        self._busy = 0  # the most attempts in flight seen in the round
        self._cv = _CV_INITIAL
        self._baseline: float | None = None
        self._baseline_next: float | None = None  # the minimum of the window being measured
        self._window_start = clock()
        self._last_drop = -math.inf
        # Whether the baseline may be the unloaded latency, so that the window may grow;
        # whether it surely is (see `_end_round`); the opening round's window and mean; and
        # while a dip's round is measured: the limit before it, the window and mean latency
        # of the round that led to it.
        self._unloaded = self._confirmed = initial <= DIP_WINDOW
        self._opening: tuple[int, float] | None = None
        self._dip: tuple[float, int, float] | None = None
        # The server states its rate limits: the rate limiter paces by them (see `_finish`);
        # its requests per second, if it states that one.
        self._paced = False
        self._stated_rate: float | None = None

    @property
    def limit(self) -> int:
        return max(self.min_limit, int(self._limit))

    @property
    def paced(self) -> bool:
        """True once a reply carried rate-limit headers: latency and refusals are then the
        rate limiter's to act on, and the window only follows what it lets through."""
        return self._paced

    def status(self) -> ConcurrencyStatus:
        return ConcurrencyStatus(
            self.limit, self._in_flight, len(self._waiters), self._baseline, self._rtt
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
        info = fb.rate_limit
        if info is not None and _states_limits(info):
            if info.limit_requests:
                self._stated_rate = info.limit_requests / 60
            if not self._paced:
                # The server states its limits, so the rate limiter knows them and paces by
                # them: the gate steps aside. Its latency rules no longer bind (a cloud API's
                # latency does not grow with load; what it refuses, the limiter answers), and
                # the window grows while full, so it follows what the limiter lets through
                # (see `_end_round`).
                self._paced = True
                self._slow_start = True
                if self._dip is not None:
                    self._limit = self._dip[0]
                    self._dip = None
        member = slot.round == self._round
        if fb.ok:
            tokens = response.usage.completion_tokens if response is not None else 0
            self._sample(now - slot.started, member, in_flight, tokens)
        elif (fb.timed_out or (fb.congested and not self._paced)) and self._drop(slot, now):
            member = False  # the drop began a new round
        if member:
            self._returned += 1
            if self._returned >= self._round_size:
                self._end_round(now)
        self._wake()

    def _sample(self, rtt: float, member: bool, in_flight: int, tokens: int) -> None:
        if rtt <= 0:
            return
        self._rtt = rtt if self._rtt is None else (1 - _SMOOTHING) * self._rtt + _SMOOTHING * rtt
        if (
            self._slow_start
            and ((self._unloaded and self._baseline is not None) or self._paced)
            and in_flight * 4 >= 3 * self._limit
        ):
            # One more per answer: the window doubles every latency, as in TCP's slow start,
            # until a round shows a queue. Only while the window is (about) full: when the
            # rate limiter holds the pace, a larger window only queues requests on our side.
            # Not before the baseline is measured and known to be the unloaded latency.
            self._limit = min(float(self.max_limit), self._limit + 1, self._stated_window())
        if not member:
            return  # admitted under an earlier limit, or past the round's cohort
        x = rtt / (TTFT_TOKENS + max(0, tokens))
        self._n += 1
        self._sum += x
        self._sumsq += x * x
        self._latency += rtt
        self._busy = max(self._busy, in_flight)

    def _end_round(self, now: float) -> None:
        n, busy = self._n, self._busy
        if n < 2:  # the cohort failed or was cancelled: nothing to measure
            self._new_round(now)
            return
        mean = self._sum / n
        self._round_latency = self._latency / n
        spread = math.sqrt(max(0.0, self._sumsq / n - mean * mean) * n / (n - 1))
        self._new_round(now)
        # Smoothed from a cautious prior: a first round of a few samples that happen to be
        # alike must not set a tight bound (and a low baseline) for the whole run.
        self._cv = (1 - _CV_SMOOTHING) * self._cv + _CV_SMOOTHING * spread / mean
        margin = Z * self._cv * mean / math.sqrt(n)
        baseline = self._update_baseline(mean + margin, now)
        if busy <= DIP_WINDOW:
            self._unloaded = self._confirmed = True
        elif not self._unloaded and self._dip is None and not self._paced:
            # The opening: its first round is sent at once. On a server with fewer slots the
            # cohort queues, its latencies a staircase from one service time up; at the same
            # window, the next round then waits behind a full queue all along, and reads
            # slower (about twice, with a few slots). On a server with room for the window,
            # both read the same: the baseline may be the unloaded latency.
            if self._opening is None:
                self._opening = (busy, mean)
                return
            if mean > GROW_BELOW * self._opening[1]:
                self._dip_now(busy, mean)
                return
            self._unloaded = True
        elif (
            not self._confirmed
            and self._opening is not None
            and busy >= 2 * self._opening[0]
            and mean <= GROW_BELOW * baseline
        ):
            # Twice the opening's window, no slower: the opening did not queue. (A server
            # that shares its capacity among all in flight reads the same at the same window,
            # queue or not: only a larger window tells.)
            self._confirmed = True
        if self._dip is not None:
            # The dip's round measured the baseline at a window few servers queue at. Back to
            # the window before it (as BBR's ProbeRTT restores its window), or to where the
            # round that led to the dip would have had latency `GROW_BELOW` times the new
            # baseline, if less: on a queueing server latency grows with the window.
            limit, busy_then, mean_then = self._dip
            self._dip = None
            self._set_limit(
                max(DIP_WINDOW, min(limit, busy_then * GROW_BELOW * baseline / mean_then))
            )
            return
        if busy * 2 < self._limit:
            # Not using the limit (the rate limiter or the source holds the pace): the latency
            # says nothing about it, but a window grown in an opening burst is brought back to
            # what is used, as TCP validates an idle window (RFC 7661), so that a burst later
            # cannot queue it all on our side.
            self._set_limit(max(float(self.min_limit), _UNUSED_HEADROOM * busy))
            return
        limit = self._limit
        if self._paced:
            # The limiter paces by the server's stated limits: grow while the window is full
            # (slow start goes on), so the window is never what holds the run below them.
            if not self._slow_start and busy >= int(limit):
                limit += max(1.0, _GROWTH * limit)
            self._set_limit(min(limit, self._stated_window()))
            return
        if mean <= GROW_BELOW * baseline:
            if not self._slow_start and busy >= int(limit):
                # Only a window that was full held the pace back; one the rate limiter keeps
                # half empty would grow without end and only queue requests on our side.
                limit += max(1.0, _GROWTH * limit)
            self._set_limit(limit)
            return
        self._slow_start = False
        if (mean - margin) / baseline > TOLERANCE:
            # Shrink to where the queue would be short again: latency grows with the queue.
            limit *= max(_MAX_SHRINK, GROW_BELOW * baseline / mean)
        # Else maybe the start of a queue: hold.
        self._set_limit(limit)
        if not self._confirmed:
            self._dip_now(busy, mean)

    def _dip_now(self, busy: int, mean: float) -> None:
        """Latency rose, against a baseline measured with more in flight than this server may
        have slots: it may include a queue, which would then read as the server's unloaded
        latency for good. One round at `DIP_WINDOW` in flight measures it, as BBR's ProbeRTT
        drains the queue to measure a path's delay; then back (see `_end_round`)."""
        self._slow_start = False
        if self._limit > DIP_WINDOW:
            self._dip = (self._limit, busy, mean)
            self._set_limit(DIP_WINDOW)

    def _stated_window(self) -> float:
        """What the stated request rate needs in flight at the latency seen, with the same
        headroom a window is validated to (`_UNUSED_HEADROOM`), and never below the opening
        window (a fast server's one or two in flight leave no room for jitter): more would
        only wait at the rate limiter, their time running (inf: no stated request rate)."""
        if self._stated_rate is None or self._round_latency is None:
            return math.inf
        latency = self._round_latency  # a round's mean: one sample's is too noisy a bound
        return max(DEFAULT_INITIAL, _UNUSED_HEADROOM * self._stated_rate * latency)

    def _set_limit(self, limit: float) -> None:
        self._limit = min(float(self.max_limit), max(float(self.min_limit), limit))
        self._round_size = max(MIN_ROUND, int(self._limit))

    def _new_round(self, now: float) -> None:
        self._round += 1
        self._round_size = max(MIN_ROUND, int(self._limit))
        self._enlisted = self._returned = 0
        self._n = self._busy = 0
        self._sum = self._sumsq = self._latency = 0.0

    def _update_baseline(self, bound: float, now: float) -> float:
        if now - self._window_start > _BASELINE_WINDOW:
            # Forget an old minimum slowly, in case the server became slower for good; not at
            # once, since while we keep it busy every recent latency includes its queue.
            if self._baseline is not None and self._baseline_next is not None:
                self._baseline = min(self._baseline_next, self._baseline * _BASELINE_DRIFT)
            self._baseline_next = None
            self._window_start = now
        self._baseline = bound if self._baseline is None else min(self._baseline, bound)
        self._baseline_next = (
            bound if self._baseline_next is None else min(self._baseline_next, bound)
        )
        return self._baseline

    def _drop(self, slot: _Slot, now: float) -> bool:
        """A timeout or a refusal: cut, once per overload. Returns True if it cut."""
        # The refusals and timeouts of one overload arrive together: only an attempt admitted
        # after the last cut, and a latency after it, says the cut was not enough (TCP cuts
        # once per window of losses; the rate limiter once per generation).
        if slot.started < self._last_drop or now - self._last_drop < (self._rtt or 0.0):
            return False
        self._last_drop = now
        self._slow_start = False
        limit = self._limit if self._dip is None else self._dip[0]
        self._dip = None
        self._set_limit(max(float(self.min_limit), limit * _DROP_FACTOR))
        self._new_round(now)  # what is in flight was sent under the old limit
        return True


def _states_limits(info: RateLimitInfo) -> bool:
    return (
        info.limit_requests is not None
        or info.limit_tokens is not None
        or info.limit_input_tokens is not None
        or info.limit_output_tokens is not None
    )
