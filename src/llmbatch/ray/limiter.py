"""The cluster-wide limiter: one actor owns a `RateLimiter`; workers lease slices of it.

    limiter = ClusterLimiter.create(requests_per_minute=1200)   # starts the actor
    admission = limiter.local()                                  # in a worker: a LeasedLimiter
    async with admission.admit(request) as permit: ...           # the same contract as local

Workers do not ask the actor once per request: each leases a slice of capacity (the request
slots of `slice_seconds`, default 0.25 s, and a token budget), waits out each slot locally,
returns what it did not use, and settles actual token usage with its next lease. The actor's
limiter adapts exactly as a local one does, for the whole cluster: workers forward signals
(headers, a congestion refusal with the generation its slot was leased under, how many slots
they really used and whether they succeeded), never fabricated errors. One congestion event
seen by several workers is one cut; a pause or a cut reaches every worker at its next lease
(within one slice), which drops the slots of the discarded schedule, held or slept for.

A worker books at most one slice ahead of its own schedule: its waiters would otherwise
lease slice after slice, holding seconds of the cluster's timeline booked at a rate that a
cut has since made too fast (the cause of a cluster overshooting under load). Slots given
back count only if the cluster's schedule is still the one they were leased under, and never
rebook slots another worker holds.

While nothing is known of the server the opening is a slow start clocked by answers
(`llmbatch.ray.window`): workers report slots let pass and attempts finished with their
leases. After a cut no lease bursts for NO_BURST_AFTER_CUT; a worker woken late for a slot
lets it pass.
`clock` and `sleep` are injectable (`ClusterLimiter.local`, `ClusterBudget`).
"""

from __future__ import annotations

import asyncio
import collections
import math
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Any

import ray

from ..admission import Feedback, PermitBase
from ..budget import Budget
from ..limiter import Estimate, RateLimiter, pauses_everyone
from ..pricing import FixedPrices, Pricer
from ..types import CompletionRequest, CompletionResponse, RateLimitInfo
from .budget import ClusterBudget
from .window import OpeningWindow

__all__ = ["ClusterLimiter", "LeasedLimiter"]

DEFAULT_SLICE_SECONDS = 0.25
UNLIMITED_SLICE = 64  # slots per lease while no rate is known
OBSERVE_EVERY = 1.0  # seconds between forwarded rate-limit headers, per worker
GAUGES_EVERY = 1.0  # seconds between a worker's in-flight / waiting reports
# While the opening paces a server of unknown limits, a lease holds the slots of this many
# seconds at most: a cut then reaches every worker within it (and one round trip).
OPENING_LEASE = 0.02
WINDOW_POLL = 0.025  # a worker the window turned away asks again after this, or an answer
# After a cut the cluster runs its server's bucket near empty: for this long a lease starts
# at most one slot ahead of the pace, whatever credit the actor's timeline holds.
NO_BURST_AFTER_CUT = 5.0
# A wait shorter than this is none (a virtual clock may not advance by less: a sleeper woken
# a rounding short of its time must not sleep again).
_DUE = 1e-6

Tokens = tuple[int, int, int]  # per budget: total, input, output


class _LimiterState:
    """Owns the cluster's `RateLimiter`; its methods run one at a time."""

    def __init__(
        self,
        rpm: float | None,
        tpm: float | None,
        slice_seconds: float,
        itpm: float | None = None,
        otpm: float | None = None,
        max_cost: float | None = None,
        spent: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limiter = RateLimiter(
            rpm, tpm, input_tokens_per_minute=itpm, output_tokens_per_minute=otpm, clock=clock
        )
        self.slice = slice_seconds
        self._clock = clock
        # The opening's slow start (`llmbatch.ray.window`), while nothing is known.
        self.window = OpeningWindow(clock, on=self.limiter.adaptive)
        self._cut_at = -math.inf
        self._last_slot = -math.inf  # the latest slot leased so far
        self._gauges: dict[str, tuple[int, int]] = {}  # per worker: (in flight, waiting)
        # The cluster's one money cap (`llmbatch.ray.budget`); workers price, it adds up.
        self.budget = None if max_cost is None else Budget(max_cost, _NO_PRICES, spent=spent)

    def budget_reserve(self, worst_case: float | None) -> bool | str | None:
        """True: reserved; None: ask again after others settle; a str: refused, and why."""
        assert self.budget is not None
        fits = self.budget.try_reserve(worst_case)
        return self.budget.exhausted or "refused" if fits is False else fits

    def budget_settle(self, reserved: float, actual: float) -> None:
        assert self.budget is not None
        self.budget.settle_amount(reserved, actual)

    def budget_status(self) -> dict[str, Any]:
        b = self.budget
        if b is None:
            return {}
        return {"spent": b.spent, "reserved": b.reserved, "exhausted": b.exhausted}

    def lease(
        self,
        need: Tokens,
        settle: Tokens = (0, 0, 0),
        used: int = 0,
        succeeded: int = 0,
        returned: int = 0,
        schedule: tuple[int, int] | None = None,
        dropped: int = 0,
        finished: int = 0,
        want: int = UNLIMITED_SLICE,
    ) -> tuple[list[float], Tokens, int, int, float]:
        """(slot delays, tokens leased per budget, pause epoch, congestion generation, how
        long a slot stays good once due). No delays: the opening's window is full, ask again
        after an answer.

        `need` is the next request's estimate per budget (total, input, output); `settle`
        what the worker's finished requests used beyond (or below) their estimates;
        `returned` request slots of an older lease the worker will not use, leased under
        `schedule` (the pause epoch and generation the worker last saw); `dropped` slots it
        let pass unused since its last lease; `finished` its attempts ended since then;
        `want` how many of its attempts wait for a slot (the window leases no more).
        """
        lim = self.limiter
        self.window.resolved(used, dropped, finished)
        if any(settle):
            lim.settle_tokens(*settle)
        if returned and (schedule is None or schedule == (lim.epoch, lim.generation)):
            # Only slots of the schedule still in force go back: a pause or a cut has since
            # restarted the timeline, and returning older slots (priced at the new, slower
            # rate) would hand out capacity the server never had.
            self._give_back(returned, (0, 0, 0))
        self.report(used, succeeded)
        rpm = lim.requests_per_minute
        count = max(1, math.ceil(rpm * self.slice / 60)) if rpm else UNLIMITED_SLICE
        window = self.window.room(lim.limits_known)
        if window is not None:
            # No more than the worker's waiters take: a slot held by a worker whose callers
            # are all busy would keep the window shut for the others.
            count = min(count, window, max(1, want))
            if count <= 0:
                return [], (0, 0, 0), lim.epoch, lim.generation, OPENING_LEASE
        if self._clock() - self._cut_at < NO_BURST_AFTER_CUT:
            # The server's bucket has no burst left to take: the actor's timeline may hold
            # some (slots given back or let pass unused), a lease of it would go at once.
            lim.hold_burst()
        limits = (lim.tokens_per_minute, lim.input_tokens_per_minute, lim.output_tokens_per_minute)
        grant = tuple(_grant(n, limit, self.slice) for n, limit in zip(need, limits, strict=True))
        t, i, o = grant
        # During the opening a lease holds only the slots due within OPENING_LEASE: the first
        # refusal's cut reaches a worker at its next lease, and a worker holding a slice of
        # the opening (64 slots, more than its concurrency sends before that refusal) never
        # leased again before sending them all into the refusing server.
        # Slots not used soon after they fall due are dropped by the worker (a burst after an
        # idle spell otherwise); in the opening, as soon as a fresh lease could be asked for.
        opening = lim.opening or window is not None
        horizon = OPENING_LEASE if opening else None
        delays = lim.lease(count, t, input_tokens=i, output_tokens=o, horizon=horizon)
        if window is not None:
            delays = self.window.leased(delays, spread_over=OPENING_LEASE)
        if delays:
            self._last_slot = max(self._last_slot, self._clock() + delays[-1])
        keep = OPENING_LEASE if opening else self.slice
        return delays, (t, i, o), lim.epoch, lim.generation, keep

    def give_back(self, count: int, tokens: Tokens = (0, 0, 0)) -> None:
        self._give_back(count, tokens)

    def _give_back(self, count: int, tokens: Tokens) -> None:
        t, i, o = tokens
        self.window.given_back(count)
        self.limiter.give_back(count, t, input_tokens=i, output_tokens=o)
        # GCRA takes slots back from the end of its timeline, but these come from the middle
        # (other workers leased after them): the next lease would be given the times of slots
        # already handed out, two sends at once. So the schedule restarts one interval
        # after the last slot handed out: the slots given back are given up, not rebooked.
        self.limiter.hold_burst(after=self._last_slot)

    def report(self, used: int, succeeded: int) -> None:
        # The send rate the control law measures is what workers really sent, not what they
        # leased (an unlimited lease hands out far more slots than get used).
        if used:
            self.window.sent(used)
            self.limiter.control.sent(used)
        if succeeded:
            self.window.answered(succeeded)
            self.limiter.succeeded(succeeded)

    def congested(
        self,
        generation: int,
        retry_after: float | None,
        info: dict[str, Any] | None,
        used: int = 0,
        succeeded: int = 0,
    ) -> bool:
        self.report(used, succeeded)  # first: the cut is relative to the measured rates
        rate_limit = RateLimitInfo(**info) if info else None
        fb = Feedback(congested=True, retry_after=retry_after, rate_limit=rate_limit)
        before = self.limiter.generation
        paused = self.limiter.apply(fb, generation)
        if self.limiter.generation != before:
            # A cut, or a hold on a known limit: either way the server's bucket is empty
            # now, so no lease bursts for a while (see NO_BURST_AFTER_CUT).
            self._cut_at = self._clock()
        return paused

    def observe(self, info: dict[str, Any]) -> None:
        self.limiter.observe(RateLimitInfo(**info))

    def gauges(self, worker: str, in_flight: int, waiting: int) -> None:
        """A worker's attempts in flight and waiting for a slot, as it last counted them."""
        if in_flight or waiting:
            self._gauges[worker] = (in_flight, waiting)
        else:
            self._gauges.pop(worker, None)

    def status(self) -> dict[str, Any]:
        """The limiter's status; `in_flight` and `waiting` are the cluster's, summed over
        the workers' reports (the actor's own limiter only hands out leases)."""
        status = asdict(self.limiter.status())
        status["in_flight"] = sum(f for f, _ in self._gauges.values())
        status["waiting"] = sum(w for _, w in self._gauges.values())
        return status


def _grant(need: int, limit: float | None, slice_seconds: float) -> int:
    """Tokens of one budget to lease: a slice's worth, at least the next request's need
    (0 for a budget with no limit; a need over the whole limit is the worker's to refuse)."""
    if not limit:
        return 0
    grant = max(need, math.ceil(limit * slice_seconds / 60))
    return need if grant > limit else grant


# The actor's budget never prices anything itself (workers send amounts): no data to load.
_NO_PRICES = Pricer(FixedPrices(0.0, 0.0))

# Actors need no CPU of their own: they wait on the network and on timers.
_LimiterActor: Any = ray.remote(num_cpus=0)(_LimiterState)


class ClusterLimiter:
    """A handle on the cluster's limiter actor; picklable, so it travels to workers.

    `ClusterLimiter.create(...)` starts the actor; `local()` gives a worker its `Admission`.
    With no limits the actor starts adaptive and learns the server's limit from its headers
    and refusals, for the whole cluster at once.
    """

    def __init__(self, actor: Any, slice_seconds: float = DEFAULT_SLICE_SECONDS) -> None:
        self.actor = actor
        self.slice_seconds = slice_seconds
        self.max_cost: float | None = None
        self.pricer: Pricer | None = None

    @classmethod
    def create(
        cls,
        requests_per_minute: float | None = None,
        tokens_per_minute: float | None = None,
        *,
        input_tokens_per_minute: float | None = None,
        output_tokens_per_minute: float | None = None,
        slice_seconds: float = DEFAULT_SLICE_SECONDS,
        max_cost: float | None = None,
        spent: float = 0.0,
        pricer: Pricer | None = None,
    ) -> ClusterLimiter:
        """`max_cost` (USD) caps the whole cluster's spend, `spent` already counted; `pricer`
        (picklable: it travels to the workers) prices each attempt."""
        actor = _LimiterActor.remote(
            requests_per_minute,
            tokens_per_minute,
            slice_seconds,
            input_tokens_per_minute,
            output_tokens_per_minute,
            max_cost,
            spent,
        )
        limiter = cls(actor, slice_seconds)
        if max_cost is not None:
            limiter.max_cost = max_cost
            limiter.pricer = pricer if pricer is not None else Pricer()
        return limiter

    def local(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> LeasedLimiter:
        """A worker's `Admission` on the cluster's limit (`clock`, `sleep`: injectable)."""
        return LeasedLimiter(self.actor, self.slice_seconds, clock=clock, sleep=sleep)

    def budget(
        self, *, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    ) -> ClusterBudget | None:
        """A worker's admission on the cluster's money cap, or None without one."""
        if self.max_cost is None or self.pricer is None:
            return None
        return ClusterBudget(self.actor, self.pricer, self.max_cost, sleep=sleep)

    def budget_status(self) -> dict[str, Any]:
        """{"spent", "reserved", "exhausted"} of the cluster's budget ({} without one)."""
        return ray.get(self.actor.budget_status.remote())  # type: ignore[no-any-return]

    def status(self) -> dict[str, Any]:
        """The cluster limiter's status (`RateLimiterStatus` fields); `in_flight` and
        `waiting` count every worker's attempts."""
        return ray.get(self.actor.status.remote())  # type: ignore[no-any-return]

    async def astatus(self) -> dict[str, Any]:
        """`status()` without blocking the event loop."""
        return await self.actor.status.remote()  # type: ignore[no-any-return]


class LeasedPermit(PermitBase):
    """One attempt admitted from a leased slice."""

    __slots__ = ("estimate", "generation", "owner")

    def __init__(self, owner: LeasedLimiter, estimate: Tokens) -> None:
        super().__init__()
        self.owner = owner
        self.estimate = estimate
        self.generation = 0

    async def _acquire(self) -> None:
        await self.owner._acquire(self)

    def _release(self, response: CompletionResponse | None, error: BaseException | None) -> None:
        self.owner._release(self, response, error)


class LeasedLimiter:
    """A worker's view of the cluster limiter: an `Admission` that spends leased slices.

    Bound to the event loop it is first used on. `clock` and `sleep` are injectable, so the
    leasing runs in virtual time in tests (the actor's own limiter takes the real clock).
    """

    def __init__(
        self,
        actor: Any,
        slice_seconds: float = DEFAULT_SLICE_SECONDS,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.actor = actor
        self.slice_seconds = slice_seconds
        self._clock = clock
        self._sleep = sleep
        self._slots: collections.deque[float] = collections.deque()
        # Leased tokens per budget (total, input, output); a budget the cluster does not
        # limit is leased as 0 and never checked.
        self._tokens = [0, 0, 0]
        self._limited = [False, False, False]
        self._epoch = -1
        self._generation = 0
        self._settle = [0, 0, 0]
        self._used = 0  # slots spent since the last lease
        self._succeeded = 0
        self._dropped = 0  # slots let pass unused since the last lease
        self._finished = 0  # attempts ended since the last lease
        self._answered: asyncio.Event | None = None  # set by an attempt's end (`_release`)
        self._paused_until = 0.0
        self._schedule = 0  # bumped when the held schedule is voided (see `_void_schedule`)
        self._horizon = 0.0  # the last slot leased: how far ahead this worker has booked
        self._keep = slice_seconds  # a held slot this long past due is dropped (the lease says)
        self._lag = 0.0  # how late the process woke for its opening slots (they shift by it)
        self._round_trip = math.inf  # the quickest lease round trip seen
        self._stale_lease = False  # the last lease's slots were all past their keep when read
        self._last_observe = 0.0
        self._lock: asyncio.Lock | None = None
        self.leases = 0
        self.in_flight = 0  # attempts admitted and not yet released
        self.waiting = 0  # attempts waiting for a slot
        self._key = uuid.uuid4().hex  # this worker, in the cluster's gauges
        self._last_gauges = -math.inf
        self._reported = (0, 0)

    def admit(self, request: CompletionRequest) -> LeasedPermit:
        est = Estimate.of(request)
        return LeasedPermit(self, (est.total, est.input, est.output))

    def _enough(self, need: Tokens) -> bool:
        return all(
            not limited or have >= n
            for limited, have, n in zip(self._limited, self._tokens, need, strict=True)
        )

    def _take(self, need: Tokens, sign: int) -> None:
        for k in range(3):
            if self._limited[k]:
                self._tokens[k] -= sign * need[k]

    async def _acquire(self, permit: LeasedPermit) -> None:
        self.waiting += 1
        self._report_gauges()
        try:
            await self._wait_for_slot(permit)
        finally:
            self.waiting -= 1
        self.in_flight += 1
        self._report_gauges()

    def _report_gauges(self, force: bool = False) -> None:
        """Tell the cluster this worker's gauges: at most once a second (a fire-and-forget
        call), at once when they fall to zero or when `force`d."""
        now = self._clock()
        counts = (self.in_flight, self.waiting)
        idle = counts == (0, 0)
        if counts == self._reported or not (
            force or idle or now - self._last_gauges >= GAUGES_EVERY
        ):
            return
        self._last_gauges = now
        self._reported = counts
        self.actor.gauges.remote(self._key, *counts)

    async def _wait_for_slot(self, permit: LeasedPermit) -> None:
        need = permit.estimate
        if self._lock is None:
            self._lock = asyncio.Lock()
        while True:
            now = self._clock()
            # Slots far in the past belong to an idle spell; using them now would be a burst
            # (or, in the opening, a send on a schedule the cluster may have cut since).
            while self._slots and self._slots[0] < now - self._keep:
                self._slots.popleft()
                self._dropped += 1
            if self._slots and self._enough(need) and now >= self._paused_until:
                slot = self._slots.popleft()
                self._take(need, 1)
                schedule = self._schedule
                voided = False
                while True:
                    now = self._clock()
                    if self._keep < self.slice_seconds:
                        # Late for the slot in the opening (woken late, or the lease's reply
                        # read late): the lease's later slots shift by as much, so that those
                        # overdue go out spaced as leased (OPENING_LEASE), not all at the
                        # instant the process runs again.
                        self._lag = max(self._lag, now - slot)
                    delay = slot + self._lag - now
                    if delay <= _DUE:
                        break
                    try:
                        await self._sleep(delay)
                    except BaseException:
                        # Cancelled while waiting for our slot: it goes back, at the front
                        # (unless a cut or pause voided it meanwhile).
                        if self._schedule == schedule:
                            self._slots.appendleft(slot)
                        else:
                            self._dropped += 1
                        self._take(need, -1)
                        raise
                    # A refusal or a new schedule from the cluster voided the slot we slept
                    # for: it was booked at the old rate. Or woken this late, the process was
                    # starved of CPU: the cluster may have cut since, on a refusal not read
                    # here yet (in the opening, where a slot keeps 20 ms, sending now is
                    # sending into the refusing server). Let the slot pass; take one on the
                    # schedule in force (the next lease brings it).
                    voided = self._schedule != schedule or self._clock() > slot + self._keep
                    if voided:
                        break
                if voided:
                    self._dropped += 1
                    self._take(need, -1)
                    continue
                break
            async with self._lock:
                if not self._slots or not self._enough(need):
                    # Book at most a slice ahead: a worker whose waiters lease slot after
                    # slot would hold seconds of the cluster's schedule, booked at a rate
                    # that a cut has since made too fast (and a regrowth too slow).
                    ahead = self._horizon - self._clock() - self.slice_seconds
                    if ahead > 0:
                        await self._sleep(ahead)
                        continue
                    await self._refill(need)
            if self._paused_until > self._clock():
                await self._sleep(self._paused_until - self._clock())
        permit.generation = self._generation
        self._used += 1

    def _void_schedule(self) -> None:
        """The slots held, and those waiters sleep for, belong to a discarded schedule."""
        self._dropped += len(self._slots)
        self._slots.clear()
        self._schedule += 1
        self._horizon = 0.0

    async def _refill(self, need: Tokens) -> None:
        settle = (self._settle[0], self._settle[1], self._settle[2])
        self._settle = [0, 0, 0]
        used, self._used = self._used, 0
        succeeded, self._succeeded = self._succeeded, 0
        dropped, self._dropped = self._dropped, 0
        finished, self._finished = self._finished, 0
        returned = 0
        if any(self._limited):
            # Tokens pace by the delay of a lease's first slot: a slot left from an older
            # lease would let the request go before it. Give those back.
            now = self._clock()
            returned = sum(1 for t in self._slots if t >= now)
            dropped += len(self._slots) - returned
            self._slots.clear()
        if self._answered is None:
            self._answered = asyncio.Event()  # made here: bound to the loop that waits on it
        self._answered.clear()
        asked = self._clock()
        delays, tokens, epoch, generation, keep = await self.actor.lease.remote(
            need,
            settle,
            used,
            succeeded,
            returned,
            (self._epoch, self._generation),
            dropped,
            finished,
            self.waiting,
        )
        self.leases += 1
        self._keep = keep
        self._lag = 0.0  # fresh slots: see `_wait_for_slot`
        # The slots count from when the actor booked them: a reply read later than this
        # worker's quickest round trip (its process starved of CPU) holds slots as old as the
        # delay, maybe of a schedule a cut has since discarded (traced: six sent 30 ms after
        # the cluster's first cut, on slots leased before it). Counted from the reply's
        # reading they looked fresh; now the stale ones are let pass (see `_keep`). A lease
        # asked for after a stale one knows of any cut before it: its slots count as read, so
        # a worker whose replies are always slow still sends.
        now = self._clock()
        self._round_trip = min(self._round_trip, now - asked)
        booked = now if self._stale_lease else asked + self._round_trip
        self._stale_lease = bool(delays) and booked + delays[-1] < now - keep
        if epoch != self._epoch or generation != self._generation:
            self._void_schedule()  # a pause or a cut discarded the schedule these came from
            self._epoch = epoch
            self._generation = generation
        self._slots.extend(booked + d for d in delays)
        if delays:
            self._horizon = max(self._horizon, booked + delays[-1])
        for k in range(3):
            self._limited[k] = tokens[k] > 0
            self._tokens[k] += tokens[k]
        if not delays:
            # The opening's window is full: room comes with answers (ours, or another
            # worker's reported with its lease).
            await self._answer_or_timer(WINDOW_POLL)

    async def _answer_or_timer(self, seconds: float) -> None:
        assert self._answered is not None
        answered = asyncio.ensure_future(self._answered.wait())
        timer = asyncio.ensure_future(self._sleep(seconds))
        try:
            await asyncio.wait({answered, timer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            answered.cancel()
            timer.cancel()

    def _release(
        self,
        permit: LeasedPermit,
        response: CompletionResponse | None,
        error: BaseException | None,
    ) -> None:
        self.in_flight -= 1
        self._finished += 1
        if self._answered is not None:
            self._answered.set()
        self._report_gauges()
        if response is not None:
            usage = response.usage
            actual = (usage.total_tokens, usage.prompt_tokens, usage.completion_tokens)
            if any(actual):
                est = permit.estimate
                # As `RateLimiter.settle`: unused output is not given back on the combined
                # budget (providers count `max_tokens` there), only on the output budget.
                deltas = (
                    actual[1] - est[1] + max(0, actual[2] - est[2]),
                    actual[1] - est[1],
                    actual[2] - est[2],
                )
                for k in range(3):
                    if self._limited[k]:
                        self._settle[k] += deltas[k]
        fb = permit.load_feedback(response, error)
        if fb.ok:
            self._succeeded += 1
            info = fb.rate_limit
            now = self._clock()
            if info is not None and now - self._last_observe >= OBSERVE_EVERY:
                self._last_observe = now
                self.actor.observe.remote(asdict(info))
        elif fb.congested:
            if permit.generation < self._generation:
                return  # this event was already answered by a cut
            # The same pause rule as a local RateLimiter, applied here at once rather than
            # after a round trip to the actor; the actor applies it for the cluster.
            if pauses_everyone(fb):
                assert fb.retry_after is not None
                self._paused_until = max(self._paused_until, self._clock() + fb.retry_after)
                permit.paused_for_retry = True
            self._void_schedule()
            info_dict = asdict(fb.rate_limit) if fb.rate_limit is not None else None
            used, self._used = self._used, 0
            succeeded, self._succeeded = self._succeeded, 0
            self.actor.congested.remote(
                permit.generation, fb.retry_after, info_dict, used, succeeded
            )

    def close(self) -> None:
        """Give unused slots and tokens back to the cluster."""
        now = self._clock()
        unused = sum(1 for t in self._slots if t >= now)
        back = tuple(
            max(0, have - owed) for have, owed in zip(self._tokens, self._settle, strict=True)
        )
        if unused or any(self._tokens) or any(self._settle):
            self.actor.give_back.remote(unused, back)
        self._slots.clear()
        self._tokens = [0, 0, 0]
        self._settle = [0, 0, 0]
        if self._reported != (0, 0):
            self.actor.gauges.remote(self._key, 0, 0)  # gone: nothing of ours in flight
            self._reported = (0, 0)
