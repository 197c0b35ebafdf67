"""A deadline run whose batches wait for room under the enqueued-token limit, in virtual time.

The provider is in memory (`tests/virtual_batches.py`); the runner, ledger, engine and policy
are the real ones. While a chunk waits for room, the batch runner reads no further: the
requests it has not read are late work too, and the switch to realtime is timed for them.
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from pathlib import Path

import looptime

from llmbatch.batch_api import BatchAPIConfig, BatchAPIRunner
from llmbatch.batch_api.hybrid import DeadlineRunner, estimate_work
from llmbatch.clients import OpenAIClient
from llmbatch.clients.fake import FakeClient
from llmbatch.deadline import DeadlinePolicy, RealtimeCapacity, Work
from llmbatch.engine import Engine, EngineConfig
from llmbatch.types import BatchRequest, BatchResult, CompletionRequest

from .virtual_batches import VirtualBatches

HOUR = 3600.0


def _requests(n: int) -> list[BatchRequest]:
    # "question NN": 11 characters, 3 estimated tokens; ten make a batch of 30.
    return [
        BatchRequest(f"r{i:03d}", CompletionRequest(prompt=f"question {i + 10}", max_tokens=16))
        for i in range(n)
    ]


def test_the_switch_counts_the_requests_a_held_runner_has_not_read(tmp_path: Path) -> None:
    # Six batches of ten, room for one at a time (30 tokens); every batch stalls. Realtime
    # takes 120 s a request, one at a time: 7,200 s for all sixty. With a deadline of 5 h the
    # switch must come by about 3 h, although the runner has read only 11 requests by then.
    async def main() -> tuple[DeadlineRunner, list[BatchResult], FakeClient, float, int]:
        loop = asyncio.get_running_loop()
        client = OpenAIClient(model="m", base_url="http://127.0.0.1:9/v1", api_key="k")
        batches = VirtualBatches(client, turnaround=math.inf)
        config = BatchAPIConfig(
            tmp_path / "out.jsonl",
            max_requests=10,
            enqueued_tokens=30,
            clock=batches.clock,
            poll_interval=30,
        )
        realtime = FakeClient("live", latency=120.0)
        engine = Engine(realtime, EngineConfig(max_concurrency=1, clock=loop.time))
        runner = DeadlineRunner(
            BatchAPIRunner(client, config, backend=batches),
            engine,
            DeadlinePolicy(batches.clock() - loop.time() + 5 * HOUR),
            RealtimeCapacity(concurrency=1, latency=120.0),
            clock=batches.clock,
        )
        items = _requests(60)
        total = sum((estimate_work(item.request) for item in items), Work())
        results: list[BatchResult] = []
        try:
            await runner.run(items, on_result=results.append, total=total)
        finally:
            await client.aclose()
        return runner, results, realtime, loop.time(), len(batches.batches)

    loop = looptime.new_event_loop(start=0, end=48 * HOUR)
    try:
        runner, results, realtime, ended, created = loop.run_until_complete(main())
    finally:
        loop.close()
    assert Counter(r.id for r in results) == Counter({f"r{i:03d}": 1 for i in range(60)})
    assert all(r.error is None for r in results)
    assert created == 1  # the held chunks were never created
    assert len(realtime.calls) == 60
    assert runner.switched is not None
    assert ended < 5 * HOUR  # met: the switch counted all sixty
