"""The engine: ordering, bounds, retries, timeouts, deadline, cancellation."""

from __future__ import annotations

import asyncio
import contextlib
import random

import looptime
import pytest

from llmbatch import (
    AuthenticationError,
    BadRequestError,
    BatchCancelledError,
    BatchProcessor,
    BatchProcessorConfig,
    BatchRequest,
    BatchResult,
    BatchTimeoutError,
    CompletionRequest,
    Engine,
    EngineConfig,
    InvalidResponseError,
    RateLimitError,
    RequestFinished,
    RequestRetrying,
    RequestTimeoutError,
    RetryPolicy,
    ServerError,
)
from llmbatch.clients import FakeClient

from .conftest import FakeClock


def reqs(n: int, fmt: str = "text") -> list[BatchRequest]:
    return [
        BatchRequest(f"r{i}", CompletionRequest(prompt=f"p{i}", response_format=fmt))  # type: ignore[arg-type]
        for i in range(n)
    ]


def test_process_batch_returns_results_in_input_order_stream_in_completion_order() -> None:
    # r0 is slowest, so it finishes last; process_batch must still put it first.
    client = FakeClient(latency=lambda r: 0.05 if r.prompt == "p0" else 0.0)
    processor = BatchProcessor(client, BatchProcessorConfig(max_concurrency=4))
    results = processor.process_batch(reqs(8))
    assert [r.id for r in results] == [f"r{i}" for i in range(8)]
    assert all(r.ok and r.attempts == 1 for r in results)

    async def streamed() -> list[str]:
        return [r.id async for r in processor.stream(reqs(8))]

    order = asyncio.run(streamed())
    assert sorted(order) == sorted(f"r{i}" for i in range(8))
    assert order[-1] == "r0"


async def test_concurrency_limit_is_respected() -> None:
    client = FakeClient(latency=0.01)
    processor = BatchProcessor(client, BatchProcessorConfig(max_concurrency=7))
    results = await processor.aprocess_batch(reqs(60))
    assert len(results) == 60
    assert client.max_in_flight == 7


async def test_default_concurrency_is_ten_as_in_the_seed() -> None:
    client = FakeClient(latency=0.01)
    await BatchProcessor(client).aprocess_batch(reqs(30))
    assert client.max_in_flight == 10


async def test_a_million_request_generator_is_pulled_lazily() -> None:
    pulled = 0

    def source():  # type: ignore[no-untyped-def]
        nonlocal pulled
        for i in range(1_000_000):
            pulled += 1
            yield BatchRequest(str(i), CompletionRequest(prompt="x"))

    engine = Engine(FakeClient(), EngineConfig(max_concurrency=8, max_pending=16))
    seen = 0
    async with contextlib.aclosing(engine.stream(source())) as results:
        async for _ in results:
            seen += 1
            if seen == 500:
                break
    # Bounded by what was consumed plus the pending window, not by the source's size.
    assert pulled <= 500 + 16 + 8


async def test_async_iterator_source() -> None:
    async def source():  # type: ignore[no-untyped-def]
        for r in reqs(25):
            await asyncio.sleep(0)
            yield r

    engine = Engine(FakeClient(latency=0.001), EngineConfig(max_concurrency=5))
    ids = [r.id async for r in engine.stream(source())]
    assert sorted(ids) == sorted(r.id for r in reqs(25))


async def test_retryable_errors_are_retried_with_full_jitter_backoff(clock: FakeClock) -> None:
    client = FakeClient(failures={"p0": [ServerError("a"), ServerError("b")]})
    policy = RetryPolicy(max_attempts=5, base_delay=1.0, max_delay=10.0, rng=random.Random(1))
    events: list[object] = []
    engine = Engine(
        client,
        EngineConfig(retry=policy, clock=clock, sleep=clock.sleep, listeners=[events.append]),
    )
    [result] = [r async for r in engine.stream(reqs(1))]
    assert result.ok and result.attempts == 3
    # Delay after failure k is drawn from [0, base * 2**(k-1)].
    assert len(clock.sleeps) == 2
    assert 0 <= clock.sleeps[0] <= 1.0 and 0 <= clock.sleeps[1] <= 2.0
    retries = [e for e in events if isinstance(e, RequestRetrying)]
    assert [e.attempt for e in retries] == [1, 2]
    assert result.duration == pytest.approx(sum(clock.sleeps))


async def test_retry_after_overrides_backoff_and_is_capped(clock: FakeClock) -> None:
    client = FakeClient(
        failures={"p0": [RateLimitError(retry_after=7.5), RateLimitError(retry_after=999)]}
    )
    policy = RetryPolicy(base_delay=0.01, max_retry_after=60.0)
    cfg = EngineConfig(retry=policy, adaptive=False, clock=clock, sleep=clock.sleep)
    [result] = [r async for r in Engine(client, cfg).stream(reqs(1))]
    assert result.ok
    assert clock.sleeps == [7.5, 60.0]  # no limiter: the retry policy waits, capped


async def test_a_retry_after_the_limiter_waits_out_is_not_slept_twice(clock: FakeClock) -> None:
    client = FakeClient(
        failures={"p0": [RateLimitError(retry_after=7.5), RateLimitError(retry_after=999)]}
    )
    policy = RetryPolicy(base_delay=0.01)
    engine = Engine(client, EngineConfig(retry=policy, clock=clock, sleep=clock.sleep))
    [result] = [r async for r in engine.stream(reqs(1))]
    assert result.ok and result.attempts == 3
    # The default limiter pauses every admission (capped at its max_pause of 120 s); the
    # retry then waits for admission, and nothing sleeps the same Retry-After again.
    assert clock.sleeps == [7.5, 120.0]


async def test_attempts_and_total_retry_time_are_bounded(clock: FakeClock) -> None:
    always = FakeClient(lambda r: ServerError("down"))
    engine = Engine(
        always, EngineConfig(retry=RetryPolicy(max_attempts=4), clock=clock, sleep=clock.sleep)
    )
    [result] = [r async for r in engine.stream(reqs(1))]
    assert isinstance(result.error, ServerError) and result.attempts == 4

    slow = RetryPolicy(max_attempts=100, base_delay=10, max_delay=10, max_retry_time=25)
    engine = Engine(always, EngineConfig(retry=slow, clock=clock, sleep=clock.sleep))
    [result] = [r async for r in engine.stream(reqs(1))]
    assert isinstance(result.error, ServerError)
    assert sum(clock.sleeps[-(result.attempts - 1) :]) <= 25


async def test_fatal_errors_are_not_retried(clock: FakeClock) -> None:
    client = FakeClient(lambda r: BadRequestError("bad", status_code=400))
    engine = Engine(client, EngineConfig(clock=clock, sleep=clock.sleep))
    [result] = [r async for r in engine.stream(reqs(1))]
    assert isinstance(result.error, BadRequestError)
    assert result.attempts == 1 and len(client.calls) == 1


async def test_json_mode_retries_an_unparsable_reply_once(clock: FakeClock) -> None:
    replies = iter(["not json", '{"ok": true}'])
    client = FakeClient(lambda r: next(replies))
    engine = Engine(client, EngineConfig(clock=clock, sleep=clock.sleep))
    [result] = [r async for r in engine.stream(reqs(1, "json"))]
    assert result.ok and result.attempts == 2

    client = FakeClient("never json {")
    engine = Engine(client, EngineConfig(clock=clock, sleep=clock.sleep))
    [result] = [r async for r in engine.stream(reqs(1, "json"))]
    assert isinstance(result.error, InvalidResponseError)
    assert result.attempts == 2  # the first try and one retry, as the seed's client does


async def test_per_attempt_timeout_is_a_retryable_timeout_error() -> None:
    client = FakeClient(latency=5.0)
    cfg = EngineConfig(request_timeout=0.05, retry=RetryPolicy(max_attempts=2, base_delay=0))
    [result] = [r async for r in Engine(client, cfg).stream(reqs(1))]
    assert isinstance(result.error, RequestTimeoutError)
    assert isinstance(result.error, TimeoutError)
    assert result.attempts == 2


def _one_worker_in_virtual_time(latencies: list[float], timeout: float) -> list[BatchResult]:
    """Requests of the given latencies through one worker, on looptime's virtual clock."""
    loop = looptime.new_event_loop(start=0, end=1_000)

    async def main() -> list[BatchResult]:
        by_prompt = {f"p{i}": latency for i, latency in enumerate(latencies)}
        client = FakeClient(latency=lambda r: by_prompt[r.prompt])
        cfg = EngineConfig(
            max_concurrency=1,
            request_timeout=timeout,
            retry=RetryPolicy(max_attempts=1),
            clock=loop.time,
        )
        return [r async for r in Engine(client, cfg).stream(reqs(len(latencies)))]

    try:
        return loop.run_until_complete(main())
    finally:
        loop.close()


def test_an_attempt_times_out_a_full_timeout_after_its_own_start() -> None:
    # One worker: r0 answers at 4 s, r1 never does. r1 is timed out at 14 s, a full 10 s
    # after it started, not at 10 s, when a timer started with r0 would have fired.
    r0, r1 = _one_worker_in_virtual_time([4.0, 100.0], timeout=10.0)
    assert r0.ok
    assert isinstance(r1.error, RequestTimeoutError)
    assert r1.timing is not None and r1.timing.attempts[0][1] == pytest.approx(10.0)


def test_attempts_that_answer_in_time_are_never_timed_out() -> None:
    # Five 3 s answers in a row through one worker with a 10 s timeout: the fourth is running
    # when 10 s have passed since the first began, and must not be cut.
    results = _one_worker_in_virtual_time([3.0] * 5, timeout=10.0)
    assert all(r.ok for r in results), [r.error for r in results]


async def test_batch_deadline_gives_every_request_a_timeout_result() -> None:
    client = FakeClient(latency=lambda r: 0.0 if r.prompt in ("p0", "p1") else 30.0)
    processor = BatchProcessor(client, BatchProcessorConfig(max_concurrency=5))
    results = await processor.aprocess_batch(reqs(20), timeout=0.3)
    assert [r.id for r in results] == [f"r{i}" for i in range(20)]
    assert results[0].ok and results[1].ok
    timed_out = results[2:]
    assert all(isinstance(r.error, BatchTimeoutError) for r in timed_out)
    assert all(isinstance(r.error, TimeoutError) for r in timed_out)
    # In flight when the deadline hit: one attempt; never started: none, and never called.
    assert sum(r.attempts == 1 for r in timed_out) == 5
    assert len(client.calls) == 7


async def test_cancelling_the_caller_gives_in_flight_requests_a_cancellation_result() -> None:
    finished: list[RequestFinished] = []
    client = FakeClient(latency=lambda r: 0.0 if r.prompt == "p0" else 30.0)
    processor = BatchProcessor(client, BatchProcessorConfig(max_concurrency=3))
    task = asyncio.create_task(
        processor.aprocess_batch(
            reqs(10),
            listeners=[lambda e: finished.append(e) if isinstance(e, RequestFinished) else None],
        )
    )
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sorted(e.result.id for e in finished) == sorted(r.id for r in reqs(10))
    errors = {e.result.id: e.result.error for e in finished}
    assert errors["r0"] is None
    assert all(isinstance(errors[f"r{i}"], BatchCancelledError) for i in range(1, 10))


async def test_repeated_auth_failures_stop_the_batch_early() -> None:
    client = FakeClient(lambda r: AuthenticationError("bad key", status_code=401))
    cfg = BatchProcessorConfig(max_concurrency=2)
    results = await BatchProcessor(client, cfg).aprocess_batch(reqs(200))
    assert len(results) == 200
    assert all(isinstance(r.error, AuthenticationError) for r in results)
    assert len(client.calls) <= 5 + 2  # a handful, then no more calls
    assert "not sent" in str(results[-1].error)


async def test_a_request_stopped_by_the_auth_abort_between_retries_keeps_its_duration(
    clock: FakeClock,
) -> None:
    """r0 fails, backs off; meanwhile r1's 401 stops the batch: r0 ends "not sent" after its
    one call, its duration the time it really took (its backoff), as every failed result."""
    client = FakeClient(
        failures={
            "p0": [ServerError("busy")],
            "p1": [AuthenticationError("bad key", status_code=401)],
        }
    )
    policy = RetryPolicy(max_attempts=5, base_delay=4.0, max_delay=4.0, rng=random.Random(1))
    engine = Engine(
        client,
        EngineConfig(
            max_concurrency=2, max_auth_failures=1, retry=policy, clock=clock, sleep=clock.sleep
        ),
    )
    results = {r.id: r async for r in engine.stream(reqs(2))}
    first = results["r0"]
    assert isinstance(first.error, AuthenticationError) and "not sent" in str(first.error)
    assert first.attempts == 1
    assert clock.sleeps and clock.sleeps[0] > 0
    assert first.duration == pytest.approx(clock.sleeps[0])


async def test_a_failing_listener_does_not_break_the_batch() -> None:
    def broken(event: object) -> None:
        raise RuntimeError("listener bug")

    engine = Engine(FakeClient(), EngineConfig(listeners=[broken]))
    results = [r async for r in engine.stream(reqs(5))]
    assert len(results) == 5 and all(r.ok for r in results)


async def test_a_source_that_raises_stops_the_batch_with_that_error() -> None:
    def source():  # type: ignore[no-untyped-def]
        yield from reqs(3)
        raise ValueError("bad line 4")

    engine = Engine(FakeClient(latency=0.01))
    with pytest.raises(ValueError, match="bad line 4"):
        async for _ in engine.stream(source()):
            pass


async def test_sync_api_works_inside_a_running_event_loop() -> None:
    processor = BatchProcessor(FakeClient())
    results = processor.process_batch(reqs(5))  # runs on a helper thread
    assert [r.id for r in results] == [f"r{i}" for i in range(5)]


def test_plain_connection_and_timeout_errors_from_custom_clients_are_retried() -> None:
    client = FakeClient(failures={"p0": [ConnectionResetError("reset"), TimeoutError()]})
    cfg = BatchProcessorConfig(retry=RetryPolicy(base_delay=0))
    [result] = BatchProcessor(client, cfg).process_batch(reqs(1))
    assert result.ok and result.attempts == 3


async def test_a_source_yielding_something_else_stops_with_a_clear_error() -> None:
    engine = Engine(FakeClient())
    with pytest.raises(TypeError, match="request #1 is a NoneType"):
        async for _ in engine.stream([reqs(1)[0], None]):  # type: ignore[list-item]
            pass


async def test_an_outage_behind_a_gateway_does_not_collapse_the_rate(clock: FakeClock) -> None:
    # A gateway answers 503 while the model server behind it is gone for 60 s. The breaker
    # waits it out with probes; the probes' 503s must not cut the rate again and again, or
    # the run crawls long after the server is back.
    from llmbatch import CompletionResponse, RateLimiter

    back_at = clock.now + 60
    sent: list[float] = []

    class Gateway:
        async def complete(self, request: CompletionRequest) -> CompletionResponse:
            sent.append(clock.now)
            await clock.sleep(0.05)
            if clock.now < back_at:
                raise ServerError("no upstream", status_code=503)
            return CompletionResponse("ok")

    limiter = RateLimiter(clock=clock, sleep=clock.sleep)
    cfg = EngineConfig(max_concurrency=10, limiter=limiter, clock=clock, sleep=clock.sleep)
    results = [r async for r in Engine(Gateway(), cfg).stream(reqs(20))]
    assert all(r.ok for r in results)
    # The refusals before the breaker opened are one event; each probe used to cut again
    # (five cuts here: 357 -> 7.5 requests a minute when the server came back).
    assert limiter.status().cuts == 1
    assert limiter.requests_per_minute is not None and limiter.requests_per_minute > 300


@pytest.mark.parametrize("concurrency", [4, "auto"])
async def test_a_blocked_async_source_does_not_hold_the_deadline_or_an_early_close(
    concurrency: int | str,
) -> None:
    never = asyncio.Event()

    async def source():  # type: ignore[no-untyped-def]
        for r in reqs(2):
            yield r
        await never.wait()  # e.g. a queue nobody feeds any more

    engine = Engine(FakeClient(), EngineConfig(max_concurrency=concurrency))  # type: ignore[arg-type]

    async def run() -> list[str]:
        results = [r async for r in engine.stream(source(), timeout=0.2)]
        assert all(r.ok for r in results)
        async with contextlib.aclosing(engine.stream(source())) as stream:
            async for _ in stream:
                break
        return sorted(r.id for r in results)

    task = asyncio.create_task(run())
    done, _ = await asyncio.wait({task}, timeout=5)
    if not done:  # it hung (on the source): free the test's loop, then fail
        for _ in range(3):
            task.cancel()
            await asyncio.sleep(0.01)
        pytest.fail("the run waited on a blocked source")
    assert task.result() == ["r0", "r1"]


async def test_retry_afters_the_limiter_waits_out_count_against_max_retry_time(
    clock: FakeClock,
) -> None:
    # The same bound with or without a limiter: a server that keeps answering
    # "retry after 100 s" is given up on once that would pass max_retry_time.
    always = FakeClient(lambda r: RateLimitError(retry_after=100))
    policy = RetryPolicy(max_attempts=10, max_retry_time=150)
    for adaptive in (False, True):
        cfg = EngineConfig(retry=policy, adaptive=adaptive, clock=clock, sleep=clock.sleep)
        start = clock.now
        [result] = [r async for r in Engine(always, cfg).stream(reqs(1))]
        assert isinstance(result.error, RateLimitError)
        assert result.attempts == 2, adaptive
        assert clock.now - start <= 150
