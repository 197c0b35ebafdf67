"""The simulator's prompt caches, read through the official SDKs and our clients."""

from __future__ import annotations

import asyncio
from typing import Any

import anthropic
import openai
import pytest

from llmbatch.clients import AnthropicClient, OpenAIClient
from llmbatch.simulate import Simulator, SimulatorConfig
from llmbatch.types import CompletionRequest

LONG = "Follow these house rules with care. " * 200  # ~1,800 tokens
SHORT = "Be brief."


def _system(text: str, ttl: str | None = None) -> list[dict[str, Any]]:
    control: dict[str, Any] = {"type": "ephemeral"}
    if ttl:
        control["ttl"] = ttl
    return [{"type": "text", "text": text, "cache_control": control}]


async def _anthropic(sim: Simulator, system: Any, question: str, model: str = "claude-x") -> Any:
    client = anthropic.AsyncAnthropic(base_url=sim.url, api_key="k", max_retries=0)
    try:
        return await client.messages.create(
            model=model,
            max_tokens=20,
            system=system,
            messages=[{"role": "user", "content": question}],
        )
    finally:
        await client.close()


async def test_anthropic_breakpoint_writes_once_then_reads_in_the_sdk_usage() -> None:
    async with Simulator(SimulatorConfig()) as sim:
        first = await _anthropic(sim, _system(LONG), "q1")
        second = await _anthropic(sim, _system(LONG), "q2")
    prefix = first.usage.cache_creation_input_tokens
    assert prefix > 1024
    assert first.usage.cache_read_input_tokens == 0
    assert first.usage.cache_creation.ephemeral_5m_input_tokens == prefix
    assert first.usage.cache_creation.ephemeral_1h_input_tokens == 0
    assert second.usage.cache_read_input_tokens == prefix
    assert second.usage.cache_creation_input_tokens == 0
    # input_tokens is what came after the breakpoint: the question only.
    assert 0 < second.usage.input_tokens < 10


async def test_anthropic_entry_is_readable_only_after_its_writer_answered() -> None:
    async with Simulator(SimulatorConfig(latency_ms=100)) as sim:
        answers = await asyncio.gather(*(_anthropic(sim, _system(LONG), f"q{i}") for i in range(5)))
        stats = sim.stats()
    # Five concurrent first requests: none could read what the others were still writing.
    assert all(a.usage.cache_creation_input_tokens > 1024 for a in answers)
    assert all(a.usage.cache_read_input_tokens == 0 for a in answers)
    assert stats["cache_writes"] == 5 and stats["cache_hits"] == 0


async def test_anthropic_one_hour_ttl_is_reported_apart() -> None:
    async with Simulator(SimulatorConfig()) as sim:
        first = await _anthropic(sim, _system(LONG, "1h"), "q1")
    assert first.usage.cache_creation.ephemeral_1h_input_tokens == (
        first.usage.cache_creation_input_tokens
    )


async def test_anthropic_without_breakpoint_or_under_the_minimum_caches_nothing() -> None:
    async with Simulator(SimulatorConfig()) as sim:
        plain = [await _anthropic(sim, LONG, f"q{i}") for i in range(2)]
        short = [await _anthropic(sim, _system(SHORT * 50), f"q{i}") for i in range(2)]
        # Haiku 4.5 caches from 4,096 tokens: ~1,800 is under its minimum.
        haiku = [
            await _anthropic(sim, _system(LONG), f"q{i}", "claude-haiku-4-5") for i in range(2)
        ]
    for answer in plain + short + haiku:
        assert answer.usage.cache_creation_input_tokens == 0
        assert answer.usage.cache_read_input_tokens == 0


async def test_anthropic_refuses_more_than_four_breakpoints_and_ttl_out_of_order() -> None:
    blocks = [
        {"type": "text", "text": f"part {i} " * 50, "cache_control": {"type": "ephemeral"}}
        for i in range(5)
    ]
    mixed = [
        {"type": "text", "text": LONG, "cache_control": {"type": "ephemeral", "ttl": "5m"}},
        {"type": "text", "text": LONG, "cache_control": {"type": "ephemeral", "ttl": "1h"}},
    ]
    async with Simulator(SimulatorConfig()) as sim:
        with pytest.raises(anthropic.BadRequestError, match="maximum of 4"):
            await _anthropic(sim, blocks, "q")
        with pytest.raises(anthropic.BadRequestError, match="1h"):
            await _anthropic(sim, mixed, "q")
        ok = await _anthropic(sim, blocks[:4], "q")
    assert ok.usage.input_tokens >= 0


async def test_anthropic_reads_the_longest_cached_breakpoint() -> None:
    doc = {"type": "text", "text": "Document body. " * 300, "cache_control": {"type": "ephemeral"}}
    async with Simulator(SimulatorConfig()) as sim:
        await _anthropic(sim, _system(LONG), "warm the system prompt alone")
        both = await _anthropic(sim, [*_system(LONG), doc], "q")
        again = await _anthropic(sim, [*_system(LONG), doc], "q2")
    # The system prompt was read, the document written on top of it; then both read.
    assert both.usage.cache_read_input_tokens > 1024
    assert both.usage.cache_creation_input_tokens > 1000
    assert again.usage.cache_read_input_tokens == (
        both.usage.cache_read_input_tokens + both.usage.cache_creation_input_tokens
    )


async def _openai(sim: Simulator, system: str, question: str, **extra: Any) -> Any:
    client = openai.AsyncOpenAI(base_url=sim.url + "/v1", api_key="k", max_retries=0)
    try:
        return await client.chat.completions.create(
            model="gpt-x",
            messages=[{"role": "system", "content": system}, {"role": "user", "content": question}],
            max_tokens=20,
            extra_body=extra or None,
        )
    finally:
        await client.close()


async def test_openai_caches_long_prompts_in_128_token_steps_in_the_sdk_usage() -> None:
    async with Simulator(SimulatorConfig()) as sim:
        first = await _openai(sim, LONG, "q1")
        second = await _openai(sim, LONG, "q2")
        short = [await _openai(sim, SHORT * 50, f"q{i}") for i in range(2)]
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert cached >= 1024 and (cached - 1024) % 128 == 0
    assert cached <= second.usage.prompt_tokens < cached + 128 + 10
    assert all(s.usage.prompt_tokens_details.cached_tokens == 0 for s in short)


async def test_openai_prompt_cache_key_routes_prefixes_apart() -> None:
    # Two prompts alike in their first 256 tokens route to one machine, which holds one of
    # them: taking turns, each evicts the other. Keys send them to different machines.
    preamble = "Shared preamble of the instructions. " * 40
    one, two = preamble + "Task one. " * 400, preamble + "Task two. " * 400
    config = SimulatorConfig(cache_machine_tokens=2000, cache_machines=8)
    async with Simulator(config) as sim:
        plain = [await _openai(sim, p, "q") for p in (one, two) * 3]
    async with Simulator(config) as sim:
        pairs = ((one, "k-1"), (two, "k-2")) * 3
        keyed = [await _openai(sim, p, "q", prompt_cache_key=k) for p, k in pairs]
    assert sum(r.usage.prompt_tokens_details.cached_tokens for r in plain) == 0
    assert all(r.usage.prompt_tokens_details.cached_tokens > 0 for r in keyed[2:])


async def test_openai_spill_above_the_route_rate_lands_on_cold_machines() -> None:
    config = SimulatorConfig(cache_spill_rpm=2, cache_machines=8, seed=3)
    async with Simulator(config) as sim:
        answers = [await _openai(sim, LONG, f"q{i}") for i in range(12)]
        stats = sim.stats()
    assert stats["cache_spilled"] == 12 - 2
    misses = sum(a.usage.prompt_tokens_details.cached_tokens == 0 for a in answers)
    # The home machine's first write, then at most one per other machine.
    assert 2 <= misses <= 1 + 8


async def test_our_clients_read_the_cache_fields() -> None:
    async with Simulator(SimulatorConfig()) as sim:
        oa = OpenAIClient(base_url=sim.url + "/v1", api_key="k", model="gpt-x")
        an = AnthropicClient(base_url=sim.url, api_key="k", model="claude-x")
        try:
            req = CompletionRequest(prompt="q", system=LONG, max_tokens=20)
            await oa.complete(req)
            openai_usage = (await oa.complete(req)).usage
            blocks = CompletionRequest(prompt="q", max_tokens=20, extra={"system": _system(LONG)})
            written = (await an.complete(blocks)).usage
            read = (await an.complete(blocks)).usage
        finally:
            await oa.aclose()
            await an.aclose()
    assert openai_usage.cached_tokens >= 1024 and openai_usage.cache_write_tokens == 0
    assert written.cache_write_tokens > 1024 and written.cached_tokens == 0
    assert read.cached_tokens == written.cache_write_tokens
    assert read.prompt_tokens == written.prompt_tokens  # every input token, as OpenAI counts


async def test_no_prompt_cache_reports_nothing_cached() -> None:
    async with Simulator(SimulatorConfig(prompt_cache=False)) as sim:
        answers = [await _anthropic(sim, _system(LONG), f"q{i}") for i in range(2)]
    assert all(not a.usage.cache_read_input_tokens for a in answers)
