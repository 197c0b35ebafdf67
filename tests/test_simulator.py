"""The simulator's server styles on the wire: real HTTP on 127.0.0.1, a plain aiohttp client.

Nothing here goes through llmbatch's clients or limiter: these tests pin down what each
style sends, so that the pacing tests and benchmarks built on them mean what they say.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import aiohttp
import pytest

from llmbatch.simulate import Simulator, SimulatorConfig
from llmbatch.simulate.limits import Charge, Limits

CHAT = "/v1/chat/completions"
MESSAGES = "/v1/messages"


class Reply:
    def __init__(self, status: int, headers: Mapping[str, str], body: Any) -> None:
        self.status, self.headers, self.body = status, headers, body

    def limit_headers(self) -> set[str]:
        return {h.lower() for h in self.headers if "ratelimit" in h.lower()}


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    # A fresh connection per request: an outage must show as a refused connection.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
        yield s


async def eventually(condition: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    """Poll `condition` until it holds; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def post(
    http: aiohttp.ClientSession,
    sim: Simulator,
    path: str = CHAT,
    prompt: str = "hello",
    max_tokens: int = 16,
    timeout: float = 10.0,
) -> Reply:
    body = {"max_tokens": max_tokens, "messages": [{"role": "user", "content": prompt}]}
    async with http.post(
        sim.url + path, json=body, timeout=aiohttp.ClientTimeout(total=timeout)
    ) as resp:
        return Reply(resp.status, resp.headers, await resp.json(content_type=None))


async def test_openai_style_sends_x_ratelimit_everywhere_and_both_retry_afters(
    http: aiohttp.ClientSession,
) -> None:
    async with Simulator(SimulatorConfig(rpm=60, tpm=6000)) as sim:
        ok = await post(http, sim)
        refused = await post(http, sim)
    assert ok.status == 200 and ok.headers["x-ratelimit-limit-requests"] == "60"
    assert ok.headers["x-ratelimit-limit-tokens"] == "6000"
    assert refused.status == 429 and refused.body["error"]["type"] == "rate_limit_exceeded"
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert refused.headers["retry-after"] == "1"
    assert 0 < int(refused.headers["retry-after-ms"]) <= 1000


async def test_anthropic_style_reports_input_and_output_tokens_apart(
    http: aiohttp.ClientSession,
) -> None:
    cfg = SimulatorConfig(limit_style="anthropic", rpm=600, itpm=60_000, otpm=6_000)
    async with Simulator(cfg) as sim:
        ok = await post(http, sim, MESSAGES, max_tokens=40)
    expected = {
        f"anthropic-ratelimit-{name}-{field}"
        for name in ("requests", "input-tokens", "output-tokens")
        for field in ("limit", "remaining", "reset")
    }
    assert ok.status == 200 and ok.limit_headers() == expected
    assert ok.headers["anthropic-ratelimit-input-tokens-limit"] == "60000"
    assert ok.headers["anthropic-ratelimit-output-tokens-limit"] == "6000"
    assert ok.headers["anthropic-ratelimit-requests-reset"].endswith("Z")
    # Output was charged 40 from max_tokens, then settled with what was really generated.
    used = ok.body["usage"]["output_tokens"]
    assert int(ok.headers["anthropic-ratelimit-output-tokens-remaining"]) == 100 - used


async def test_anthropic_style_refuses_over_the_input_token_limit(
    http: aiohttp.ClientSession,
) -> None:
    # 600 input tokens a minute is 10 a second; a 40-character prompt is 10 tokens.
    cfg = SimulatorConfig(limit_style="anthropic", rpm=6000, itpm=600)
    async with Simulator(cfg) as sim:
        first = await post(http, sim, MESSAGES, prompt="x" * 40)
        second = await post(http, sim, MESSAGES, prompt="x" * 40)
        stats = sim.stats()
    assert first.status == 200 and second.status == 429
    assert second.body == {
        "type": "error",
        "error": {"type": "rate_limit_error", "message": "Rate limit reached"},
    }
    assert second.headers["anthropic-ratelimit-input-tokens-remaining"] == "0"
    # A refusal costs nothing: the request bucket lost only the admitted request.
    assert second.headers["anthropic-ratelimit-requests-remaining"] == "99"
    assert "retry-after" in second.headers and "retry-after-ms" not in second.headers
    assert stats["over_limit"] == 1 and stats["rate_limited"] == 1


async def test_anthropic_style_refuses_over_the_output_token_limit(
    http: aiohttp.ClientSession,
) -> None:
    # 600 output tokens a minute is 10 a second, charged from max_tokens at admission.
    cfg = SimulatorConfig(limit_style="anthropic", otpm=600)
    async with Simulator(cfg) as sim:
        small = await post(http, sim, MESSAGES, prompt="a", max_tokens=4)
        big = await post(http, sim, MESSAGES, prompt="b", max_tokens=10)
    assert small.status == 200
    assert big.status == 429 and big.headers["anthropic-ratelimit-output-tokens-remaining"]


async def test_retry_after_style_sends_only_retry_after(http: aiohttp.ClientSession) -> None:
    async with Simulator(SimulatorConfig(rpm=60, limit_style="retry-after")) as sim:
        ok = await post(http, sim)
        refused = await post(http, sim)
        refused_msg = await post(http, sim, MESSAGES)
    assert ok.status == 200 and ok.limit_headers() == set()
    assert "retry-after" not in ok.headers
    for r in (refused, refused_msg):
        assert r.status == 429 and r.limit_headers() == set()
        assert r.headers["retry-after"] == "1" and "retry-after-ms" not in r.headers


async def test_bare_style_refuses_with_no_header_at_all(http: aiohttp.ClientSession) -> None:
    async with Simulator(SimulatorConfig(rpm=60, limit_style="bare")) as sim:
        ok = await post(http, sim)
        refused = await post(http, sim)
    assert ok.status == 200 and ok.limit_headers() == set()
    assert refused.status == 429 and refused.limit_headers() == set()
    assert not {"retry-after", "retry-after-ms"} & {h.lower() for h in refused.headers}


async def test_over_limit_status_503_answers_overloaded_instead_of_429(
    http: aiohttp.ClientSession,
) -> None:
    cfg = SimulatorConfig(rpm=60, limit_style="bare", over_limit_status=503)
    async with Simulator(cfg) as sim:
        await post(http, sim)
        refused = await post(http, sim)
        refused_msg = await post(http, sim, MESSAGES)
        stats = sim.stats()
    assert refused.status == 503 and refused.body["error"]["type"] == "server_error"
    assert "overloaded" in refused.body["error"]["message"]
    assert refused_msg.status == 503
    assert refused_msg.body["error"]["type"] == "overloaded_error"
    assert stats["by_status"] == {"200": 1, "503": 2} and stats["over_limit"] == 2
    assert stats["rate_limited"] == 0


async def test_overload_rate_answers_503_on_openai_routes_and_529_on_messages(
    http: aiohttp.ClientSession,
) -> None:
    async with Simulator(SimulatorConfig(overload_rate=1.0, rpm=60)) as sim:
        chat = await post(http, sim)
        msg = await post(http, sim, MESSAGES)
        stats = sim.stats()
    assert chat.status == 503 and chat.body["error"]["type"] == "server_error"
    assert "overloaded" in chat.body["error"]["message"]
    assert msg.status == 529
    assert msg.body == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "Overloaded"},
    }
    # Overload comes before the limits: with 1 request a second allowed, none was refused.
    assert stats["overloaded"] == 2 and stats["over_limit"] == 0
    assert stats["by_status"] == {"503": 1, "529": 1}


async def test_overload_rate_is_a_share_of_requests(http: aiohttp.ClientSession) -> None:
    async with Simulator(SimulatorConfig(overload_rate=0.3, seed=4)) as sim:
        replies = [await post(http, sim) for _ in range(100)]
    overloaded = sum(r.status == 503 for r in replies)
    assert 15 <= overloaded <= 45 and overloaded + sum(r.status == 200 for r in replies) == 100


async def test_queue_style_never_refuses_and_latency_grows_with_the_queue(
    http: aiohttp.ClientSession,
) -> None:
    cfg = SimulatorConfig(limit_style="queue", slots=2, latency_ms=100)
    async with Simulator(cfg) as sim:

        async def timed(i: int) -> tuple[int, float]:
            start = time.monotonic()
            reply = await post(http, sim, prompt=f"q{i}")
            return reply.status, time.monotonic() - start

        results = await asyncio.gather(*(timed(i) for i in range(8)))
        stats = sim.stats()
    assert [status for status, _ in results] == [200] * 8
    # 8 at once on 2 slots: 6 had to wait, and the last pair waited for three pairs ahead.
    assert stats["max_queue_depth"] == 6 and stats["max_in_flight"] == 8
    assert stats["queue_depth"] == 0
    assert max(elapsed for _, elapsed in results) >= 0.4 * 0.95
    assert min(elapsed for _, elapsed in results) < max(elapsed for _, elapsed in results) / 2


def test_queue_style_takes_no_rate_limit() -> None:
    with pytest.raises(ValueError, match="queue"):
        SimulatorConfig(limit_style="queue", rpm=60)


async def test_queue_skips_a_request_whose_client_gave_up(http: aiohttp.ClientSession) -> None:
    cfg = SimulatorConfig(limit_style="queue", slots=1, latency_ms=300)
    async with Simulator(cfg) as sim:
        first = asyncio.create_task(post(http, sim, prompt="first"))
        await eventually(lambda: sim.stats()["in_flight"] == 1, "the first request")
        with pytest.raises(asyncio.TimeoutError):
            await post(http, sim, prompt="impatient", timeout=0.1)
        assert (await first).status == 200
        after = await post(http, sim, prompt="after")
        stats = sim.stats()
    assert after.status == 200
    assert stats["abandoned"] == 1 and stats["by_status"] == {"200": 2}


async def test_an_outage_refuses_connections_then_serves_again_on_the_same_port(
    http: aiohttp.ClientSession,
) -> None:
    # The first request starts the countdown and is still being answered when the server
    # goes down 0.1 s later: its connection is cut, as when a server process dies.
    cfg = SimulatorConfig(latency_ms=400, outage_at=0.1, outage_for=1.0)
    async with Simulator(cfg) as sim:
        port = sim.port
        with pytest.raises(aiohttp.ClientError):
            await post(http, sim, prompt="in flight")
        assert sim.stats()["down"]
        with pytest.raises(aiohttp.ClientConnectorError):
            await post(http, sim, prompt="while down")
        await eventually(lambda: not sim.stats()["down"], "the end of the outage")
        back = await post(http, sim, prompt="after")
        stats = sim.stats()
    assert back.status == 200 and sim.port == port
    assert stats["outages"] == 1 and stats["outage_aborted"] >= 1
    # Only the first and the last request reached the handler; the refused one never did.
    assert stats["received"] == 2 and stats["by_status"] == {"200": 1}
    assert stats["undelivered"] == 1


async def test_a_stats_reset_arms_the_outage_again(http: aiohttp.ClientSession) -> None:
    cfg = SimulatorConfig(outage_at=0.2, outage_for=0.3)
    async with Simulator(cfg) as sim:
        for run in range(2):
            await post(http, sim)  # starts the countdown
            await eventually(
                lambda: sim.stats()["outages"] == 1 and not sim.stats()["down"],
                f"an outage in run {run}",
            )
            async with http.post(sim.url + "/stats/reset") as resp:
                assert resp.status == 200  # zeroes `outages`; the next request re-arms


async def test_a_request_bigger_than_a_seconds_worth_is_served_and_leaves_debt(
    http: aiohttp.ClientSession,
) -> None:
    # 600 tokens a minute holds 10 a second; max_tokens=50 could never fit. Providers still
    # serve it once the bucket is full, and make the sender wait the debt off.
    async with Simulator(SimulatorConfig(tpm=600)) as sim:
        big = await post(http, sim, prompt="x", max_tokens=50)
        after = await post(http, sim, prompt="x", max_tokens=1)
    assert big.status == 200
    assert after.status == 429 and int(after.headers["retry-after"]) >= 4


def test_a_phantom_client_sharing_the_key_takes_its_share_in_bursts() -> None:
    # 600 requests a minute: a bucket of 10 refilling 10 a second. The other client takes half
    # of it, 10 requests' worth every 2 s from the first request: the bucket is empty then.
    now = [100.0]
    config = SimulatorConfig(rpm=600, phantom_share=0.5, phantom_every=2.0)
    limits = Limits.from_config(config, lambda: now[0])
    assert limits.admit(Charge(1, 1)) == 0.0  # the first request starts the phantom's clock
    now[0] += 1.9
    assert limits.admit(Charge(1, 1)) == 0.0  # full again, no burst yet
    now[0] += 0.1
    assert limits.admit(Charge(1, 1)) == pytest.approx(0.1)  # the burst emptied the bucket
    now[0] += 2.0  # refilled 20 (10 held), the next burst took 10
    assert limits.admit(Charge(1, 1)) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="phantom_share"):
        SimulatorConfig(phantom_share=1.5)
