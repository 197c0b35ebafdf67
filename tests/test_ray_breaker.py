"""The Ray cluster's one outage breaker, in virtual time (no Ray cluster).

The breaker actor's state runs in this process behind `helpers.LocalActor`; the workers'
`SharedBreaker`s sleep on the test's `SteppedClock`, which is also the actor's clock, so a
20-second outage takes no time and every probe is counted exactly.
"""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("ray")

import itertools

from llmbatch import CompletionRequest, CompletionResponse
from llmbatch.breaker import OutageBreaker
from llmbatch.errors import APIConnectionError, ProviderOutageError
from llmbatch.ray.breaker import POLL_SECONDS, PROBE_TIMEOUT, SharedBreaker, _BreakerState

from .helpers import LocalActor, SteppedClock

DOWN_FROM, UP_AT = 1.0, 21.0  # the server refuses connections in between
ROUND_TRIP = 0.01  # a refused connection's (and an answer's) time


class _Server:
    """Refuses connections from DOWN_FROM to UP_AT; counts what reached it while down."""

    def __init__(self, clock: SteppedClock, up_at: float = UP_AT) -> None:
        self.clock = clock
        self.up_at = up_at
        self.sent_while_down: list[float] = []

    async def call(self, breaker: SharedBreaker | OutageBreaker) -> None:
        """One request, tried until answered (an outage's failures are excused: no backoff)."""
        request = CompletionRequest(prompt="q")
        while True:
            try:
                async with breaker.admit(request) as permit:
                    now = self.clock.now
                    await self.clock.sleep(ROUND_TRIP)
                    if DOWN_FROM <= now < self.up_at:
                        self.sent_while_down.append(now)
                        raise APIConnectionError("connection refused")
                    permit.record(CompletionResponse("ok"))
                return
            except APIConnectionError:
                continue


async def _run(
    clock: SteppedClock, breakers: list[SharedBreaker] | list[OutageBreaker], server: _Server
) -> float:
    """Four workers of 8, each calling one request after another until t=40; returns when
    the last call after the outage was answered."""
    answered: list[float] = []

    async def loop(breaker: SharedBreaker | OutageBreaker) -> None:
        while clock.now < 40.0:
            try:
                await server.call(breaker)
            except ProviderOutageError:
                return
            answered.append(clock.now)
            await clock.sleep(0.1)

    tasks = [asyncio.create_task(loop(b)) for b in breakers for _ in range(8)]
    await clock.advance_to(60.0)
    await asyncio.gather(*tasks)
    return min(t for t in answered if t >= server.up_at)


def _cluster(clock: SteppedClock, max_outage: float = 300.0) -> tuple[_BreakerState, LocalActor]:
    state = _BreakerState(max_outage, clock=clock)
    return state, LocalActor(state)


async def test_the_cluster_sends_one_probe_per_interval_and_reports_one_outage() -> None:
    clock = SteppedClock()
    state, actor = _cluster(clock)
    server = _Server(clock)
    workers = [SharedBreaker(actor, sleep=clock.sleep) for _ in range(4)]
    back = await _run(clock, workers, server)
    # Tripping takes a few failures of the 32 callers; after that, probes 0.5 s, 1 s, then
    # every 2 s for the cluster: about ten in 20 s. A breaker per worker sent four times as
    # many (see the next test).
    opened = min(server.sent_while_down) + 0.5
    probes = [t for t in server.sent_while_down if t > opened]
    assert len(probes) <= 20 / 2 + 2, probes
    assert all(b - a >= 0.5 - 1e-9 for a, b in itertools.pairwise(probes)), probes
    # The probe that got through closed the breaker; every worker followed within a poll.
    assert back <= UP_AT + 2.0 + POLL_SECONDS + 0.1
    outages = state.outages()
    assert len(outages) == 1 and outages[0].recovered
    assert 19.0 <= outages[0].duration <= 22.5
    assert all(w.outages == [] for w in workers)  # the driver reports the cluster's, once


async def test_a_breaker_per_worker_probes_once_per_worker() -> None:
    # What the shared breaker replaces, measured the same way: four probes per interval.
    clock = SteppedClock()
    server = _Server(clock)
    workers = [OutageBreaker(clock=clock, sleep=clock.sleep) for _ in range(4)]
    await _run(clock, workers, server)
    opened = min(server.sent_while_down) + 0.5
    probes = [t for t in server.sent_while_down if t > opened]
    assert len(probes) >= 4 * 9


async def test_the_cluster_gives_up_for_every_worker_after_max_outage() -> None:
    clock = SteppedClock()
    state, actor = _cluster(clock, max_outage=5.0)
    server = _Server(clock, up_at=1000.0)
    workers = [SharedBreaker(actor, sleep=clock.sleep) for _ in range(2)]
    failed: list[ProviderOutageError] = []

    async def call(worker: SharedBreaker) -> None:
        try:
            await server.call(worker)
        except ProviderOutageError as exc:
            failed.append(exc)

    await clock.advance_to(DOWN_FROM)
    tasks = [asyncio.create_task(call(w)) for w in workers for _ in range(4)]
    await clock.advance_to(30.0)
    await asyncio.gather(*tasks)
    assert len(failed) == 8  # every caller of every worker
    assert "max_outage=5s" in str(failed[0])
    assert all(w.gave_up is not None for w in workers)
    outages = state.outages()
    assert len(outages) == 1 and not outages[0].recovered


async def test_a_probe_whose_worker_died_is_taken_as_lost() -> None:
    # A worker dies while its caller holds the cluster's probe: its report never comes. The
    # actor used to keep the probe out for good, so the cluster sent nothing until max_outage
    # and gave up. After PROBE_TIMEOUT another caller probes.
    clock = SteppedClock()
    state, _ = _cluster(clock)
    for key in range(6):
        state.report(key, None, APIConnectionError("connection refused"))
    assert state.state() == (True, None)  # open
    clock.now = 1.0
    wait, lost, _ = state.admit(100)  # the probe; then the worker sending it dies
    assert wait is None and lost is not None
    probe = None
    while clock.now < 400.0:  # the other workers ask once a poll
        clock.now += POLL_SECONDS
        wait, probe, gave_up = state.admit(200)
        assert gave_up is None, clock.now  # before: given up at max_outage, 300 s
        if wait is None:
            break
    assert probe is not None and probe - lost <= PROBE_TIMEOUT + POLL_SECONDS
    # Had the lost probe's report come after all, it would not free the new probe's turn.
    state.report(100, lost, APIConnectionError("connection refused"))
    assert state.admit(300)[0] is not None  # waits: one probe is out
    state.report(200, probe, None)  # the new probe answered: the server is back
    assert state.state() == (False, None)
    outages = state.outages()
    assert len(outages) == 1 and outages[0].recovered
