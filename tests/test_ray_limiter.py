"""The cluster limiter's leases and the cluster budget, in virtual time (no Ray cluster).

The actor's state runs in this process behind a stand-in for Ray's actor handle
(`helpers.LocalActor`: `actor.method.remote(...)` calls the state and returns an awaitable,
as an `ObjectRef` is);
the workers' `LeasedLimiter` and `ClusterBudget` take the test clock's `sleep`, so nothing
really waits and every time below is exact.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest

pytest.importorskip("ray")

from llmbatch import CompletionRequest, CompletionResponse, RateLimitError, Usage
from llmbatch.budget import BudgetExceededError
from llmbatch.pricing import FixedPrices, Pricer
from llmbatch.ray.budget import RETRY_SECONDS, ClusterBudget
from llmbatch.ray.limiter import NO_BURST_AFTER_CUT, OPENING_LEASE, LeasedLimiter, _LimiterState
from llmbatch.ray.window import WINDOW_GROWTH, WINDOW_PRESUME, WINDOW_SPREAD, WINDOW_START

from .conftest import FakeClock
from .helpers import LocalActor, SteppedClock

REQ = CompletionRequest(prompt="q", max_tokens=8)


def cluster(
    clock: FakeClock, rpm: float | None = None, **kw: Any
) -> tuple[_LimiterState, LocalActor]:
    state = _LimiterState(rpm, None, 0.25, clock=clock, **kw)
    state.limiter.safety_margin = 0.0
    state.limiter.burst_seconds = 0.0
    return state, LocalActor(state)


def worker(clock: FakeClock, actor: LocalActor) -> LeasedLimiter:
    return LeasedLimiter(actor, 0.25, clock=clock, sleep=clock.sleep)


async def admit(lim: LeasedLimiter, clock: FakeClock, ok: bool = True) -> float:
    """One attempt: admitted at the returned time, answered at once (ok or a bare 429)."""
    async with lim.admit(REQ) as permit:
        at = clock.now
        if not ok:
            raise RateLimitError("rate limited")
        permit.record(CompletionResponse("ok"))
    return at


async def test_two_workers_share_one_rate(clock: FakeClock) -> None:
    _, actor = cluster(clock, 600)  # 10 a second for the whole cluster
    a, b = worker(clock, actor), worker(clock, actor)
    start = clock.now
    times = [await admit(a if i % 2 else b, clock) - start for i in range(40)]
    assert times == sorted(times)
    # Forty admissions at 10 a second take 3.9 s whichever worker asks: never twice the rate
    # (a slot leased by one worker and used late by it costs at most one slot).
    assert 3.9 - 1e-9 <= times[-1] <= 4.0 + 1e-9
    assert a.leases >= 2 and b.leases >= 2


async def test_a_worker_books_at_most_a_slice_ahead() -> None:
    # Many waiters on one worker: it leases slice after slice, but never holds seconds of the
    # cluster's schedule (booked at a rate a cut may since have made too fast). Without the
    # bound, thirty waiters book 2.4 s ahead.
    clock = SteppedClock()
    state = _LimiterState(600, None, 0.25, clock=clock)
    state.limiter.safety_margin = 0.0
    state.limiter.burst_seconds = 0.0
    lim = LeasedLimiter(LocalActor(state), 0.25, clock=clock, sleep=clock.sleep)
    ahead: list[float] = []
    real_lease = state.lease

    def lease(*args: Any) -> Any:
        ahead.append(state.limiter._req.tat - clock.now)  # booked ahead before this lease
        return real_lease(*args)

    state.lease = lease  # type: ignore[method-assign]
    tasks = [asyncio.create_task(admit(lim, clock)) for _ in range(30)]
    await clock.advance_to(10.0)
    times = await asyncio.gather(*tasks)
    assert max(times) == pytest.approx(2.9)  # 10 a second, as the cluster allows
    assert len(ahead) >= 5 and max(ahead) <= 0.25 + 0.1 + 1e-9  # a slice and one slot


async def test_a_refusal_cuts_once_for_the_cluster_and_voids_the_old_schedule(
    clock: FakeClock,
) -> None:
    state, actor = cluster(clock)  # nothing known: learn from refusals
    a, b = worker(clock, actor), worker(clock, actor)
    for _ in range(20):
        await admit(a, clock)
        await admit(b, clock)
        clock.advance(0.05)
    assert state.limiter.control.cuts == 0
    with pytest.raises(RateLimitError):
        await admit(a, clock, ok=False)
    with pytest.raises(RateLimitError):  # leased before the cut: the same event
        await admit(b, clock, ok=False)
    assert state.limiter.control.cuts == 1
    rate = state.limiter.requests_per_minute
    assert rate is not None and rate < 40 * 60  # below the 40 a second they were sending
    # After the cut, both workers' next admissions follow the new, slower schedule.
    start = clock.now
    times = [await admit(a if i % 2 else b, clock) - start for i in range(10)]
    assert times[-1] >= 9 * 60 / rate * 0.9


async def test_a_cancelled_waiter_gives_its_slot_back(clock: FakeClock) -> None:
    _, actor = cluster(clock, 60)  # one a second
    lim = worker(clock, actor)
    await admit(lim, clock)  # t=0; the next slot is at t=1
    blocked = asyncio.Event()

    async def stuck_sleep(seconds: float) -> None:
        blocked.set()
        await asyncio.Event().wait()  # until cancelled

    lim._sleep = stuck_sleep
    waiter = asyncio.create_task(admit(lim, clock))
    await blocked.wait()
    held = len(lim._slots)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert len(lim._slots) == held + 1  # back at the front, for the next waiter
    lim._sleep = clock.sleep
    start = clock.now
    assert await admit(lim, clock) - start == pytest.approx(1.0, abs=0.01)


async def test_the_cluster_budget_waits_for_others_to_settle_in_virtual_time(
    clock: FakeClock,
) -> None:
    state, actor = cluster(clock, max_cost=1.0)
    pricer = Pricer(FixedPrices(input=0.0, output=100_000.0), model="m")  # 8 tokens: $0.80
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 3:  # meanwhile the first attempt settles for less than reserved
            first.leave(None)
        await asyncio.sleep(0)

    budget = ClusterBudget(actor, pricer, 1.0, sleep=sleep)
    first = budget.admit(REQ)
    await first.__aenter__()
    second = budget.admit(REQ)
    await second.__aenter__()  # did not fit beside the first: asked again until it settled
    assert sleeps == [RETRY_SECONDS] * 3
    assert state.budget is not None and state.budget.in_flight == 1
    second.record(CompletionResponse("ok", usage=Usage(1, 8)))  # $0.80, as reserved
    second.leave(None)
    third = budget.admit(REQ)  # $0.80 spent of $1: nothing in flight, refused for good
    with pytest.raises(BudgetExceededError):
        await third.__aenter__()
    assert budget.refused is not None
    assert sleeps == [RETRY_SECONDS] * 3  # refused at once, not asked again and again


async def test_the_cluster_counts_every_workers_attempts_in_flight_and_waiting() -> None:
    # The engines run in the workers, whose events never reach the driver: the in-flight and
    # waiting gauges of a Ray run are the workers' counts, summed by the cluster limiter.
    clock = SteppedClock()
    state = _LimiterState(60, None, 0.25, clock=clock)  # one a second
    state.limiter.burst_seconds = 0.0
    actor = LocalActor(state)
    a = LeasedLimiter(actor, 0.25, clock=clock, sleep=clock.sleep)
    b = LeasedLimiter(actor, 0.25, clock=clock, sleep=clock.sleep)
    release = asyncio.Event()

    async def call(lim: LeasedLimiter) -> None:
        async with lim.admit(REQ) as permit:
            await release.wait()
            permit.record(CompletionResponse("ok"))

    tasks = [asyncio.create_task(call(lim)) for lim in (a, a, b, b, b)]
    await clock.advance_to(2.5)  # three slots so far: 0, 1 and 2 s
    status = state.status()
    assert (status["in_flight"], status["waiting"]) == (3, 2)
    assert (a.in_flight + b.in_flight, a.waiting + b.waiting) == (3, 2)
    release.set()
    await clock.advance_to(10.0)
    await asyncio.gather(*tasks)
    a.close()
    b.close()
    status = state.status()
    assert (status["in_flight"], status["waiting"]) == (0, 0)


async def test_during_the_opening_a_cut_reaches_a_worker_within_a_short_lease() -> None:
    # Nothing is known of the server: the actor paces the opening and workers lease from it.
    # A lease of the opening used to hold 64 slots (a quarter second of it, more than a worker
    # of 16 sends before the first refusal), so a worker never leased again before sending
    # all of them: the first refusal's cut never reached it, and in a Ray run most of the
    # opening's refusals (17 of 21 in a trace) were sent on slots leased before that cut.
    clock = SteppedClock()
    state = _LimiterState(None, None, 0.25, clock=clock)
    actor = LocalActor(state)
    a = LeasedLimiter(actor, 0.25, clock=clock, sleep=clock.sleep)
    b = LeasedLimiter(actor, 0.25, clock=clock, sleep=clock.sleep)
    sent: list[tuple[float, int]] = []  # b's admissions: when, and under which generation
    cut: list[float] = []

    async def b_calls() -> None:
        for _ in range(3):
            async with b.admit(REQ) as permit:
                sent.append((clock.now, permit.generation))
                await clock.sleep(0.05)
                permit.record(CompletionResponse("ok"))

    async def a_refused() -> None:
        with pytest.raises(RateLimitError):
            async with a.admit(REQ):  # the opening's first slot: at once
                await clock.sleep(0.001)
                raise RateLimitError("rate limited")
        cut.append(clock.now)

    tasks = [asyncio.create_task(a_refused())]
    tasks += [asyncio.create_task(b_calls()) for _ in range(16)]
    await clock.advance_to(30.0)
    await asyncio.gather(*tasks)
    assert state.limiter.generation == 1  # the refusal cut
    stale = [at for at, generation in sent if generation == 0 and at > cut[0]]
    # After the cut, b sent on old slots only until its lease ran out (and the slot that
    # ended it): none later than OPENING_LEASE after the cut (before: all of its first
    # sixteen, a tenth of a second after it).
    assert max(stale, default=0.0) <= cut[0] + OPENING_LEASE + 0.01, (cut, stale)
    assert len(stale) <= 5, stale
    assert len(sent) == 48


async def test_answers_not_time_clock_the_clusters_opening() -> None:
    # On a loaded machine answers (and the first refusal) are read late. The opening used to
    # grow with wall time (doubling every 50 ms): by the time the first answer was read, every
    # worker sent at its full width (64 here), and a bare-429 server's small bucket refused
    # most of them. As TCP's slow start, the cluster now sends at most WINDOW_START + 2 x the
    # answers it has heard of, however late they come (WINDOW_GROWTH: 1.5 x at present).
    clock = SteppedClock()
    state = _LimiterState(None, None, 0.25, clock=clock)
    actor = LocalActor(state)
    workers = [LeasedLimiter(actor, 0.25, clock=clock, sleep=clock.sleep) for _ in range(4)]
    sent = answered = 0
    ahead: list[float] = []  # at each admission: sent less (1 + growth) x the answers so far
    last = 0.0

    async def call(lim: LeasedLimiter) -> None:
        nonlocal sent, answered, last
        for _ in range(4):
            async with lim.admit(REQ) as permit:
                sent += 1
                ahead.append(sent - (1 + WINDOW_GROWTH) * answered)
                last = clock.now
                await clock.sleep(0.3)  # an answer read 300 ms after the send
                permit.record(CompletionResponse("ok"))
            answered += 1

    tasks = [asyncio.create_task(call(w)) for w in workers for _ in range(16)]
    await clock.advance_to(60.0)
    await asyncio.gather(*tasks)
    assert sent == 256
    assert max(ahead) <= WINDOW_START, max(ahead)  # before: 64, all sent before any answer
    # The window grows by half with each round of answers: 8, 12, 18, 27, 40, 60, then all 64
    # callers from the seventh round trip, so the last of 256 attempts goes out in the ninth
    # (had the window stayed at WINDOW_START: the 32nd).
    assert last < 0.3 * 9, last


async def test_the_opening_of_a_slow_server_still_grows_without_answers() -> None:
    # An LLM may take seconds to answer while a refusal comes back at once: a slot in the
    # air WINDOW_PRESUME without a refusal counts as answered, so the window grows every
    # WINDOW_PRESUME instead of waiting many answers' latencies for a cluster's 64 callers.
    clock = SteppedClock()
    state = _LimiterState(None, None, 0.25, clock=clock)
    actor = LocalActor(state)
    workers = [LeasedLimiter(actor, 0.25, clock=clock, sleep=clock.sleep) for _ in range(4)]
    sent: list[float] = []

    async def call(lim: LeasedLimiter) -> None:
        async with lim.admit(REQ) as permit:
            sent.append(clock.now)
            await clock.sleep(5.0)
            permit.record(CompletionResponse("ok"))

    tasks = [asyncio.create_task(call(w)) for w in workers for _ in range(16)]
    await clock.advance_to(10.0)
    await asyncio.gather(*tasks)
    assert len(sent) == 64
    assert sum(1 for at in sent if at < WINDOW_PRESUME) == WINDOW_START
    # 8, 20, 38, 64 sent (each step 1.5 x those in the air, a poll or two after it, the
    # last lease's slots spread over OPENING_LEASE).
    assert max(sent) <= 3 * WINDOW_PRESUME + 0.1 + OPENING_LEASE


async def test_slots_let_pass_unused_give_the_opening_window_back() -> None:
    # A worker that drops slots (stale, or voided) reports them with its next lease: the
    # window is for attempts in the air, and slots never sent must not shut it for good.
    clock = SteppedClock()
    state = _LimiterState(None, None, 0.25, clock=clock)

    def room(**report: int) -> int:
        """Slots leased until the window is full (the first lease carries `report`)."""
        total = 0
        for _ in range(100):
            delays = state.lease((0, 0, 0), **report)[0]
            if not delays:
                return total
            total += len(delays)
            report = {}
            clock.now += 0.001
        return total  # never full

    assert room() == WINDOW_START  # nothing answered yet
    assert room() == 0
    assert room(dropped=3) == 3  # three let pass unused: three again
    # Two answered, of the eight sent: two attempts less in the air and the window one wider
    # (WINDOW_GROWTH; the window was in use, see the test of a window not filled).
    assert room(used=8, succeeded=2, finished=2) == 3
    assert room(used=1, finished=1) == 1  # one failed: its slot back, no wider


async def test_answers_read_together_open_the_window_spread_over_a_short_lease() -> None:
    # A worker starved of CPU reads its answers late and together, and reports them with one
    # lease: all the room they made came back due at once, was admitted at one instant and,
    # the process starved again, written together later into a bucket crossed meanwhile
    # (traced with two CPU burners: 8-14 of one worker refused at once, most of a run's).
    clock = SteppedClock()
    state = _LimiterState(None, None, 0.25, clock=clock)
    first = state.lease((0, 0, 0))[0]
    while (more := state.lease((0, 0, 0))[0]) and len(first) < WINDOW_START:
        first += more
    assert len(first) == WINDOW_START
    clock.now += 1.0  # the opening's own pace is long over; all eight answers read at once
    delays = state.lease((0, 0, 0), used=8, succeeded=8, finished=8)[0]
    # The room is all there (12: eight finished, the window four wider), one slot at a time
    # within OPENING_LEASE: a stall overruns the rest, which the worker lets pass (before:
    # all twelve due at once).
    assert len(delays) == WINDOW_START + 8 * WINDOW_GROWTH
    gaps = [later - earlier for earlier, later in itertools.pairwise(delays)]
    assert min(gaps) >= OPENING_LEASE / len(delays) * 0.99, delays
    assert max(delays) < OPENING_LEASE
    # Once WINDOW_SPREAD have been answered (a bucket not crossed by then is large), slots
    # come due at once again: a spread costs a server that never refuses a timer a slot.
    clock.now += 1.0
    n = WINDOW_SPREAD
    assert state.lease((0, 0, 0), used=n, succeeded=n, finished=n, want=16)[0] == [0.0] * 16


async def test_after_a_cut_an_idle_cluster_gets_no_burst(clock: FakeClock) -> None:
    # The cluster learned its rate from a refusal: the server's bucket is run near empty. A
    # lease after a pause in leasing (workers busy, slots let pass) found a second of credit
    # on the actor's timeline and handed it out at once: a burst the server refused.
    state = _LimiterState(None, None, 0.25, clock=clock)
    for _ in range(40):  # 20 a second, all answered
        state.lease((0, 0, 0), used=1, succeeded=1, finished=1)
        clock.advance(0.05)
    state.congested(0, None, None)
    rpm = state.limiter.requests_per_minute
    assert rpm is not None and rpm < 20 * 60
    interval = 60 / rpm / (1 - state.limiter.safety_margin)
    clock.advance(2.0)
    delays = state.lease((0, 0, 0))[0]
    assert len(delays) >= 3
    # One slot now, the others one interval apart (before: all at once).
    assert delays[1] == pytest.approx(interval) and delays[2] == pytest.approx(2 * interval)
    clock.advance(NO_BURST_AFTER_CUT + 2.0)  # long after the cut: an idle spell's burst again
    assert state.lease((0, 0, 0))[0][:3] == [0.0, 0.0, 0.0]


async def test_slots_given_back_do_not_rebook_slots_held_by_others(clock: FakeClock) -> None:
    state, _ = cluster(clock, 600)  # ten a second, no burst: the slots are 0.1 s apart
    first = state.lease((0, 0, 0))[0]  # worker a: 0, 0.1, 0.2
    held = state.lease((0, 0, 0))[0]  # worker b: 0.3, 0.4, 0.5
    assert held == pytest.approx([0.3, 0.4, 0.5])
    # Worker a gives its three back with its next lease: it gets slots after b's, not on
    # them (before: 0.3, 0.4, 0.5 again, two sends at once).
    later = state.lease((0, 0, 0), returned=len(first), schedule=(0, 0))[0]
    assert later == pytest.approx([0.6, 0.7, 0.8])


async def answered(lim: LeasedLimiter, clock: SteppedClock, sent: list[tuple[float, int]]) -> None:
    """One attempt through `lim`, answered; notes when it went and on which schedule."""
    async with lim.admit(REQ) as permit:
        sent.append((clock.now, permit.generation))
        permit.record(CompletionResponse("ok"))


async def refused(
    lim: LeasedLimiter, clock: SteppedClock, *, after: float = 0.0, held: float = 0.0
) -> None:
    """One attempt through `lim`, asked `after` seconds and refused `held` seconds later."""
    if after:
        await clock.sleep(after)
    with pytest.raises(RateLimitError):
        async with lim.admit(REQ):
            if held:
                await clock.sleep(held)
            raise RateLimitError("rate limited")


async def test_a_starved_worker_lets_a_slot_it_woke_late_for_pass() -> None:
    # A worker starved of CPU wakes for its slots long after they fell due; meanwhile another
    # worker's refusal cut the cluster's rate. Those slots belong to the discarded schedule:
    # sending on them is sending into the refusing server (traced: 12 attempts 170 ms after
    # a cut).
    clock = SteppedClock()
    state = _LimiterState(None, None, 0.25, clock=clock)
    actor = LocalActor(state)
    a = LeasedLimiter(actor, 0.25, clock=clock, sleep=clock.sleep)

    async def starved_sleep(seconds: float) -> None:
        # No CPU for this process until t=0.15: every timer set before fires then.
        await clock.sleep(max(seconds, 0.15 - clock.now) if clock.now < 0.15 else seconds)

    b = LeasedLimiter(actor, 0.25, clock=clock, sleep=starved_sleep)
    sent: list[tuple[float, int]] = []
    tasks = [asyncio.create_task(refused(a, clock, after=0.01))]
    tasks += [asyncio.create_task(answered(b, clock, sent)) for _ in range(6)]
    await clock.advance_to(30.0)
    await asyncio.gather(*tasks)
    assert state.limiter.generation == 1
    assert len(sent) == 6
    # Before: five of b's six went on the opening's slots at 0.15 s, long after the cut.
    late = [at for at, generation in sent if generation == 0 and at > 0.01]
    assert late == [], sent


class _LateReplies:
    """An actor handle whose lease replies are read `late` seconds after the actor booked
    them (the worker's process starved of CPU); the other calls go through at once."""

    def __init__(self, actor: LocalActor, clock: SteppedClock) -> None:
        self.actor = actor
        self.clock = clock
        self.late = 0.0
        self.lease = self  # `handle.lease.remote(...)`

    def remote(self, *args: Any) -> Any:
        booked = self.actor.state.lease(*args)  # the actor books the slots now
        late, clock = self.late, self.clock

        async def read() -> Any:
            await clock.sleep(late)
            return booked

        return read()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.actor, name)


async def test_a_lease_read_late_does_not_send_on_a_schedule_cut_since() -> None:
    # The actor books a lease's slots when it is asked; a starved worker reads the reply
    # later. Its slots were counted from the reading: a reply that waited out the cluster's
    # first cut held slots of the discarded schedule that looked fresh (traced: six sent
    # 30 ms after the cut, refused).
    clock = SteppedClock()
    state = _LimiterState(None, None, 0.25, clock=clock)
    actor = LocalActor(state)
    a = LeasedLimiter(actor, 0.25, clock=clock, sleep=clock.sleep)
    handle = _LateReplies(actor, clock)
    b = LeasedLimiter(handle, 0.25, clock=clock, sleep=clock.sleep)
    sent: list[tuple[float, int]] = []
    first = asyncio.create_task(answered(b, clock, sent))  # a quick round trip: b's quickest
    await clock.advance_to(0.1)
    assert first.done()
    handle.late = 0.05  # b's next lease, booked at 0.1, is read at 0.15
    tasks = [asyncio.create_task(refused(a, clock, held=0.01))]  # refused at 0.11, read at once
    tasks += [asyncio.create_task(answered(b, clock, sent)) for _ in range(3)]
    await clock.advance_to(30.0)
    await asyncio.gather(*tasks)
    assert state.limiter.generation == 1
    assert len(sent) == 4
    # Before: one went at 0.15 on a slot booked at 0.1, under the cut schedule.
    late = [at for at, generation in sent if generation == 0 and at > 0.11]
    assert late == [], sent


async def test_a_worker_whose_lease_replies_are_always_slow_still_sends() -> None:
    # Slots read later than the worker's quickest round trip are let pass, but a lease asked
    # for after such a one counts as read: replies always 50 ms slow (more than the opening's
    # 20 ms keep) must not let every slot pass for ever.
    clock = SteppedClock()
    state = _LimiterState(None, None, 0.25, clock=clock)
    handle = _LateReplies(LocalActor(state), clock)
    b = LeasedLimiter(handle, 0.25, clock=clock, sleep=clock.sleep)
    sent: list[tuple[float, int]] = []
    first = asyncio.create_task(answered(b, clock, sent))
    await clock.advance_to(0.1)
    assert first.done()
    handle.late = 0.05
    tasks = [asyncio.create_task(answered(b, clock, sent)) for _ in range(6)]
    await clock.advance_to(5.0)
    assert all(task.done() for task in tasks) and len(sent) == 7, sent


async def test_a_worker_woken_late_for_its_opening_slots_admits_them_spaced() -> None:
    # The opening's lease spreads its slots over OPENING_LEASE, but a process without CPU
    # wakes for all of them at once: they were admitted at one instant and written together
    # (traced: six of one worker at 0.941 s, refused 50 ms later). Woken late, the worker
    # admits them no closer together than the lease spaced them.
    clock = SteppedClock()
    state = _LimiterState(None, None, 0.25, clock=clock)
    stall = 0.015  # no CPU until then: every timer set before fires at once

    async def starved_sleep(seconds: float) -> None:
        await clock.sleep(max(seconds, stall - clock.now) if clock.now < stall else seconds)

    b = LeasedLimiter(LocalActor(state), 0.25, clock=clock, sleep=starved_sleep)
    sent: list[tuple[float, int]] = []
    tasks = [asyncio.create_task(answered(b, clock, sent)) for _ in range(WINDOW_START)]
    await clock.advance_to(5.0)
    await asyncio.gather(*tasks)
    times = sorted(at for at, _ in sent)
    assert len(times) == WINDOW_START
    # Before: the first at once, the other seven at 0.015 s together.
    gap = OPENING_LEASE / WINDOW_START
    assert min(later - earlier for earlier, later in itertools.pairwise(times)) >= gap * 0.99, times


async def test_a_lease_read_late_in_the_opening_still_goes_out_spread() -> None:
    # A reply read 15 ms late (within the opening's 20 ms keep) holds slots already due: they
    # were all admitted at the instant it was read (traced: six of one worker at 0.870 s,
    # written together 235 ms later, refused). They now go out spaced as leased.
    clock = SteppedClock()
    state = _LimiterState(None, None, 0.25, clock=clock)
    handle = _LateReplies(LocalActor(state), clock)
    b = LeasedLimiter(handle, 0.25, clock=clock, sleep=clock.sleep)
    sent: list[tuple[float, int]] = []
    first = asyncio.create_task(answered(b, clock, sent))  # a quick round trip: b's quickest
    await clock.advance_to(0.1)
    assert first.done()
    handle.late = 0.015
    tasks = [asyncio.create_task(answered(b, clock, sent)) for _ in range(WINDOW_START)]
    await clock.advance_to(5.0)
    await asyncio.gather(*tasks)
    times = sorted(at for at, _ in sent[1:])
    assert len(times) == WINDOW_START
    # Before: each lease's slots all at the instant its reply was read (0.13 s: seven).
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert min(gaps) > 0.001, times


async def test_a_window_not_filled_does_not_widen_for_a_worker_that_joins_late() -> None:
    # Ray starts workers seconds apart on a loaded machine. One worker with two callers
    # against a quick server heard ~80 answers in two seconds and each widened the window, to
    # 48 slots it never sent at; the worker that joined then found all that room and sent
    # its 32 callers at once into a bucket never tested at that width (traced with two CPU
    # burners: all 16 refusals of a run). A window widens only while half of it is in use.
    clock = SteppedClock()
    state = _LimiterState(None, None, 0.25, clock=clock)
    actor = LocalActor(state)
    early, late = (LeasedLimiter(actor, 0.25, clock=clock, sleep=clock.sleep) for _ in range(2))
    joined = 2.0
    late_sent: list[float] = []

    async def steady() -> None:
        while clock.now < joined + 1.0:
            async with early.admit(REQ) as permit:
                await clock.sleep(0.05)
                permit.record(CompletionResponse("ok"))

    async def joiner() -> None:
        await clock.sleep(joined)
        async with late.admit(REQ) as permit:
            late_sent.append(clock.now)
            await clock.sleep(0.05)
            permit.record(CompletionResponse("ok"))

    tasks = [asyncio.create_task(steady()) for _ in range(2)]
    tasks += [asyncio.create_task(joiner()) for _ in range(32)]
    await clock.advance_to(10.0)
    await asyncio.gather(*tasks)
    assert len(late_sent) == 32
    # Within its first lease: what the window holds less the early worker's two in the air
    # (before: all 32).
    at_once = sum(1 for at in late_sent if at < joined + OPENING_LEASE)
    assert at_once <= WINDOW_START - 2, sorted(late_sent)
    # The window then grows with the answers of a window in use, 1.5x a round: 6, 9, 13.
    assert max(late_sent) < joined + 4 * 0.05 + 0.1, sorted(late_sent)


async def test_slots_let_pass_never_age_as_answered() -> None:
    # A worker starved of CPU sends a slot or two of each lease and lets the rest pass. Slots
    # leased WINDOW_PRESUME ago count as answered (a slow server's opening grows so), but
    # those let pass were never in the air: counted, they made every attempt in the air look
    # answered, and the window look empty to a worker that then took all of it.
    clock = SteppedClock()
    state = _LimiterState(None, None, 0.25, clock=clock)
    first = state.lease((0, 0, 0), want=16)[0]
    while (more := state.lease((0, 0, 0), want=16)[0]) and len(first) < WINDOW_START:
        first += more
    assert len(first) == WINDOW_START
    assert state.lease((0, 0, 0), used=WINDOW_START)[0] == []  # all eight in the air
    clock.now += 1.0  # the opening's own pace is long over
    held = len(state.lease((0, 0, 0), succeeded=8, finished=8, want=16)[0])
    assert held == WINDOW_START + 8 * WINDOW_GROWTH  # answered with the window full: wider
    answered = 0
    for _ in range(50):  # a second: one sent of each lease, the rest let pass
        clock.now += 0.02
        report = {"succeeded": answered, "finished": answered}  # the one sent before
        held = len(state.lease((0, 0, 0), used=1, dropped=held - 1, want=16, **report)[0])
        answered = 1
    # The last lease all sent at once, fresh: only the rest of the window is free.
    clock.now += 0.001
    room = len(state.lease((0, 0, 0), used=held, succeeded=1, finished=1, want=64)[0])
    assert held + room == WINDOW_START + 8 * WINDOW_GROWTH, (held, room)


async def test_a_window_held_on_its_way_to_workers_counts_as_in_use() -> None:
    # A server quicker than a lease's round trip: most of the window is slots on their way
    # to a worker or held for their time, few attempts are in the air. Counted by attempts
    # in the air alone, the window never looked half used and stopped widening: 2,000
    # requests at 1 ms on four workers took twice as long (0.38 -> 0.76 s).
    clock = SteppedClock()
    state = _LimiterState(None, None, 0.25, clock=clock)
    actor = _LateReplies(LocalActor(state), clock)
    actor.late = 0.01  # a lease's round trip
    workers = [LeasedLimiter(actor, 0.25, clock=clock, sleep=clock.sleep) for _ in range(4)]
    todo = list(range(2000))
    last = 0.0

    async def call(lim: LeasedLimiter) -> None:
        nonlocal last
        while todo:
            todo.pop()
            async with lim.admit(REQ) as permit:
                await clock.sleep(0.001)
                permit.record(CompletionResponse("ok"))
            last = clock.now

    tasks = [asyncio.create_task(call(w)) for w in workers for _ in range(64)]
    await clock.advance_to(60.0)
    await asyncio.gather(*tasks)
    assert last < 0.45, last


async def test_slots_held_by_workers_that_let_them_pass_do_not_widen_the_window() -> None:
    # Two workers starved of CPU each send one slot of every lease and let the rest pass.
    # Slots leased and not yet reported count as in use in the share workers lately sent
    # (a quick server's window is mostly such slots); counted whole, each worker's held
    # lease made the window look used at the other's report, and it widened with every
    # answer to a width never sent at (here: 12 -> 22 wide).
    clock = SteppedClock()
    state = _LimiterState(None, None, 0.25, clock=clock)
    first = state.lease((0, 0, 0), want=16)[0]
    while (more := state.lease((0, 0, 0), want=16)[0]) and len(first) < WINDOW_START:
        first += more
    state.lease((0, 0, 0), used=WINDOW_START)
    clock.now += 1.0  # the opening's own pace is long over
    state.lease((0, 0, 0), succeeded=8, finished=8, want=0)  # the window in use: 12 wide
    state.give_back(1)  # (the one slot that lease took)
    width = WINDOW_START + 8 * WINDOW_GROWTH
    held = {"a": 0, "b": 0}
    answered = {"a": 0, "b": 0}
    for _ in range(50):
        for w in held:
            clock.now += 0.01
            sent = min(1, held[w])
            report = {"succeeded": answered[w], "finished": answered[w]}
            report.update(used=sent, dropped=held[w] - sent, want=8)
            held[w] = len(state.lease((0, 0, 0), **report)[0])
            answered[w] = sent
    # Everything resolved but b's last lease: a finds the rest of the window, no wider.
    for w in held:
        clock.now += 0.01
        report = {"succeeded": answered[w], "finished": answered[w], "dropped": held[w]}
        held[w] = len(state.lease((0, 0, 0), **report, want=8 if w == "b" else 64)[0])
    assert held["a"] + held["b"] == width, held
