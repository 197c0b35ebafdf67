"""What the deadline planner measures as it goes, in virtual time: the throughput realtime
really reaches (a bottleneck the latency and the limits given do not show: a client short of
CPU, a limit nobody stated), and how fast the flex lane really answers when it refuses.

The provider's batches are in memory (`tests/virtual_batches.py`); the runner, ledger, engine,
limiter and policy are the real ones; times are the loop's virtual seconds.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import random
from pathlib import Path

from llmbatch import CompletionResponse, Usage
from llmbatch.batch_api import BatchAPIConfig, BatchAPIRunner
from llmbatch.batch_api.hybrid import DeadlineRunner
from llmbatch.clients import OpenAIClient
from llmbatch.clients.fake import FakeClient
from llmbatch.deadline import DeadlinePolicy, RealtimeCapacity, ThroughputMeter, Work
from llmbatch.engine import Engine, EngineConfig
from llmbatch.errors import CapacityError
from llmbatch.limiter import RateLimiter
from llmbatch.pricing import FixedPrices, GenaiPrices, Pricer, flex_costs_no_more
from llmbatch.tiers import FLEX, TierPolicy, served_tier, tier_of
from llmbatch.types import BatchRequest, BatchResult, CompletionRequest

from .virtual_batches import VirtualBatches, in_virtual_time


def requests(n: int) -> list[BatchRequest]:
    return [
        BatchRequest(f"r{i:04d}", CompletionRequest(prompt=f"question {i}", max_tokens=16))
        for i in range(n)
    ]


def test_capacity_takes_the_slowest_of_latency_limits_and_measured_throughput() -> None:
    work = Work(1000, 50_000, 16_000)
    capacity = RealtimeCapacity(rpm=6000, concurrency=10, latency=1.0)
    assert capacity.seconds(work) == 100.0  # 100 waves of 1 s
    measured = dataclasses.replace(capacity, throughput=2.0)
    assert measured.seconds(work) == 500.0 and measured.binding(work) == "throughput"
    assert "throughput" not in measured.needed(work, 60.0)  # no setting raises it


def test_the_meter_counts_only_time_with_work_to_spare() -> None:
    meter = ThroughputMeter(min_count=4, window=10**9)
    t = 0.0
    meter.finished(t, saturated=True)
    for _ in range(4):  # saturated: one answer every 0.5 s
        t += 0.5
        meter.finished(t, saturated=True)
    assert meter.rate is not None and math.isclose(meter.rate, 2.0)
    meter.finished(t + 0.5, saturated=False)  # the last of the work: counted, then idle
    meter.finished(t + 100.0, saturated=True)  # after an idle stretch: not counted
    assert meter.timed == 5 and math.isclose(meter.rate, 2.0)
    assert ThroughputMeter(min_count=64).rate is None  # nothing measured yet


async def _run(
    tmp_path: Path,
    batches: VirtualBatches,
    client: FakeClient,
    n: int,
    *,
    deadline: float,
    capacity: RealtimeCapacity,
    engine_config: EngineConfig,
    tier: str | None = None,
    feed_flex: bool = True,
) -> tuple[DeadlineRunner, list[BatchResult], float]:
    loop = asyncio.get_running_loop()
    api = OpenAIClient(model="m", base_url="http://127.0.0.1:9/v1", api_key="k")
    config = BatchAPIConfig(
        tmp_path / "out.jsonl", max_requests=100, clock=batches.clock, poll_interval=5
    )
    runner: DeadlineRunner | None = None
    if tier is not None:
        engine_config.tiers = TierPolicy(
            urgent=lambda: runner is not None and runner.flex_urgent(), rng=random.Random(2)
        )
    runner = DeadlineRunner(
        BatchAPIRunner(api, config, backend=batches),
        Engine(client, engine_config),
        DeadlinePolicy(batches.clock() - loop.time() + deadline, min_margin=10, cancel_time=10),
        capacity,
        clock=batches.clock,
        tier=tier,
        feed_flex=feed_flex,
    )
    results: list[BatchResult] = []
    try:
        await runner.run(requests(n), on_result=results.append)
    finally:
        await api.aclose()
    return runner, results, loop.time()


def test_a_realtime_path_slower_than_its_latency_says_is_measured_and_the_switch_comes_early(
    tmp_path: Path,
) -> None:
    """Realtime answers in 1 s with 10 in flight (10/s, it seems), but something the planner
    is not told holds it to 2/s (here a limiter of 120/min; on a busy machine, the client's
    own CPU). The first batch comes back expired at 100 s and its 100 lines go realtime: the
    planner measures 2/s there, so it moves the other nine batches (never coming back) at
    about 420 s, when 900 lines at 2/s still fit, not at about 870 s as 10/s would have it
    (the run would then end near 1,320 s, past the deadline)."""
    turnarounds = [100.0] + [math.inf] * 9

    async def main() -> tuple[DeadlineRunner, list[BatchResult], float]:
        loop = asyncio.get_running_loop()
        batches = VirtualBatches(
            OpenAIClient(model="m", base_url="http://127.0.0.1:9/v1", api_key="k"),
            turnaround=math.inf,
            turnarounds=turnarounds,
            end_status="expired",
            done_at_end=0.0,
        )
        hidden = RateLimiter(120, burst_seconds=1.0, clock=loop.time)
        config = EngineConfig(max_concurrency=10, limiter=hidden, clock=loop.time)
        return await _run(
            tmp_path,
            batches,
            FakeClient("live", latency=1.0),
            1000,
            deadline=1000.0,
            capacity=RealtimeCapacity(concurrency=10, latency=1.0),
            engine_config=config,
        )

    runner, results, ended = in_virtual_time(main)
    assert sorted(r.id for r in results) == [f"r{i:04d}" for i in range(1000)]
    assert all(r.error is None for r in results)
    assert runner.switched is not None and runner.switched.at - runner.policy.deadline < -500
    assert ended < 1000.0  # the deadline, in the loop's seconds


def flex_provider(
    refusals: float, seed: int, failures: dict[str, list[BaseException]] | None = None
) -> FakeClient:
    """A realtime API whose flex tier answers in 2 s and refuses `refusals` of its calls
    (and the `failures` given, by prompt, first)."""
    rng = random.Random(seed)

    def answer(request: CompletionRequest) -> CompletionResponse | BaseException:
        flex = tier_of(request) == FLEX
        if flex and rng.random() < refusals:
            return CapacityError("Resource Unavailable")
        return CompletionResponse(
            "ok",
            model="m",
            usage=Usage(10, 2),
            raw={"service_tier": "flex" if flex else "default"},
        )

    return FakeClient(answer, latency=2.0, failures=failures)


def test_flex_takes_the_batches_while_it_has_room_so_late_lines_pay_the_batch_price(
    tmp_path: Path,
) -> None:
    """Ten batches that never come back, a flex tier refusing 60% of its calls, deadline 1 h.
    Estimated from the latency alone, realtime needs 200 s for the 1,000 lines, so the
    deadline's switch would come at about 3,330 s, and flex (2 answers/s, refusals and all)
    could not finish them before the deadline made them urgent: they would go to the
    default tier at full price. Flex answers at the batch price, so while it has room it
    takes the batches (the last created first) as soon as all are created: every line is
    answered by flex, long before the deadline."""

    async def main() -> tuple[DeadlineRunner, list[BatchResult], float]:
        loop = asyncio.get_running_loop()
        batches = VirtualBatches(
            OpenAIClient(model="m", base_url="http://127.0.0.1:9/v1", api_key="k"),
            turnaround=math.inf,
        )
        # 40 workers, 10 attempts in flight: a refused request waits without a slot.
        config = EngineConfig(max_concurrency=40, max_in_flight=10, clock=loop.time)
        return await _run(
            tmp_path,
            batches,
            flex_provider(0.6, seed=1),
            1000,
            deadline=3600.0,
            capacity=RealtimeCapacity(concurrency=10, latency=2.0),
            engine_config=config,
            tier=FLEX,
        )

    runner, results, ended = in_virtual_time(main)
    assert sorted(r.id for r in results) == [f"r{i:04d}" for i in range(1000)]
    assert all(r.error is None for r in results)
    assert {served_tier(r.response) for r in results} == {FLEX}
    assert runner.switched is not None and runner.switched.at - runner.policy.deadline < -3000
    assert ended < 1500.0


def test_flex_dearer_than_a_batch_takes_no_batch_before_the_deadline_needs_it(
    tmp_path: Path,
) -> None:
    """The same run where flex costs more than a batch (`flex_costs_no_more` false, as for a
    flex tier sold at the standard price): the batches are kept until the deadline's switch
    (about 3,330 s), and only then moved."""

    async def main() -> tuple[DeadlineRunner, list[BatchResult], float]:
        loop = asyncio.get_running_loop()
        batches = VirtualBatches(
            OpenAIClient(model="m", base_url="http://127.0.0.1:9/v1", api_key="k"),
            turnaround=math.inf,
        )
        config = EngineConfig(max_concurrency=40, max_in_flight=10, clock=loop.time)
        return await _run(
            tmp_path,
            batches,
            flex_provider(0.6, seed=1),
            1000,
            deadline=3600.0,
            capacity=RealtimeCapacity(concurrency=10, latency=2.0),
            engine_config=config,
            tier=FLEX,
            feed_flex=False,
        )

    runner, results, _ = in_virtual_time(main)
    assert sorted(r.id for r in results) == [f"r{i:04d}" for i in range(1000)]
    assert runner.switched is not None and runner.switched.at - runner.policy.deadline > -400


class DearFlex:
    """A user's price source knowing a flex price above the batch one (a flex tier sold at
    the standard price, as Groq's)."""

    def price(self, model: str, provider: str | None, usage: Usage, batch: bool) -> float:
        return (usage.prompt_tokens + usage.completion_tokens) / 1e6 * (0.5 if batch else 1.0)

    def tier_price(self, model: str, provider: str | None, usage: Usage, tier: str) -> float:
        return self.price(model, provider, usage, False)


def test_flex_is_fed_batches_only_where_it_costs_no_more_than_a_batch() -> None:
    assert flex_costs_no_more(Pricer(GenaiPrices(), provider="openai"), "gpt-5-mini")
    assert flex_costs_no_more(Pricer(GenaiPrices(), provider="openai"), "gpt-4o-mini")
    assert flex_costs_no_more(Pricer(FixedPrices(1.0, 2.0)), "any")  # flex: the batch price
    assert flex_costs_no_more(None, "gpt-5-mini")  # no prices: flex is sold at the batch price
    assert not flex_costs_no_more(Pricer(DearFlex()), "m")


def test_a_refused_flex_request_waits_without_holding_an_attempts_slot() -> None:
    """40 workers, 10 attempts in flight: every request is refused once, then answered. The
    client never sees more than 10 calls at once, and the waits after the refusals overlap
    the other requests' calls instead of idling slots."""

    async def main() -> tuple[FakeClient, float]:
        loop = asyncio.get_running_loop()
        items = requests(40)
        refused: dict[str, list[BaseException]] = {
            item.request.prompt: [CapacityError("Resource Unavailable")] for item in items
        }
        client = flex_provider(0.0, seed=1, failures=refused)
        engine = Engine(
            client,
            EngineConfig(
                max_concurrency=40,
                max_in_flight=10,
                clock=loop.time,
                tiers=TierPolicy(base_delay=8.0, max_delay=8.0, rng=random.Random(3)),
            ),
        )
        flex = [
            BatchRequest(i.id, dataclasses.replace(i.request, extra={"service_tier": FLEX}))
            for i in items
        ]
        results = [r async for r in engine.stream(flex)]
        assert all(r.error is None for r in results)
        return client, loop.time()

    client, took = in_virtual_time(main)
    assert client.max_in_flight == 10
    # 80 calls of 2 s through 10 slots: 16 s of calls; the waits (up to 8 s) overlap them.
    # With the waits holding slots it would be 4 rounds of 2 s + wait + 2 s.
    assert took < 30.0
