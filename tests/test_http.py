"""Real HTTP on 127.0.0.1: the OpenAI and Anthropic clients against the simulator."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import email.utils
import gzip
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
from aiohttp import web

from llmbatch import (
    APIConnectionError,
    AuthenticationError,
    BadRequestError,
    BatchProcessor,
    BatchProcessorConfig,
    BatchRequest,
    CompletionRequest,
    ErrorHandler,
    InvalidResponseError,
    OverloadedError,
    RateLimitError,
    RequestTimeoutError,
    RetryPolicy,
    ServerError,
    calculate_batch_stats,
)
from llmbatch.clients import AnthropicClient, OpenAIClient
from llmbatch.clients._http import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_MAX_RESPONSE_BYTES,
    error_for_status,
    parse_duration,
    rate_limit_info,
)
from llmbatch.simulate import Simulator, SimulatorConfig
from llmbatch.types import RateLimitInfo

KEY = "sk-test-0123456789abcdef"


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(SimulatorConfig(api_key=KEY)) as s:
        yield s


def openai(sim: Simulator, key: str = KEY) -> OpenAIClient:
    return OpenAIClient(base_url=sim.url + "/v1", api_key=key, model="gpt-sim")


def reqs(n: int, **kw: object) -> list[BatchRequest]:
    return [BatchRequest(f"r{i}", CompletionRequest(prompt=f"q{i}", **kw)) for i in range(n)]  # type: ignore[arg-type]


async def test_chat_completion_round_trip(sim: Simulator) -> None:
    async with openai(sim) as client:
        resp = await client.complete(CompletionRequest(prompt="Summarize: hello", max_tokens=20))
        again = await client.complete(CompletionRequest(prompt="Summarize: hello", max_tokens=20))
    assert resp.content and resp.content == again.content  # deterministic from the prompt
    assert resp.model == "gpt-sim" and resp.finish_reason == "stop"
    assert resp.usage.prompt_tokens > 0 and resp.usage.completion_tokens > 0
    assert resp.request_id and resp.request_id.startswith("req_")
    assert resp.raw["object"] == "chat.completion"


async def test_json_mode_asks_for_json_object_and_gets_json(sim: Simulator) -> None:
    async with openai(sim) as client:
        req = CompletionRequest(prompt="Classify x", response_format="json", extra={"seed": 3})
        assert client.body_for(req)["response_format"] == {"type": "json_object"}
        assert client.body_for(req)["seed"] == 3  # extra fields pass through
        resp = await client.complete(req)
    assert isinstance(orjson.loads(resp.content), dict)


async def test_embeddings_and_completions_routes(sim: Simulator) -> None:
    async with openai(sim) as client:
        emb = await client.complete(CompletionRequest(prompt="vector me", endpoint="embeddings"))
        cmp = await client.complete(CompletionRequest(prompt="Once upon", endpoint="completions"))
    assert len(emb.raw["data"][0]["embedding"]) == 8
    assert cmp.raw["object"] == "text_completion" and cmp.content
    assert sim.stats()["by_path"] == {"embeddings": 1, "completions": 1}


async def test_wrong_key_is_fatal_and_stops_the_batch_early(sim: Simulator, tmp_path: Path) -> None:
    wrong = "sk-wrong-key-9999999999"
    handler = ErrorHandler(tmp_path)
    async with openai(sim, key=wrong) as client:
        cfg = BatchProcessorConfig(max_concurrency=4, error_handler=handler)
        results = await BatchProcessor(client, cfg).aprocess_batch(reqs(300))
    handler.close()
    assert all(isinstance(r.error, AuthenticationError) for r in results)
    assert all(r.attempts <= 1 for r in results)
    assert sim.stats()["received"] <= 5 + 4
    # The key is in no error message, no log line, no repr.
    log_text = "".join(p.read_text() for p in sorted(tmp_path.glob("*.jsonl")))
    assert wrong not in log_text and "9999999999" not in log_text
    assert all(wrong not in str(r.error) for r in results)
    assert wrong not in repr(client) and KEY not in repr(openai(sim))


async def test_429_carries_retry_after_and_rate_limit_headers() -> None:
    async with Simulator(SimulatorConfig(rpm=60)) as sim, openai(sim) as client:
        await client.complete(CompletionRequest(prompt="a"))
        with pytest.raises(RateLimitError) as info:
            await client.complete(CompletionRequest(prompt="b"))
    err = info.value
    assert err.status_code == 429
    assert err.retry_after is not None and 0.5 < err.retry_after <= 1.0
    assert err.rate_limit is not None and err.rate_limit.limit_requests == 60


async def test_retry_after_is_honoured_by_a_batch() -> None:
    # 60/min with no client limit: the adaptive limiter must wait out the server's
    # Retry-After, and every request must still succeed.
    async with Simulator(SimulatorConfig(rpm=120)) as sim, openai(sim) as client:
        start = time.monotonic()
        results = await BatchProcessor(client).aprocess_batch(reqs(6))
        elapsed = time.monotonic() - start
        stats = sim.stats()
    assert all(r.ok for r in results)
    assert elapsed >= 2.0  # 2 allowed at once, then one per 0.5 s: the wait was real
    # Only the first concurrent wave (6 sent, 2 allowed) may be refused; after it, paced.
    assert stats["rate_limited"] <= 4


async def test_resets_hangs_and_malformed_bodies_are_classified() -> None:
    async with Simulator(SimulatorConfig(reset_rate=1.0)) as sim, openai(sim) as client:
        with pytest.raises(APIConnectionError):
            await client.complete(CompletionRequest(prompt="x"))
    async with Simulator(SimulatorConfig(malformed_rate=1.0)) as sim, openai(sim) as client:
        with pytest.raises(InvalidResponseError):
            await client.complete(CompletionRequest(prompt="x"))
    cfg = SimulatorConfig(hang_rate=1.0, hang_seconds=0.5)
    async with Simulator(cfg) as sim, openai(sim) as client:
        pcfg = BatchProcessorConfig(
            request_timeout=0.1, retry=RetryPolicy(max_attempts=2, base_delay=0)
        )
        [result] = await BatchProcessor(client, pcfg).aprocess_batch(reqs(1))
    assert isinstance(result.error, RequestTimeoutError) and result.attempts == 2


async def test_server_errors_are_retried_until_success() -> None:
    async with Simulator(SimulatorConfig(fail_rate=0.5, seed=7)) as sim, openai(sim) as client:
        cfg = BatchProcessorConfig(retry=RetryPolicy(max_attempts=20, base_delay=0.001))
        results = await BatchProcessor(client, cfg).aprocess_batch(reqs(40))
        assert sim.stats()["by_status"].get("500", 0) > 0
    assert all(r.ok for r in results)
    assert any(r.attempts > 1 for r in results)


async def test_anthropic_messages_mapping(sim: Simulator) -> None:
    client = AnthropicClient(base_url=sim.url, api_key=KEY, model="claude-sim")
    async with client:
        req = CompletionRequest(
            messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
        )
        body = client.body_for(req)
        assert body["system"] == "Be brief." and body["max_tokens"] == 1024
        assert body["messages"] == [{"role": "user", "content": "hi"}]
        resp = await client.complete(req)
        js = await client.complete(CompletionRequest(prompt="x", response_format="json"))
    assert resp.content and resp.finish_reason == "end_turn" and resp.model == "claude-sim"
    assert resp.usage.prompt_tokens > 0 and resp.request_id
    assert isinstance(orjson.loads(js.content), dict)
    bad = AnthropicClient(base_url=sim.url, api_key="nope", model="m")
    async with bad:
        with pytest.raises(AuthenticationError):
            await bad.complete(CompletionRequest(prompt="x"))


async def test_anthropic_rate_limit_headers_are_read() -> None:
    async with Simulator(SimulatorConfig(rpm=600)) as sim:
        client = AnthropicClient(base_url=sim.url, api_key="k", model="m")
        resp = await client.complete(CompletionRequest(prompt="x"))
        await client.aclose()
    assert resp.rate_limit is not None and resp.rate_limit.limit_requests == 600
    assert resp.rate_limit.reset_requests is not None and resp.rate_limit.reset_requests < 2


def test_error_mapping_by_status_and_typed_body() -> None:
    cases = {
        400: BadRequestError,
        404: BadRequestError,
        422: BadRequestError,
        401: AuthenticationError,
        403: AuthenticationError,
        408: ServerError,
        409: ServerError,
        500: ServerError,
        503: ServerError,
        529: OverloadedError,
    }
    for status, cls in cases.items():
        err = error_for_status(status, {}, {"error": {"message": "m", "type": "t"}})
        assert type(err) is cls, status
        assert err.status_code == status
    overloaded = {"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}
    assert isinstance(error_for_status(500, {}, overloaded), OverloadedError)


def test_retry_after_header_forms() -> None:
    assert error_for_status(429, {"retry-after-ms": "1500"}, None).retry_after == 1.5  # type: ignore[attr-defined]
    assert error_for_status(429, {"retry-after": "7"}, None).retry_after == 7.0  # type: ignore[attr-defined]
    date = email.utils.formatdate(time.time() + 30, usegmt=True)
    after = error_for_status(429, {"retry-after": date}, None).retry_after  # type: ignore[attr-defined]
    assert 25 <= after <= 31
    capped = error_for_status(429, {"retry-after": "86400"}, None, max_retry_after=60)
    assert capped.retry_after == 60  # type: ignore[attr-defined]
    assert error_for_status(429, {"retry-after": "soon"}, None).retry_after is None  # type: ignore[attr-defined]


def test_openai_reset_durations_and_headers() -> None:
    assert parse_duration("6m0s") == 360
    assert parse_duration("1s") == 1
    assert parse_duration("20ms") == pytest.approx(0.02)
    assert parse_duration("1h2m3.5s") == pytest.approx(3723.5)
    info = rate_limit_info(
        {
            "x-ratelimit-limit-requests": "500",
            "x-ratelimit-remaining-requests": "499",
            "x-ratelimit-reset-requests": "120ms",
            "x-ratelimit-limit-tokens": "30000",
            "x-ratelimit-remaining-tokens": "29000",
            "x-ratelimit-reset-tokens": "2s",
        }
    )
    assert info is not None
    assert (info.limit_requests, info.remaining_requests) == (500, 499)
    assert info.reset_requests == pytest.approx(0.12) and info.limit_tokens == 30000


async def test_two_thousand_requests_with_faults_lose_nothing() -> None:
    cfg = SimulatorConfig(fail_rate=0.10, reset_rate=0.05, hang_rate=0.01, hang_seconds=2, seed=11)
    async with Simulator(cfg) as sim, openai(sim) as client:
        pcfg = BatchProcessorConfig(max_concurrency=64, request_timeout=1.0)
        results = await BatchProcessor(client, pcfg).aprocess_batch(reqs(2000))
        stats = sim.stats()
    summary = calculate_batch_stats(results)
    assert summary.failure_count == 0, summary.errors_by_type
    assert len(results) == 2000 and len({r.id for r in results}) == 2000
    assert stats["resets"] > 0 and stats["hangs"] > 0 and stats["by_status"].get("500", 0) > 0


# --- hostile servers: endless or huge bodies, impossible headers, never accepting ---

_CHAT_OK = {
    "id": "c1",
    "model": "m",
    "choices": [{"message": {"content": "ok"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1},
}


async def _endless(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
    await resp.prepare(request)
    chunk = b"[" * 65536
    while True:  # until the client goes away
        await resp.write(chunk)


async def _huge(request: web.Request) -> web.Response:
    return web.Response(body=b" " * (3 * 1024 * 1024), content_type="application/json")


async def _gzip_bomb(request: web.Request) -> web.Response:
    # ~3 KiB on the wire (its Content-Length), 3 MiB once decoded.
    body = gzip.compress(b" " * (3 * 1024 * 1024))
    headers = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
    return web.Response(body=body, headers=headers)


async def _small_chunked(request: web.Request) -> web.StreamResponse:
    # No Content-Length, and small enough to arrive in one read.
    resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
    await resp.prepare(request)
    await resp.write(orjson.dumps({**_CHAT_OK, "padding": "x" * 5000}))
    await resp.write_eof()
    return resp


async def _echo_agent(request: web.Request) -> web.Response:
    agent = request.headers.get("User-Agent", "")
    return web.json_response({**_CHAT_OK, "choices": [{"message": {"content": agent or "-"}}]})


async def _impossible_headers(request: web.Request) -> web.Response:
    headers = {
        "x-ratelimit-limit-requests": "NaN",
        "x-ratelimit-remaining-requests": "-1000000",
        "x-ratelimit-reset-requests": "99999999s",
        "x-ratelimit-limit-tokens": "1e400",
        "x-ratelimit-remaining-tokens": "inf",
        "x-ratelimit-reset-tokens": "-5",
    }
    return web.json_response(_CHAT_OK, headers=headers)


@pytest.fixture
async def hostile() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post("/endless/chat/completions", _endless)
    app.router.add_post("/huge/chat/completions", _huge)
    app.router.add_post("/headers/chat/completions", _impossible_headers)
    app.router.add_post("/bomb/chat/completions", _gzip_bomb)
    app.router.add_post("/agent/chat/completions", _echo_agent)
    app.router.add_post("/chunked/chat/completions", _small_chunked)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def test_an_endless_body_fails_the_request_at_the_cap(hostile: str) -> None:
    assert DEFAULT_MAX_RESPONSE_BYTES == 32 * 1024 * 1024  # generous, but finite
    client = OpenAIClient(base_url=hostile + "/endless", api_key="k", max_response_bytes=2**20)
    async with client:
        with pytest.raises(InvalidResponseError, match=r"max_response_bytes=1048576"):
            await asyncio.wait_for(client.complete(CompletionRequest(prompt="x")), 20)


async def test_a_huge_body_fails_the_request_and_a_small_one_still_passes(hostile: str) -> None:
    client = OpenAIClient(base_url=hostile + "/huge", api_key="k", max_response_bytes=2**20)
    async with client:
        with pytest.raises(InvalidResponseError, match="exceeds max_response_bytes") as info:
            await client.complete(CompletionRequest(prompt="x"))
    assert info.value.status_code == 200
    ok = OpenAIClient(base_url=hostile + "/headers", api_key="k", max_response_bytes=2**20)
    async with ok:
        assert (await ok.complete(CompletionRequest(prompt="x"))).content == "ok"


async def test_a_gzip_bomb_fails_at_the_cap_on_its_decoded_size(hostile: str) -> None:
    # Its declared (compressed) length is under the cap: only the bytes read can catch it.
    client = OpenAIClient(base_url=hostile + "/bomb", api_key="k", max_response_bytes=2**20)
    async with client:
        with pytest.raises(InvalidResponseError, match="exceeds max_response_bytes"):
            await client.complete(CompletionRequest(prompt="x"))


async def test_an_undeclared_body_that_arrives_whole_is_capped_too(hostile: str) -> None:
    client = OpenAIClient(base_url=hostile + "/chunked", api_key="k", max_response_bytes=1000)
    async with client:
        with pytest.raises(InvalidResponseError, match="exceeds max_response_bytes"):
            await client.complete(CompletionRequest(prompt="x"))
    roomy = OpenAIClient(base_url=hostile + "/chunked", api_key="k", max_response_bytes=10_000)
    async with roomy:
        assert (await roomy.complete(CompletionRequest(prompt="x"))).content == "ok"


async def test_no_user_agent_is_sent_unless_the_caller_sets_one(hostile: str) -> None:
    # aiohttp's own would name the library and the Python version.
    async with OpenAIClient(base_url=hostile + "/agent", api_key="k") as client:
        assert (await client.complete(CompletionRequest(prompt="x"))).content == "-"
    mine = {"User-Agent": "my-batch/1.0"}
    async with OpenAIClient(base_url=hostile + "/agent", api_key="k", extra_headers=mine) as client:
        assert (await client.complete(CompletionRequest(prompt="x"))).content == "my-batch/1.0"


async def test_impossible_rate_limit_headers_are_ignored(hostile: str) -> None:
    async with OpenAIClient(base_url=hostile + "/headers", api_key="k") as client:
        resp = await client.complete(CompletionRequest(prompt="x"))
    assert resp.rate_limit == RateLimitInfo()  # every field None: nothing to stall on
    info = rate_limit_info(
        {
            "x-ratelimit-limit-requests": "0",
            "x-ratelimit-remaining-requests": "12",
            "x-ratelimit-reset-requests": "inf",
            "x-ratelimit-limit-tokens": "-3",
        }
    )
    assert info == RateLimitInfo(remaining_requests=12)
    future = dt.datetime.now(dt.UTC) + dt.timedelta(days=400)
    anthropic = rate_limit_info(
        {
            "anthropic-ratelimit-requests-limit": "50",
            "anthropic-ratelimit-requests-remaining": "-1",
            "anthropic-ratelimit-requests-reset": future.isoformat(),
        }
    )
    assert anthropic == RateLimitInfo(limit_requests=50)


def _never_accepting() -> tuple[socket.socket, list[socket.socket]]:
    """A listening socket whose accept queue is full: the kernel drops further SYNs, so a
    connect hangs (until the client's own timeout), deterministically on 127.0.0.1."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    fillers = []
    for _ in range(3):
        s = socket.socket()
        s.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            s.connect(server.getsockname())
        fillers.append(s)
    time.sleep(0.1)
    return server, fillers


async def test_a_server_that_never_accepts_fails_within_the_connect_timeout() -> None:
    server, fillers = _never_accepting()
    port = server.getsockname()[1]
    try:
        assert 0 < DEFAULT_CONNECT_TIMEOUT <= 30  # bounded by default
        assert OpenAIClient(api_key="k").http._connect_timeout == DEFAULT_CONNECT_TIMEOUT
        client = OpenAIClient(base_url=f"http://127.0.0.1:{port}", api_key="k", connect_timeout=0.5)
        start = time.monotonic()
        async with client:
            with pytest.raises(APIConnectionError, match=r"not established within 0.5s"):
                await asyncio.wait_for(client.complete(CompletionRequest(prompt="x")), 10)
        assert time.monotonic() - start < 3
    finally:
        for s in [server, *fillers]:
            s.close()


# --- the pool follows the engine's concurrency ---


async def test_default_pool_does_not_cap_concurrency_at_256() -> None:
    async with Simulator(SimulatorConfig(latency_ms=1500)) as sim:
        async with openai(sim) as client:
            cfg = BatchProcessorConfig(max_concurrency=300)
            results = await BatchProcessor(client, cfg).aprocess_batch(reqs(300))
        stats = sim.stats()
    assert all(r.ok for r in results)
    assert stats["max_in_flight"] > 256


async def test_an_explicit_pool_cap_is_honoured_and_connections_are_reused() -> None:
    async with Simulator(SimulatorConfig(latency_ms=200)) as sim:
        client = OpenAIClient(base_url=sim.url + "/v1", api_key=KEY, max_connections=8)
        async with client:
            cfg = BatchProcessorConfig(max_concurrency=32)
            await BatchProcessor(client, cfg).aprocess_batch(reqs(32))
        assert sim.stats()["max_in_flight"] <= 8


async def test_keep_alive_reuses_one_connection_for_sequential_requests() -> None:
    peers: set[tuple[str, int]] = set()

    async def handler(request: web.Request) -> web.Response:
        assert request.transport is not None
        peers.add(request.transport.get_extra_info("peername"))
        return web.json_response(_CHAT_OK)

    app = web.Application()
    app.router.add_post("/chat/completions", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with OpenAIClient(base_url=f"http://127.0.0.1:{port}", api_key="k") as client:
            for _ in range(20):
                await client.complete(CompletionRequest(prompt="x"))
    finally:
        await runner.cleanup()
    assert len(peers) == 1
