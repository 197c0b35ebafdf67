"""Split batches and the progressive switch of a deadline run, in virtual time.

The provider is in memory and each batch has its own turnaround (`tests/virtual_batches.py`);
the runner, ledger, engine and policy are the real ones. A late batch is moved to realtime on
its own, when realtime runs short of work; the others keep their chance at the batch price.
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from pathlib import Path

from llmbatch.batch_api import BatchAPIConfig, BatchAPIRunner
from llmbatch.batch_api.hybrid import DeadlineRunner
from llmbatch.clients import OpenAIClient
from llmbatch.clients.fake import FakeClient
from llmbatch.deadline import (
    MIN_SPLIT_REQUESTS,
    SPLIT_BATCHES,
    DeadlinePolicy,
    RealtimeCapacity,
    split_size,
)
from llmbatch.engine import Engine, EngineConfig
from llmbatch.types import BatchResult

from .virtual_batches import HOUR, VirtualBatches, in_virtual_time, provider, requests


def test_split_size_cuts_the_work_into_batches_within_the_caps() -> None:
    assert split_size(20_000) == 20_000 // SPLIT_BATCHES
    assert split_size(60) == MIN_SPLIT_REQUESTS  # one batch: no batch under the floor
    assert split_size(20_000, 300) == 300  # the user's (or provider's) cap wins
    assert split_size(10_000_000, 50_000) == 50_000


async def _run(
    tmp_path: Path,
    batches: VirtualBatches,
    n: int,
    *,
    per_batch: int,
    deadline: float,
    latency: float,
    concurrency: int,
) -> tuple[DeadlineRunner, list[BatchResult], FakeClient, float]:
    loop = asyncio.get_running_loop()
    client = OpenAIClient(model="m", base_url="http://127.0.0.1:9/v1", api_key="k")
    config = BatchAPIConfig(
        tmp_path / "out.jsonl", max_requests=per_batch, clock=batches.clock, poll_interval=30
    )
    realtime = FakeClient("live", latency=latency)
    engine = Engine(realtime, EngineConfig(max_concurrency=concurrency, clock=loop.time))
    runner = DeadlineRunner(
        BatchAPIRunner(client, config, backend=batches),
        engine,
        DeadlinePolicy(batches.clock() - loop.time() + deadline),
        RealtimeCapacity(concurrency=concurrency, latency=latency),
        clock=batches.clock,
    )
    results: list[BatchResult] = []
    try:
        # No total: no probes, so every request goes into the batches.
        await runner.run(requests(n), on_result=results.append)
    finally:
        await client.aclose()
    return runner, results, realtime, loop.time()


def _from_batches(results: list[BatchResult]) -> int:
    return sum(1 for r in results if r.response is not None and r.response.batch_api)


def test_only_the_late_batches_are_bought_again_realtime(tmp_path: Path) -> None:
    # Ten batches of ten: eight come back in 30 min, two never do. Deadline 2 h.
    turnarounds = [30 * 60] * 4 + [math.inf] + [30 * 60] * 4 + [math.inf]
    made = provider(turnaround=30 * 60, turnarounds=turnarounds)

    async def main() -> tuple[DeadlineRunner, list[BatchResult], FakeClient, float, VirtualBatches]:
        batches = made()
        out = await _run(
            tmp_path, batches, 100, per_batch=10, deadline=2 * HOUR, latency=2.0, concurrency=8
        )
        return (*out, batches)

    _, results, realtime, ended, batches = in_virtual_time(main)
    assert Counter(r.id for r in results) == Counter({f"r{i:03d}": 1 for i in range(100)})
    assert all(r.error is None for r in results)
    assert len(batches.batches) == 10
    stalled = {b.id for b in batches.batches.values() if math.isinf(b.ends_at)}
    assert set(batches.cancels) == stalled  # only the late ones were cancelled
    assert _from_batches(results) == 80 and len(realtime.calls) == 20
    assert ended < 2 * HOUR


def test_a_batch_that_can_still_come_back_is_not_cancelled_with_the_late_one(
    tmp_path: Path,
) -> None:
    # Two batches of ten; realtime is slow (one at a time, 120 s each: 1,200 s per batch).
    # Moving both would have to start at 3,540 s; the stalled one (created last) is moved
    # then, and the other, back at 4,500 s, is kept at the batch price.
    made = provider(turnaround=math.inf, turnarounds=[4500.0, math.inf])

    async def main() -> tuple[DeadlineRunner, list[BatchResult], FakeClient, float, VirtualBatches]:
        batches = made()
        out = await _run(
            tmp_path, batches, 20, per_batch=10, deadline=2 * HOUR, latency=120.0, concurrency=1
        )
        return (*out, batches)

    runner, results, realtime, ended, batches = in_virtual_time(main)
    assert Counter(r.id for r in results) == Counter({f"r{i:03d}": 1 for i in range(20)})
    assert all(r.error is None for r in results)
    _, second = batches.batches.values()
    assert batches.cancels == [second.id]
    assert _from_batches(results) == 10 and len(realtime.calls) == 10
    assert len(runner.moves) == 1 and runner.moves[0].cancelled == (second.id,)
    # Moved at the latest moment for both batches' work (3,540 s), finished in time.
    assert runner.switched is not None
    assert abs(runner.switched.seconds_left - (2 * HOUR - 3540)) <= 10
    assert ended < 2 * HOUR
