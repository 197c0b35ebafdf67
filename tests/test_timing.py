"""Where a request's time goes: admission wait, provider time, backoff, per attempt."""

from __future__ import annotations

import pickle
import random
from pathlib import Path

import orjson
import pytest

from llmbatch import (
    APIConnectionError,
    BatchResult,
    RateLimiter,
    RateLimitError,
    RetryPolicy,
    ServerError,
)
from llmbatch.clients import FakeClient
from llmbatch.engine import Engine, EngineConfig
from llmbatch.events import AttemptFinished, AttemptQueued, Event
from llmbatch.io.journal import Journal, journal_stats, result_line
from llmbatch.stats import calculate_batch_stats
from llmbatch.types import BatchRequest, CompletionRequest, CompletionResponse, Timing

from .conftest import FakeClock


def reqs(n: int) -> list[BatchRequest]:
    return [BatchRequest(f"r{i}", CompletionRequest(prompt=f"p{i}")) for i in range(n)]


async def test_each_attempt_logs_its_wait_provider_time_and_outcome(clock: FakeClock) -> None:
    client = FakeClient(
        latency=2.0,
        sleep=clock.sleep,
        failures={"p0": [ServerError("boom"), RateLimitError(retry_after=7.5)]},
    )
    policy = RetryPolicy(max_attempts=5, base_delay=1.0, rng=random.Random(3))
    events: list[Event] = []
    engine = Engine(
        client,
        EngineConfig(retry=policy, clock=clock, sleep=clock.sleep, listeners=[events.append]),
    )
    [result] = [r async for r in engine.stream(reqs(1))]
    assert result.ok and result.attempts == 3
    timing = result.timing
    assert timing is not None
    backoff = clock.sleeps[1]  # after the 500; [0] is the first call's latency
    # The 429's Retry-After paused the limiter: the third attempt waited 7.5 s for admission.
    assert timing.attempts == ((0.0, 2.0, 500), (0.0, 2.0, 429), (7.5, 2.0, 200))
    assert timing.provider == pytest.approx(6.0)
    assert timing.wait == pytest.approx(7.5)
    assert timing.backoff == pytest.approx(backoff)
    assert result.duration == pytest.approx(6.0 + 7.5 + backoff)
    assert timing.finished_at - timing.started_at == pytest.approx(result.duration)
    finished = [e for e in events if isinstance(e, AttemptFinished)]
    assert [(e.attempt, e.outcome, e.provider) for e in finished] == [
        (1, 500, 2.0),
        (2, 429, 2.0),
        (3, 200, 2.0),
    ]
    assert finished[-1].wait == pytest.approx(7.5)
    assert [e.attempt for e in events if isinstance(e, AttemptQueued)] == [1, 2, 3]


async def test_pacing_shows_as_admission_wait_not_provider_time(clock: FakeClock) -> None:
    # 60 requests per minute, no burst, one at a time: each call takes 0.5 s, so each next
    # request waits the other half of its one-second slot.
    limiter = RateLimiter(60, burst_seconds=0, safety_margin=0, clock=clock, sleep=clock.sleep)
    client = FakeClient(latency=0.5, sleep=clock.sleep)
    engine = Engine(
        client,
        EngineConfig(max_concurrency=1, limiter=limiter, clock=clock, sleep=clock.sleep),
    )
    results = sorted([r async for r in engine.stream(reqs(5))], key=lambda r: r.index)
    waits = [r.timing.wait for r in results if r.timing]
    assert waits == pytest.approx([0.0, 0.5, 0.5, 0.5, 0.5])
    for r in results:
        assert r.timing is not None
        assert r.timing.provider == pytest.approx(0.5)
        assert r.timing.wait + r.timing.provider + r.timing.backoff <= r.duration + 1e-9


async def test_timing_is_consistent_against_real_time() -> None:
    # Real clock: no values asserted, only that the parts add up to at most the whole.
    client = FakeClient(latency=0.002, failures={"p1": [APIConnectionError("reset")]})
    policy = RetryPolicy(base_delay=0.001, max_delay=0.005)
    engine = Engine(client, EngineConfig(max_concurrency=3, retry=policy))
    results = [r async for r in engine.stream(reqs(8))]
    for r in results:
        t = r.timing
        assert t is not None and r.ok
        assert len(t.attempts) == r.attempts
        assert min(t.wait, t.provider, t.backoff) >= 0
        assert t.wait + t.provider + t.backoff <= r.duration + 1e-3
        assert t.started_at <= t.finished_at
        assert sum(a[0] for a in t.attempts) == pytest.approx(t.wait, abs=1e-5)
        assert sum(a[1] for a in t.attempts) == pytest.approx(t.provider, abs=1e-5)
    flaky = next(r for r in results if r.id == "r1")
    assert flaky.timing is not None and flaky.timing.attempts[0][2] == "connection"


async def test_a_cache_hit_logs_no_attempt(clock: FakeClock) -> None:
    class Cache:
        def get(self, request: CompletionRequest) -> CompletionResponse | None:
            return CompletionResponse("cached", cached=True) if request.prompt == "p0" else None

        def put(self, request: CompletionRequest, response: CompletionResponse) -> None:
            pass

    events: list[Event] = []
    engine = Engine(
        FakeClient(),
        EngineConfig(clock=clock, sleep=clock.sleep, cache=Cache(), listeners=[events.append]),
    )
    results = sorted([r async for r in engine.stream(reqs(2))], key=lambda r: r.index)
    hit, miss = (r.timing for r in results)
    assert hit is not None and hit.attempts == () and hit.provider == 0.0
    assert miss is not None and len(miss.attempts) == 1
    assert [e.request.id for e in events if isinstance(e, AttemptFinished)] == ["r1"]


def test_timing_is_written_in_the_output_line_and_read_back_by_stats(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    results = [
        BatchResult(
            f"r{i}",
            error=None if i else ServerError("x"),
            duration=10.0 + i,
            attempts=2,
            timing=Timing(
                started_at=1_700_000_000.0 + i,
                finished_at=1_700_000_010.0 + 2 * i,
                wait=float(i),
                provider=0.1 * (i + 1),
                backoff=0.25,
                attempts=((0.0, 0.05, 429), (float(i), 0.1 * (i + 1) - 0.05, 200)),
            ),
        )
        for i in range(100)
    ]
    with Journal(out) as journal:
        for r in results:
            journal.write(r)
    meta = orjson.loads(out.read_bytes().splitlines()[7])["llmbatch"]
    assert meta["started_at"] == 1_700_000_007.0 and meta["finished_at"] == 1_700_000_024.0
    assert (meta["wait"], meta["provider"], meta["backoff"]) == (7.0, 0.8, 0.25)
    assert meta["attempt_log"] == [[0.0, 0.05, 429], [7.0, 0.75, 200]]
    # No timing, no keys: lines stay as they were for results made elsewhere.
    assert "wait" not in orjson.loads(result_line(BatchResult("x")))["llmbatch"]

    from_file = journal_stats(out)
    live = calculate_batch_stats(results)
    for stats in (from_file, live):
        assert stats.timed_requests == 100
        assert (stats.p50_wait, stats.p95_wait, stats.p99_wait) == (49.0, 94.0, 98.0)
        assert stats.p50_provider == pytest.approx(5.0)
        assert stats.p99_provider == pytest.approx(9.9)
    d = from_file.to_dict()
    assert d["p95_wait_ms"] == 94000.0 and d["p50_provider_ms"] == pytest.approx(5000.0)


def test_timing_travels_with_a_result_through_pickle() -> None:
    # Ray workers send BatchResults back to the driver by pickle.
    result = BatchResult(
        "a",
        duration=1.0,
        attempts=1,
        index=4,
        timing=Timing(1.0, 2.0, 0.1, 0.8, 0.0, ((0.1, 0.8, 200),)),
    )
    assert pickle.loads(pickle.dumps(result)) == result


def test_ray_keeps_timing_on_results_it_makes_portable() -> None:
    pytest.importorskip("ray")
    from llmbatch.ray.run import _portable

    class Odd(Exception):
        def __reduce__(self):  # type: ignore[no-untyped-def]
            raise TypeError("cannot pickle")

    timing = Timing(1.0, 2.0, 0.1, 0.8, 0.0, ((0.1, 0.8, "unknown"),))
    result = BatchResult("a", error=Odd("x"), duration=1.0, attempts=1, index=3, timing=timing)
    portable = _portable(result)
    assert portable.timing == timing and portable.index == 3
    assert pickle.loads(pickle.dumps(portable)).timing == timing
