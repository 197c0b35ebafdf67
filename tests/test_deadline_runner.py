"""`DeadlineRunner` in virtual time: hours of batches and deadlines in milliseconds.

The event loop is looptime's (its clock jumps to the next timer when every task waits), the
batch provider is in memory (`tests/virtual_batches.py`), the realtime model a `FakeClient`;
the runner, ledger, engine and deadline policy are the real ones. Times asserted here are the
loop's virtual seconds, so they do not depend on the machine's load.
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from llmbatch.batch_api import BatchAPIConfig, BatchAPIRunner
from llmbatch.batch_api.hybrid import DeadlineRunner, estimate_work
from llmbatch.clients import OpenAIClient
from llmbatch.clients.fake import FakeClient
from llmbatch.deadline import DeadlinePolicy, RealtimeCapacity, Work
from llmbatch.engine import Engine, EngineConfig
from llmbatch.types import BatchRequest, BatchResult

from .virtual_batches import EPOCH, HOUR, VirtualBatches, in_virtual_time, provider, requests

LATENCY = 2.0  # seconds per realtime answer


@dataclass
class Run:
    """One deadline run against a provider that outlives it (as a real one does)."""

    tmp_path: Path
    provider: VirtualBatches
    deadline: float  # virtual seconds
    results: list[BatchResult] = field(default_factory=list)
    realtime: FakeClient = field(default_factory=lambda: FakeClient("live", latency=LATENCY))
    runner: DeadlineRunner | None = None
    ended_at: float | None = None

    async def go(self, items: list[BatchRequest], done: set[str] | None = None) -> None:
        loop = asyncio.get_running_loop()
        client = OpenAIClient(model="m", base_url="http://127.0.0.1:9/v1", api_key="k")
        config = BatchAPIConfig(self.tmp_path / "out.jsonl", clock=self.provider.clock)
        batches = BatchAPIRunner(client, config, backend=self.provider)
        engine = Engine(self.realtime, EngineConfig(max_concurrency=8, clock=loop.time))
        self.runner = DeadlineRunner(
            batches,
            engine,
            DeadlinePolicy(self.provider.clock() - loop.time() + self.deadline),
            RealtimeCapacity(concurrency=8, latency=LATENCY),
            clock=self.provider.clock,
        )
        total = sum((estimate_work(item.request) for item in items), Work())
        finished = done or set()
        try:
            await self.runner.run(
                items, on_result=self.results.append, done=finished.__contains__, total=total
            )
        finally:
            self.ended_at = loop.time()
            await client.aclose()

    def final_ids(self) -> Counter[str]:
        return Counter(r.id for r in self.results)

    def from_batches(self) -> int:
        return sum(1 for r in self.results if r.response is not None and r.response.batch_api)


def test_a_batch_in_time_answers_everything_at_half_price_and_nothing_goes_realtime(
    tmp_path: Path,
) -> None:
    async def main() -> Run:
        run = Run(tmp_path, provider(turnaround=20 * 60)(), deadline=4 * HOUR)
        await run.go(requests(40))
        return run

    run = in_virtual_time(main)
    assert run.final_ids() == Counter({f"r{i:03d}": 1 for i in range(40)})
    assert run.from_batches() == 40 and len(run.realtime.calls) == 0
    assert run.runner is not None and run.runner.switched is None
    # Ended with the batch (20 min, plus at most one backed-off poll), not at the deadline.
    assert run.ended_at is not None and 20 * 60 <= run.ended_at < 20 * 60 + 600


def test_a_stalled_batch_is_cancelled_in_time_and_the_run_ends_when_the_work_is_done(
    tmp_path: Path,
) -> None:
    async def main() -> Run:
        # The batch never ends, and its cancel never takes effect either.
        stalled = provider(turnaround=math.inf, cancel_delay=math.inf)()
        run = Run(tmp_path, stalled, deadline=2 * HOUR)
        await run.go(requests(40))
        return run

    run = in_virtual_time(main)
    assert run.final_ids() == Counter({f"r{i:03d}": 1 for i in range(40)})
    assert len(run.realtime.calls) == 40 and run.from_batches() == 0
    assert run.runner is not None and run.runner.switched is not None
    assert run.provider.cancels == list(run.provider.batches)  # the one batch, asked once
    # The switch waited for the cancelled batch only as long as realtime could still start
    # in time; the run ended with the last answer, before the deadline, although the
    # cancelled batch never ends (the loop's end of time is 48 h).
    switch_at = run.runner.switched.at - EPOCH
    assert switch_at < 2 * HOUR - 600
    assert run.ended_at is not None and run.ended_at < 2 * HOUR


def test_a_partial_cancel_keeps_what_the_batch_finished_and_buys_only_the_rest(
    tmp_path: Path,
) -> None:
    async def main() -> Run:
        # Too slow for the deadline: about half done when the cancel takes effect.
        slow = provider(turnaround=2 * 2 * HOUR, cancel_delay=30.0)()
        run = Run(tmp_path, slow, deadline=2 * HOUR)
        await run.go(requests(40))
        return run

    run = in_virtual_time(main)
    counts = run.final_ids()
    assert counts == Counter({f"r{i:03d}": 1 for i in range(40)})
    batch_done = run.from_batches()
    assert 0 < batch_done < 40
    # Only what the batch did not finish was bought again, at full price.
    assert len(run.realtime.calls) == 40 - batch_done
    assert run.runner is not None and run.runner.duplicates == []
    assert run.ended_at is not None and run.ended_at < 2 * HOUR


def test_expired_lines_go_realtime_as_soon_as_the_batch_returns_them(tmp_path: Path) -> None:
    async def main() -> Run:
        expiring = provider(turnaround=HOUR, end_status="expired", done_at_end=0.25)()
        run = Run(tmp_path, expiring, deadline=24 * HOUR)
        await run.go(requests(40))
        return run

    run = in_virtual_time(main)
    assert run.final_ids() == Counter({f"r{i:03d}": 1 for i in range(40)})
    assert run.from_batches() == 10 and len(run.realtime.calls) == 30
    assert run.runner is not None and run.runner.switched is None  # no switch was needed
    # The expired lines were sent when the batch ended, not at the deadline.
    assert run.ended_at is not None and run.ended_at < HOUR + 10 * 60


def test_a_crash_during_the_switch_then_a_rerun_answers_every_id_once_and_creates_no_batch(
    tmp_path: Path,
) -> None:
    items = requests(40)
    slow = provider(turnaround=4 * HOUR, cancel_delay=5 * 60)

    async def main() -> tuple[Run, Run]:
        the_provider = slow()
        first = Run(tmp_path, the_provider, deadline=2 * HOUR)
        task = asyncio.create_task(first.go(items))
        # Crash while the switch waits for the cancelled batch to return what it finished.
        await the_provider.cancel_asked.wait()
        await asyncio.sleep(60)
        assert not task.done() and first.runner is not None
        # The late batch is cancelled (the move announced) and its lines not moved yet: the
        # run waits for the cancel to return what the batch finished.
        assert first.runner.switched is not None and not first.realtime.calls
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # A rerun against the same provider and ledger, skipping what the output holds.
        second = Run(tmp_path, the_provider, deadline=2 * HOUR)
        await second.go(items, done={r.id for r in first.results if r.error is None})
        return first, second

    first, second = in_virtual_time(main)
    counts = first.final_ids() + second.final_ids()
    assert counts == Counter({item.id: 1 for item in items})
    assert all(r.error is None for r in first.results + second.results)
    assert len(second.provider.batches) == 1  # the rerun re-attached, created nothing
    # The rerun starts past the latest switch: everything open goes realtime at once, and
    # the run ends with that work, without waiting for the cancelling batch.
    assert len(second.realtime.calls) == 40 - first.from_batches() - second.from_batches()
    assert first.ended_at is not None and second.ended_at is not None
    assert second.ended_at - first.ended_at < 5 * 60
