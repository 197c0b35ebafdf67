"""The flex service tier: refusals for capacity are waited out (or moved tier), never a failure.

Real HTTP to the simulator (in this process, or `llmbatch simulate` for the CLI); the engine's
backoff sleeps on a fake clock, so no test waits for a refusal's backoff.
"""

from __future__ import annotations

import json

import openai
import pytest

import llmbatch
from llmbatch import (
    BatchRequest,
    CapacityError,
    CompletionRequest,
    Engine,
    EngineConfig,
    RateLimiter,
    RateLimitError,
    RetryPolicy,
)
from llmbatch.clients import OpenAIClient
from llmbatch.clients._http import error_for_status
from llmbatch.pipeline import RunConfig
from llmbatch.pricing import FixedPrices, Pricer
from llmbatch.simulate import Simulator, SimulatorConfig
from llmbatch.tiers import TierPolicy, served_tier, tier_of, with_tier
from llmbatch.types import CompletionResponse, Usage

from .conftest import FakeClock
from .helpers import cli, read_out, write_requests

N = 40


def _requests(tier: str | None) -> list[BatchRequest]:
    out = []
    for i in range(N):
        request = CompletionRequest(prompt=f"question {i}", max_tokens=8)
        out.append(BatchRequest(f"q{i}", with_tier(request, tier) if tier else request))
    return out


async def _run(
    sim: Simulator, tier: str | None, policy: TierPolicy, limiter: RateLimiter | None = None
) -> list:
    clock = FakeClock()
    client = OpenAIClient(api_key="sk-test", base_url=sim.url + "/v1", model="gpt-4o-mini")
    config = EngineConfig(
        max_concurrency=8,
        retry=RetryPolicy(max_attempts=1),  # no retries: a refusal counted as one would fail
        limiter=limiter,
        tiers=policy,
        clock=clock,
        sleep=clock.sleep,  # backoff in virtual time; the HTTP calls are real
    )
    async with client:
        return [r async for r in Engine(client, config).stream(_requests(tier))]


async def test_flex_refusals_are_waited_out_without_failing_a_line_or_cutting_the_pace() -> None:
    async with Simulator(SimulatorConfig(flex_refusal_rate=0.6, seed=7)) as sim:
        limiter = RateLimiter(60_000)
        results = await _run(sim, "flex", TierPolicy(), limiter)
        stats = sim.stats()
    assert sorted(r.id for r in results) == sorted(f"q{i}" for i in range(N))
    assert all(r.error is None for r in results)
    assert all(served_tier(r.response) == "flex" for r in results)
    assert stats["flex_refused"] > N // 2  # the refusals really happened...
    assert stats["flex_requests"] == N + stats["flex_refused"]
    assert sum(r.attempts for r in results) == stats["flex_requests"]
    status = limiter.status()  # ... and the pace standard requests use was left alone
    assert status.cuts == 0 and status.rate_limited == 0 and status.paused_for == 0
    assert status.requests_per_minute == 60_000


async def test_auto_moves_a_line_flex_keeps_refusing_to_the_default_tier() -> None:
    async with Simulator(SimulatorConfig(flex_refusal_rate=1.0)) as sim:
        results = await _run(sim, "flex", TierPolicy(fallback="default", max_refusals=3))
        stats = sim.stats()
    assert all(r.error is None for r in results)
    assert all(served_tier(r.response) == "default" for r in results)
    assert stats["flex_refused"] == 3 * N  # three refusals each, then standard
    assert stats["received"] == 4 * N


async def test_flex_refusals_are_bounded_in_time_then_final() -> None:
    async with Simulator(SimulatorConfig(flex_refusal_rate=1.0)) as sim:
        results = await _run(sim, "flex", TierPolicy(max_wait=30.0))
    assert len(results) == N
    assert all(isinstance(r.error, CapacityError) for r in results)
    assert all(r.attempts > 1 for r in results)  # waited and sent again first


async def test_groq_498_capacity_exceeded_is_a_capacity_refusal() -> None:
    config = SimulatorConfig(flex_refusal_rate=0.5, flex_refusal_status=498, seed=3)
    async with Simulator(config) as sim:
        results = await _run(sim, "flex", TierPolicy())
        stats = sim.stats()
    assert all(r.error is None for r in results)
    assert stats["by_status"].get("498", 0) == stats["flex_refused"] > 0


def test_a_capacity_refusal_is_not_a_rate_limit_and_a_rate_limit_stays_one() -> None:
    flex = {"error": {"message": "Resource Unavailable", "type": "resource_unavailable"}}
    refused = error_for_status(429, {"retry-after": "2"}, flex)
    assert isinstance(refused, CapacityError) and refused.retry_after == 2.0
    limited = {"error": {"message": "Rate limit reached", "code": "rate_limit_exceeded"}}
    assert isinstance(error_for_status(429, {}, limited), RateLimitError)
    assert isinstance(error_for_status(498, {}, {"error": "capacity_exceeded"}), CapacityError)


def test_an_answer_served_by_flex_is_priced_at_the_batch_price() -> None:
    pricer = Pricer(FixedPrices(1.0, 2.0))
    usage = Usage(prompt_tokens=1_000_000, completion_tokens=1_000_000)

    def cost(tier: str | None) -> float | None:
        raw = {"model": "m"} | ({"service_tier": tier} if tier else {})
        return pricer.cost(CompletionResponse(content="x", model="m", usage=usage, raw=raw))

    assert cost(None) == cost("default") == 3.0
    assert cost("flex") == 1.5  # the tier the reply reports decides, not the one asked


def test_the_official_sdk_drives_flex_against_the_simulator(start_sim) -> None:
    sim = start_sim("--flex-latency-factor", "1")
    client = openai.OpenAI(api_key="sk-test", base_url=sim.url + "/v1", max_retries=0)
    reply = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "hi"}],
        service_tier="flex",
        timeout=900.0,
    )
    assert reply.service_tier == "flex" and reply.choices[0].message.content
    refusing = start_sim("--flex-refusal-rate", "1")
    client = openai.OpenAI(api_key="sk-test", base_url=refusing.url + "/v1", max_retries=0)
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], service_tier="flex"
        )
    assert info.value.status_code == 429 and info.value.code == "resource_unavailable"


def test_cli_service_tier_flex_finishes_every_line_at_the_flex_price(start_sim, tmp_path) -> None:
    sim = start_sim("--flex-refusal-rate", "0.3", "--seed", "5", "--flex-latency-factor", "1")
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    ids = [f"q{i}" for i in range(12)]
    write_requests(inp, ids)
    done = cli(
        "run", str(inp), "-o", str(out), "--base-url", sim.url + "/v1", "--model", "gpt-4o-mini",
        "--service-tier", "flex", "--max-retries", "0", "--price-in", "1", "--price-out", "2",
        "--no-progress", "--stats-json", str(tmp_path / "stats.json"),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["success_count"] == 12
    lines = read_out(out)
    assert sorted(rec["custom_id"] for rec in lines) == sorted(ids)
    for rec in lines:
        meta = rec["llmbatch"]
        assert rec["error"] is None and meta["service_tier"] == "flex"
        usage = meta["usage"]
        full = (usage["prompt_tokens"] * 1 + usage["completion_tokens"] * 2) / 1e6
        assert abs(meta["cost"] - full / 2) < 1e-12
    assert sim.stats()["flex_refused"] > 0


def test_cli_service_tier_refuses_what_cannot_work(tmp_path) -> None:
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_requests(inp, ["a"])
    base = ["run", str(inp), "-o", str(out), "--model", "m", "--base-url", "http://127.0.0.1:9"]
    bad = cli(*base, "--service-tier", "cheap")
    assert bad.returncode == 2 and "--service-tier" in bad.stderr
    anthropic = cli(*base, "--service-tier", "flex", "--provider", "anthropic")
    assert anthropic.returncode == 2 and "--service-tier" in anthropic.stderr
    batch = cli(*base, "--service-tier", "flex", "--batch-api")
    assert batch.returncode == 2 and "--service-tier" in batch.stderr
    assert not out.exists()


def test_python_run_with_service_tier_auto_moves_refused_lines_to_default(
    start_sim, tmp_path, monkeypatch
) -> None:
    sim = start_sim("--flex-refusal-rate", "1")
    out = tmp_path / "out.jsonl"
    monkeypatch.setenv("LLMBATCH_TEST_KEY", "sk-test")
    items = [
        BatchRequest(f"p{i}", CompletionRequest(prompt=f"q {i}", max_tokens=8)) for i in range(6)
    ]
    config = RunConfig(
        requests=items,
        output=str(out),
        base_url=sim.url + "/v1",
        model="gpt-4o-mini",
        api_key_env="LLMBATCH_TEST_KEY",
        service_tier="auto",
        max_retries=0,
    )
    summary = llmbatch.run(config)
    assert summary.stats.success_count == 6 and summary.stats.failure_count == 0
    assert {rec["llmbatch"]["service_tier"] for rec in read_out(out)} == {"default"}
    stats = sim.stats()
    assert stats["flex_refused"] == 3 * 6 and stats["received"] == 4 * 6


async def test_an_urgent_deadline_moves_a_refused_flex_request_to_default_at_once() -> None:
    clock = FakeClock()
    started = clock()
    urgent_at = started + 1.0
    policy = TierPolicy(urgent=lambda: clock() >= urgent_at)
    flex = with_tier(CompletionRequest(prompt="q"), "flex")
    step = policy.after_refusal(flex, refusals=1, waited=0.0)
    assert step is not None and step[0] is flex  # not urgent yet: wait, then flex again
    await policy.wait(8.0, clock.sleep)  # cut short once urgent, not the full 8 s
    assert clock() - started <= 1.0 + 0.5
    step = policy.after_refusal(flex, refusals=2, waited=1.0)
    assert step is not None and step[1] == 0.0
    assert tier_of(step[0]) == "default"
