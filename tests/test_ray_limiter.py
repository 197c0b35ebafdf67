"""The cluster limiter's leases and the cluster budget, in virtual time (no Ray cluster).

The actor's state runs in this process behind a stand-in for Ray's actor handle
(`helpers.LocalActor`: `actor.method.remote(...)` calls the state and returns an awaitable,
as an `ObjectRef` is);
the workers' `LeasedLimiter` and `ClusterBudget` take the test clock's `sleep`, so nothing
really waits and every time below is exact.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

pytest.importorskip("ray")

from llmbatch import CompletionRequest, CompletionResponse, RateLimitError, Usage
from llmbatch.budget import BudgetExceededError
from llmbatch.pricing import FixedPrices, Pricer
from llmbatch.ray.budget import RETRY_SECONDS, ClusterBudget
from llmbatch.ray.limiter import OPENING_LEASE, LeasedLimiter, _LimiterState

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
