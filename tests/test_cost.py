"""Prices, the budget admission, and cost in results, journals and stats (no network)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import genai_prices
import pytest

from llmbatch import (
    BatchResult,
    CompletionRequest,
    CompletionResponse,
    RequestTimeoutError,
    ServerError,
    Usage,
)
from llmbatch.budget import Budget, BudgetExceededError
from llmbatch.io.journal import Journal, journal_stats
from llmbatch.io.sink import ResultSink
from llmbatch.pricing import (
    BATCH_DISCOUNT,
    DEFAULT_WORST_OUTPUT_TOKENS,
    FixedPrices,
    GenaiPrices,
    Pricer,
    worst_input_tokens,
)
from llmbatch.stats import StatsCollector

USAGE = Usage(prompt_tokens=123_456, completion_tokens=7_890, cached_tokens=23_456)


def library_price(model: str, provider: str, usage: Usage, batch: bool = False) -> float:
    """What genai-prices itself says, called directly."""
    result = genai_prices.calc_price(
        genai_prices.Usage(
            input_tokens=usage.prompt_tokens,
            output_tokens=usage.completion_tokens,
            cache_read_tokens=usage.cached_tokens,
            cache_write_tokens=usage.cache_write_tokens,
        ),
        model_ref=model,
        provider_id=provider,
        price_context={"processing": "batch"} if batch else None,
    )
    return float(result.total_price)


@pytest.mark.parametrize(
    ("model", "provider"),
    [
        ("gpt-4o-mini", "openai"),
        ("gpt-4o-mini-2024-07-18", "openai"),  # a dated name, as answers carry it
        ("gpt-4.1", "openai"),
        ("claude-sonnet-4-5", "anthropic"),
        ("gemini-2.5-pro", "google"),  # tiered prices: computed by the library each time
    ],
)
def test_known_models_cost_what_genai_prices_says(model: str, provider: str) -> None:
    source = GenaiPrices()
    for usage in (USAGE, Usage(1_000, 10), Usage(300_000, 2_000, 0, 50_000)):
        for batch in (False, True):
            expected = library_price(model, provider, usage, batch)
            assert source.price(model, provider, usage, batch) == pytest.approx(expected, rel=1e-9)


def test_fixed_usage_gives_the_published_price() -> None:
    # gpt-4o-mini: $0.15 / 1M input, $0.075 / 1M cached input, $0.60 / 1M output.
    usd = GenaiPrices().price("gpt-4o-mini", "openai", Usage(1_000_000, 1_000_000), False)
    assert usd == pytest.approx(0.75)
    cached = GenaiPrices().price("gpt-4o-mini", "openai", Usage(1_000_000, 0, 1_000_000), False)
    assert cached == pytest.approx(0.075)


def test_batch_without_a_library_batch_price_is_half_the_realtime_price() -> None:
    source = GenaiPrices()
    realtime = source.price("claude-3-5-haiku-latest", "anthropic", USAGE, False)
    batch = source.price("claude-3-5-haiku-latest", "anthropic", USAGE, True)
    assert realtime is not None and batch == pytest.approx(realtime * BATCH_DISCOUNT)
    # The library's own batch price wins where it has one (gpt-4o-mini's differs from half).
    own = source.price("gpt-4o-mini", "openai", USAGE, True)
    assert own == pytest.approx(library_price("gpt-4o-mini", "openai", USAGE, True))
    assert own != pytest.approx(source.price("gpt-4o-mini", "openai", USAGE, False) * 0.5)  # type: ignore[operator]


def test_cached_input_tokens_are_cheaper_and_cache_writes_dearer() -> None:
    source = GenaiPrices()
    plain = source.price("claude-sonnet-4-5", "anthropic", Usage(100_000, 0), False)
    read = source.price("claude-sonnet-4-5", "anthropic", Usage(100_000, 0, 100_000), False)
    written = source.price("claude-sonnet-4-5", "anthropic", Usage(100_000, 0, 0, 100_000), False)
    assert plain is not None and read is not None and written is not None
    assert read < plain < written


def test_fixed_prices() -> None:
    prices = FixedPrices(2.0, 8.0, cached_input=0.5)
    usd = prices.price("anything", None, Usage(1_000_000, 500_000, 400_000), False)
    assert usd == pytest.approx(0.6 * 2.0 + 0.4 * 0.5 + 0.5 * 8.0)
    batch = prices.price("anything", None, Usage(1_000_000, 500_000, 400_000), True)
    assert batch == pytest.approx(usd * 0.5)  # type: ignore[operator]
    assert FixedPrices(1.0, 1.0).price("m", None, Usage(10, 0, 10), False) == pytest.approx(1e-5)
    with pytest.raises(ValueError, match="input price"):
        FixedPrices(-1.0, 1.0)


def test_unknown_model_costs_none_with_one_notice() -> None:
    notices: list[str] = []
    pricer = Pricer(provider="openai", model="my-local-llama", notice=notices.append)
    response = CompletionResponse("hi", model="my-local-llama", usage=Usage(10, 5))
    assert pricer.cost(response) is None
    assert pricer.cost(response) is None
    assert pricer.worst_case(CompletionRequest(prompt="x", max_tokens=5)) is None
    assert len(notices) == 1 and "my-local-llama" in notices[0] and "`price_in`" in notices[0]


def test_pricer_uses_the_answer_model_then_the_default_and_honours_batch_and_cache() -> None:
    pricer = Pricer(provider="openai", model="gpt-4o-mini", notice=pytest.fail)
    usage = Usage(1_000, 100)
    realtime = library_price("gpt-4o-mini", "openai", usage)
    assert pricer.cost(CompletionResponse("a", model="", usage=usage)) == pytest.approx(realtime)
    dated = CompletionResponse("a", model="gpt-4o-mini-2024-07-18", usage=usage)
    assert pricer.cost(dated) == pytest.approx(realtime)
    batch = CompletionResponse("a", model="gpt-4o-mini", usage=usage, batch_api=True)
    assert pricer.cost(batch) == pytest.approx(library_price("gpt-4o-mini", "openai", usage, True))
    cached = CompletionResponse("a", model="gpt-4o-mini", usage=usage, cached=True)
    assert pricer.cost(cached) == 0.0


def test_worst_case_bounds_input_by_bytes_and_output_by_max_tokens() -> None:
    pricer = Pricer(FixedPrices(1.0, 2.0), model="m")
    request = CompletionRequest(prompt="héllo wörld" * 10, max_tokens=50)
    tokens = worst_input_tokens(request)
    assert tokens >= len(request.prompt.encode())
    assert pricer.worst_case(request) == pytest.approx((tokens * 1.0 + 50 * 2.0) / 1e6)
    unbounded = CompletionRequest(prompt="x")
    expected = (worst_input_tokens(unbounded) + 2.0 * DEFAULT_WORST_OUTPUT_TOKENS) / 1e6
    assert pricer.worst_case(unbounded) == pytest.approx(expected)


# -- the budget -------------------------------------------------------------------------------

# $1 per 1M tokens in and out: a request's worst case is (input bound + max_tokens) / 1e6.
PRICER = Pricer(FixedPrices(1.0, 1.0), model="m")


def req(max_tokens: int) -> CompletionRequest:
    return CompletionRequest(prompt="p", max_tokens=max_tokens)


def worst(max_tokens: int) -> float:
    value = PRICER.worst_case(req(max_tokens))
    assert value is not None
    return value


def answer(completion_tokens: int) -> CompletionResponse:
    return CompletionResponse("ok", model="m", usage=Usage(1, completion_tokens))


def test_budget_admits_while_the_worst_case_fits_then_waits_for_settlement() -> None:
    async def main() -> None:
        budget = Budget(2.5 * worst(1000), PRICER)
        a = budget.admit(req(1000))
        b = budget.admit(req(1000))
        await a.__aenter__()
        await b.__aenter__()
        assert budget.in_flight == 2 and budget.reserved == pytest.approx(2 * worst(1000))
        c = budget.admit(req(1000))
        waiting = asyncio.create_task(c.__aenter__())
        await asyncio.sleep(0)
        assert not waiting.done()  # a third worst case does not fit while two are in flight
        a.record(answer(10))  # cost far below its reservation
        await a.__aexit__(None, None, None)
        await asyncio.wait_for(waiting, 1)
        assert budget.spent == pytest.approx((1 + 10) / 1e6)
        await b.__aexit__(None, None, None)
        await c.__aexit__(None, None, None)
        assert budget.in_flight == 0 and budget.reserved == pytest.approx(0.0, abs=1e-15)
        assert budget.exhausted is None

    asyncio.run(main())


def test_budget_refuses_when_the_next_request_could_pass_the_cap_and_stays_refused() -> None:
    async def main() -> None:
        budget = Budget(1.5 * worst(1000), PRICER, spent=0.0)
        permit = budget.admit(req(1000))
        await permit.__aenter__()
        permit.record(answer(1000))  # spends its whole worst case, nearly
        await permit.__aexit__(None, None, None)
        with pytest.raises(BudgetExceededError):
            async with budget.admit(req(1000)):
                pytest.fail("admitted past the cap")
        assert budget.exhausted is not None and "left" in budget.exhausted
        # A small request would fit, but admission has stopped for good: the run ends here.
        with pytest.raises(BudgetExceededError):
            async with budget.admit(req(1)):
                pass
        assert budget.refused == 2
        assert budget.spent <= budget.max_cost

    asyncio.run(main())


def test_budget_counts_prior_spend_and_failed_attempts() -> None:
    async def main() -> None:
        budget = Budget(1.0, PRICER, spent=0.25)
        assert budget.remaining == pytest.approx(0.75)
        with pytest.raises(ServerError):
            async with budget.admit(req(100)):
                raise ServerError("boom", status_code=500)
        assert budget.spent == pytest.approx(0.25)  # a refusal is not billed
        with pytest.raises(RequestTimeoutError):
            async with budget.admit(req(100)):
                raise RequestTimeoutError("slow")
        # Our timeout: the provider may still bill it; the worst case is counted.
        assert budget.spent == pytest.approx(0.25 + worst(100))

    asyncio.run(main())


def test_budget_refuses_a_model_without_a_price() -> None:
    async def main() -> None:
        budget = Budget(100.0, Pricer(provider="openai", notice=lambda m: None))
        with pytest.raises(BudgetExceededError):
            async with budget.admit(CompletionRequest(prompt="x", model="no-such-model")):
                pass
        assert budget.exhausted is not None and "no known price" in budget.exhausted

    asyncio.run(main())


def test_cancelled_waiter_reserves_nothing() -> None:
    async def main() -> None:
        budget = Budget(1.5 * worst(1000), PRICER)
        first = budget.admit(req(1000))
        await first.__aenter__()
        waiter = asyncio.create_task(budget.admit(req(1000)).__aenter__())
        await asyncio.sleep(0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert budget.reserved == pytest.approx(worst(1000)) and budget.in_flight == 1
        await first.__aexit__(None, None, None)
        assert budget.exhausted is None

    asyncio.run(main())


def test_admit_amount_for_bulk_submissions() -> None:
    budget = Budget(10.0, PRICER, spent=2.0)
    assert budget.admit_amount(5.0)
    assert not budget.admit_amount(3.5)  # 2 + 5 + 3.5 > 10: refused, even with 5 in flight
    assert budget.exhausted is not None
    budget.settle_amount(5.0, 2.5)
    assert budget.spent == pytest.approx(4.5) and budget.reserved == 0.0
    assert not budget.admit_amount(0.01)  # exhausted stays exhausted
    assert not Budget(10.0, PRICER).admit_amount(None)  # no price, no admission


# -- cost in the output and the stats ---------------------------------------------------------


def test_sink_sets_cost_once_and_journal_and_stats_read_it(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    pricer = Pricer(provider="openai", model="gpt-4o-mini", notice=pytest.fail)
    usage = Usage(2_000, 300, 1_000)
    with Journal(out) as journal:
        sink = ResultSink(journal, expected=4, pricer=pricer)
        body = {"model": "gpt-4o-mini", "choices": []}  # the model is read back from the body
        realtime_answer = CompletionResponse("x", "gpt-4o-mini", usage, raw=body)
        sink.write(BatchResult("a", response=realtime_answer))
        batch = CompletionResponse("x", "gpt-4o-mini", usage, raw=body, batch_api=True)
        sink.write(BatchResult("b", response=batch))
        sink.write(BatchResult("c", error=ServerError("no", status_code=500)))
        sink.write(BatchResult("d", error=BudgetExceededError("not sent")))
        sink.close()
    lines = {r["custom_id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert set(lines) == {"a", "b", "c"}  # the refused one is left for the next run
    assert sink.budget_stopped and sink.unfinished == 1
    realtime = library_price("gpt-4o-mini", "openai", usage)
    batch_price = library_price("gpt-4o-mini", "openai", usage, True)
    assert lines["a"]["llmbatch"]["cost"] == pytest.approx(realtime)
    assert lines["b"]["llmbatch"]["cost"] == pytest.approx(batch_price)
    assert "cost" not in lines["c"]["llmbatch"]
    assert sink.spent == pytest.approx(realtime + batch_price)
    stats = journal_stats(out)
    assert stats.cost == pytest.approx(realtime + batch_price)
    assert stats.cost_by_model == {"gpt-4o-mini": pytest.approx(realtime + batch_price)}
    assert stats.to_dict()["cost"] == pytest.approx(realtime + batch_price)
    with Journal(out) as journal:  # the spend survives: recomputed from the file on open
        assert journal.scan.cost == pytest.approx(realtime + batch_price)


def test_stats_collector_cost_per_model_and_unpriced() -> None:
    collector = StatsCollector(pricer=Pricer(provider="openai", notice=lambda m: None))
    usage = Usage(1_000, 100)
    collector.add(BatchResult("a", response=CompletionResponse("x", "gpt-4o-mini", usage)))
    collector.add(BatchResult("b", response=CompletionResponse("x", "gpt-4o", usage), cost=1.0))
    collector.add(BatchResult("c", response=CompletionResponse("x", "local-llama", usage)))
    stats = collector.snapshot()
    mini = library_price("gpt-4o-mini", "openai", usage)
    assert stats.cost_by_model == {"gpt-4o": 1.0, "gpt-4o-mini": pytest.approx(mini)}
    assert stats.cost == pytest.approx(1.0 + mini) and stats.unpriced_count == 1
    assert StatsCollector().snapshot().cost is None


def test_processor_budget_against_the_simulator(start_sim) -> None:  # type: ignore[no-untyped-def]
    from llmbatch import BatchProcessor, BatchProcessorConfig, BatchRequest
    from llmbatch.clients.openai import OpenAIClient

    sim = start_sim("--latency-ms", "10")
    pricer = Pricer(provider="openai", model="gpt-4o-mini", notice=pytest.fail)
    budget = Budget(0.0003, pricer)
    client = OpenAIClient(base_url=sim.url + "/v1", api_key="sk-test", model="gpt-4o-mini")
    processor = BatchProcessor(client, BatchProcessorConfig(max_concurrency=4, budget=budget))
    requests = [
        BatchRequest(f"r{i}", CompletionRequest(prompt=f"q {i} " + "word " * 80, max_tokens=16))
        for i in range(40)
    ]
    results = processor.process_batch(requests)
    done = [r for r in results if r.ok]
    refused = [r for r in results if isinstance(r.error, BudgetExceededError)]
    assert len(done) + len(refused) == 40 and done and refused
    stats = sim.stats()
    billed = library_price(
        "gpt-4o-mini", "openai", Usage(stats["prompt_tokens"], stats["completion_tokens"])
    )
    assert stats["received"] == len(done)
    assert budget.spent == pytest.approx(billed) and billed <= budget.max_cost
    assert budget.exhausted is not None


def test_progress_bar_shows_spend_and_projected_total() -> None:
    from rich.progress import Task

    from llmbatch.progress import RichProgress, _CostColumn

    bar = RichProgress(disable=True)
    column = _CostColumn(bar)
    task = Task(0, "llmbatch", total=100, completed=0, _get_time=lambda: 0.0)
    assert column.render(task).plain == ""  # nothing priced yet: no column text
    bar.add_cost(0.25)
    bar.add_cost(0.25)
    task.completed = 10
    assert column.render(task).plain == "$0.5000 of ~$5.0000"


def test_calculate_batch_stats_with_a_pricer() -> None:
    from llmbatch import calculate_batch_stats

    usage = Usage(10_000, 1_000)
    results = [
        BatchResult(f"r{i}", response=CompletionResponse("x", "gpt-4o", usage)) for i in range(3)
    ]
    stats = calculate_batch_stats(results, pricer=Pricer(provider="openai"))
    assert stats.cost == pytest.approx(3 * library_price("gpt-4o", "openai", usage))
