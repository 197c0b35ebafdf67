"""`max_concurrency="auto"` against model servers in virtual time: the real gate, a server
model per style (a cloud API whose latency never grows with load, a queueing server with N
slots, a server that gets overloaded) and a driver that keeps the gate's window full, as a
batch does, advancing an injected clock from one answer to the next."""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from llmbatch import CompletionRequest, CompletionResponse, ConcurrencyLimiter, Usage
from llmbatch.errors import RequestTimeoutError

from .conftest import FakeClock

REQ = CompletionRequest(prompt="x" * 400, max_tokens=100)


class Cloud:
    """Latency that never grows with load: drawn per answer by `draw(rng, now)`, which
    returns (latency, output tokens)."""

    def __init__(self, draw: Callable[[random.Random, float], tuple[float, int]]) -> None:
        self.draw = draw
        self.waiting = 0

    def send(self, now: float, rng: random.Random) -> tuple[float, int]:
        return self.draw(rng, now)


class Queue:
    """`slots` requests served at a time, first come first served, each for `service`
    seconds +- `jitter` (a fraction); from `shrink_at` on, only `shrunk_to` slots are ours
    (other clients took the rest)."""

    def __init__(
        self,
        slots: int,
        service: float,
        jitter: float = 0.2,
        shrink_at: float = math.inf,
        shrunk_to: int = 0,
    ) -> None:
        self.free = [0.0] * slots
        self.service, self.jitter = service, jitter
        self.shrink_at, self.shrunk_to = shrink_at, shrunk_to
        self.starts: list[float] = []  # when each queued request will start, for the depth
        self.max_waiting_after: dict[float, int] = {}

    def send(self, now: float, rng: random.Random) -> tuple[float, int]:
        if now >= self.shrink_at and len(self.free) > self.shrunk_to:
            self.free = sorted(self.free)[-self.shrunk_to :]  # the slots busiest the longest
        free = heapq.heappop(self.free)
        start = max(now, free)
        end = start + self.service * rng.uniform(1 - self.jitter, 1 + self.jitter)
        heapq.heappush(self.free, end)
        self.starts = [s for s in self.starts if s > now] + [start]
        return end - now, 16

    def waiting(self, now: float) -> int:
        return sum(s > now for s in self.starts)


@dataclass
class Trace:
    done: int = 0
    timeouts: int = 0
    limits: list[tuple[float, int]] = field(default_factory=list)  # (time, limit) per answer
    queue: list[tuple[float, int]] = field(default_factory=list)  # (time, server queue)

    def limit_at(self, t: float) -> int:
        return [limit for when, limit in self.limits if when <= t][-1]

    def max_limit_after(self, t: float) -> int:
        return max(limit for when, limit in self.limits if when >= t)

    def max_queue_after(self, t: float) -> int:
        return max(depth for when, depth in self.queue if when >= t)


async def drive(
    server: Cloud | Queue,
    clock: FakeClock,
    seconds: float,
    *,
    gate: ConcurrencyLimiter | None = None,
    fixed: int = 0,
    timeout: float = math.inf,
    seed: int = 1,
) -> Trace:
    """Keep `gate.limit` (or `fixed`) requests at `server` for `seconds` of virtual time."""
    rng = random.Random(seed)
    start = clock.now
    end = start + seconds
    out: list[tuple[float, int, Any, int, bool]] = []
    trace, seq = Trace(), 0
    while True:
        while len(out) < (gate.limit if gate is not None else fixed):
            slot = gate.admit(REQ) if gate is not None else None
            if slot is not None:
                await slot.__aenter__()
            latency, tokens = server.send(clock.now, rng)
            timed_out = latency > timeout
            heapq.heappush(out, (clock.now + min(latency, timeout), seq, slot, tokens, timed_out))
            seq += 1
        finish, _, slot, tokens, timed_out = heapq.heappop(out)
        if finish > end:
            return trace
        clock.now = finish
        if timed_out:
            trace.timeouts += 1
        else:
            trace.done += 1
        if slot is not None:
            if timed_out:
                await slot.__aexit__(RequestTimeoutError, RequestTimeoutError("t"), None)
            else:
                slot.record(CompletionResponse("ok", usage=Usage(completion_tokens=tokens)))
                await slot.__aexit__(None, None, None)
        trace.limits.append((finish - start, gate.limit if gate is not None else fixed))
        if isinstance(server, Queue):
            trace.queue.append((finish - start, server.waiting(clock.now)))


def jitter(rng: random.Random, now: float) -> tuple[float, int]:
    """The simulator's cloud-like style: 100-700 ms whatever the answer (`--latency-ms 400
    --latency-jitter-ms 300`)."""
    return rng.uniform(0.1, 0.7), 16


async def test_a_cloud_api_with_jittery_latency_is_driven_to_the_maximum(
    clock: FakeClock,
) -> None:
    gate = ConcurrencyLimiter(clock=clock)
    auto = await drive(Cloud(jitter), clock, 120, gate=gate)
    best = await drive(Cloud(jitter), clock, 120, fixed=gate.max_limit)
    assert auto.done >= 0.9 * best.done, (auto.done, best.done)
    assert auto.limit_at(120) == gate.max_limit


async def test_answers_growing_longer_through_a_run_do_not_read_as_queueing(
    clock: FakeClock,
) -> None:
    # A cloud API: time to first token + 15 ms per token, answers from 10 tokens at the
    # start of the run to 800 at its end (sorted input): the latency grows 8-fold, no queue.
    def by_length(rng: random.Random, now: float) -> tuple[float, int]:
        tokens = int(10 + 790 * min(1.0, (now - 1000) / 300) * rng.uniform(0.8, 1.0))
        return rng.uniform(0.2, 0.5) + 0.015 * tokens, tokens

    gate = ConcurrencyLimiter(clock=clock)
    auto = await drive(Cloud(by_length), clock, 300, gate=gate)
    assert min(limit for t, limit in auto.limits if t >= 60) >= 0.9 * gate.max_limit


async def test_a_queueing_server_is_kept_busy_without_a_long_queue(clock: FakeClock) -> None:
    # 2 slots of 200 ms (the simulator's `queue` style as the benchmark runs it): the best
    # fixed concurrency serves 10 a second; more in flight only lengthens the queue.
    gate = ConcurrencyLimiter(clock=clock)
    auto = await drive(Queue(2, 0.2), clock, 120, gate=gate)
    best = await drive(Queue(2, 0.2), clock, 120, fixed=8)
    assert auto.done >= 0.9 * best.done, (auto.done, best.done)
    # Past the slow start: every slot busy, at most one turn of them waiting.
    assert auto.max_queue_after(10) <= 2
    assert auto.max_limit_after(10) <= 2 * 2 + 1


async def test_a_large_queueing_server_is_filled_and_not_flooded(clock: FakeClock) -> None:
    # vLLM-like: 32 sequences at a time, 2 s each.
    gate = ConcurrencyLimiter(clock=clock)
    auto = await drive(Queue(32, 2.0), clock, 300, gate=gate)
    best = await drive(Queue(32, 2.0), clock, 300, fixed=32)
    assert auto.done >= 0.9 * best.done, (auto.done, best.done)
    assert auto.max_queue_after(60) <= 32  # at most about one more turn of the slots


async def test_a_server_overloaded_by_other_clients_is_given_less(clock: FakeClock) -> None:
    # 16 slots are ours until t=60 s, then other clients hold 12 of them: latency doubles
    # and more for the same window, and the gate must shrink to what is left.
    gate = ConcurrencyLimiter(clock=clock)
    trace = await drive(Queue(16, 0.5, shrink_at=1060, shrunk_to=4), clock, 180, gate=gate)
    assert trace.limit_at(59) >= 16
    assert trace.max_limit_after(90) <= 2 * 4 + 1
    assert trace.max_queue_after(90) <= 4


async def test_a_server_that_stops_answering_in_time_is_cut_to_the_floor(
    clock: FakeClock,
) -> None:
    # Every answer takes 30 s from t=20 s on (a stuck model); our request timeout is 5 s.
    def stuck(rng: random.Random, now: float) -> tuple[float, int]:
        return (rng.uniform(0.1, 0.7) if now < 1020 else 30.0), 16

    gate = ConcurrencyLimiter(clock=clock)
    trace = await drive(Cloud(stuck), clock, 120, gate=gate, timeout=5.0)
    assert trace.limit_at(19) >= 32 and trace.timeouts > 0
    assert trace.limit_at(120) <= 2


async def test_a_window_held_half_empty_by_the_rate_limiter_is_brought_back_to_its_use(
    clock: FakeClock,
) -> None:
    # An opening burst grew the window to 200, then the rate limiter lets only 40 through
    # at a time: the rest of the window would only queue requests on our side.
    gate = ConcurrencyLimiter(initial=200, clock=clock)
    for _ in range(20):
        slots = [gate.admit(REQ) for _ in range(40)]
        for s in slots:
            await s.__aenter__()
        clock.advance(0.4)
        for s in slots:
            s.record(CompletionResponse("ok", usage=Usage(completion_tokens=16)))
            await s.__aexit__(None, None, None)
    assert 40 <= gate.limit <= 1.5 * 40
