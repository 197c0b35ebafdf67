"""Gemini realtime (`--provider gemini`): the native generateContent route over real HTTP to the
simulator, its errors on our tree, its finish reasons on our reply codes, the official
google-genai SDK driving the simulator's Gemini routes, and the CLI as users run it."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from llmbatch import (
    BatchProcessor,
    BatchProcessorConfig,
    BatchRequest,
    CompletionRequest,
    RateLimiter,
    RunConfig,
)
from llmbatch import run as run_pipeline
from llmbatch.clients import ClientSpec, GeminiClient
from llmbatch.clients._http import error_for_status, google_retry_delay
from llmbatch.errors import (
    AuthenticationError,
    BadRequestError,
    RateLimitError,
    ServerError,
    UnsupportedRequestError,
)
from llmbatch.simulate import Simulator, SimulatorConfig, SimulatorProcess

from .helpers import KEYS, cli, read_out, write_requests

KEY = KEYS["GEMINI_API_KEY"]
MODEL = "gemini-2.5-flash"
SCHEMA = {
    "type": "object",
    "properties": {"label": {"type": "string", "enum": ["a", "b"]}, "score": {"type": "integer"}},
    "required": ["label", "score"],
}


def client(url: str, **kw: object) -> GeminiClient:
    return GeminiClient(base_url=url, model=MODEL, api_key=KEY, **kw)  # type: ignore[arg-type]


# -- the request and the reply ------------------------------------------------------------------


def test_a_request_becomes_contents_system_instruction_and_generation_config() -> None:
    c = GeminiClient(api_key=KEY, model="models/gemini-2.5-pro")
    request = CompletionRequest(
        prompt="And now?",
        system="Be brief.",
        messages=[
            {"role": "system", "content": "Answer in English."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": [{"type": "text", "text": "Hello"}]},
        ],
        temperature=0.2,
        max_tokens=50,
        schema=SCHEMA,
        extra={"generationConfig": {"topP": 0.9}, "safetySettings": []},
    )
    assert c.path_for(request) == "/v1beta/models/gemini-2.5-pro:generateContent"
    body = c.body_for(request)
    assert body["contents"] == [
        {"role": "user", "parts": [{"text": "Hi"}]},
        {"role": "model", "parts": [{"text": "Hello"}]},
        {"role": "user", "parts": [{"text": "And now?"}]},
    ]
    assert body["systemInstruction"] == {"parts": [{"text": "Be brief.\n\nAnswer in English."}]}
    assert body["generationConfig"] == {
        "temperature": 0.2,
        "maxOutputTokens": 50,
        "responseMimeType": "application/json",
        "responseJsonSchema": SCHEMA,
        "topP": 0.9,
    }
    assert body["safetySettings"] == []
    # The key goes in a header, never in the URL (which servers and proxies log).
    assert KEY not in c.path_for(request) and KEY not in c.base_url
    tuned = CompletionRequest(prompt="x", model="tunedModels/my-model-1")
    assert c.path_for(tuned) == "/v1beta/tunedModels/my-model-1:generateContent"
    with pytest.raises(UnsupportedRequestError, match="model"):
        GeminiClient(api_key=KEY).path_for(CompletionRequest(prompt="x"))
    with pytest.raises(UnsupportedRequestError, match="models/NAME"):
        c.path_for(CompletionRequest(prompt="x", model="publishers/google/models/x"))


async def test_realtime_answer_maps_text_usage_model_and_id() -> None:
    async with Simulator(SimulatorConfig(api_key=KEY)) as sim, client(sim.url) as c:
        resp = await c.complete(CompletionRequest(prompt="Summarise this", max_tokens=30))
        assert resp.content and resp.finish_reason == "STOP" and resp.refusal is None
        assert resp.model == MODEL and resp.request_id
        assert resp.usage.prompt_tokens > 0 and resp.usage.completion_tokens > 0
        assert resp.raw["usageMetadata"]["promptTokenCount"] == resp.usage.prompt_tokens
        embedded = await c.complete(CompletionRequest(prompt="vector me", endpoint="embeddings"))
        assert len(embedded.raw["embedding"]["values"]) == 8
        several = CompletionRequest(endpoint="embeddings", extra={"input": ["a", "b", "c"]})
        assert c.path_for(several).endswith(":batchEmbedContents")
        vectors = (await c.complete(several)).raw["embeddings"]
        assert len(vectors) == 3 and vectors[0] != vectors[1]
        assert sim.stats()["by_path"]["chat"] == 1


def test_usage_counts_cached_and_thinking_tokens_and_refusals_are_read() -> None:
    from llmbatch.clients.gemini import parse_reply

    body = {
        "candidates": [
            {
                "content": {
                    "parts": [{"text": "thinking...", "thought": True}, {"text": "answer"}],
                    "role": "model",
                },
                "finishReason": "MAX_TOKENS",
            }
        ],
        "usageMetadata": {
            "promptTokenCount": 100,
            "cachedContentTokenCount": 60,
            "candidatesTokenCount": 10,
            "thoughtsTokenCount": 30,
        },
    }
    resp = parse_reply(CompletionRequest(), 200, body)
    assert resp.content == "answer"  # the thought summary is not the answer
    assert (resp.usage.prompt_tokens, resp.usage.cached_tokens) == (100, 60)
    assert resp.usage.completion_tokens == 40  # thinking is billed as output
    blocked = parse_reply(CompletionRequest(), 200, {"promptFeedback": {"blockReason": "SAFETY"}})
    assert blocked.refusal and "SAFETY" in blocked.refusal
    recited = {"candidates": [{"content": {"role": "model"}, "finishReason": "RECITATION"}]}
    assert parse_reply(CompletionRequest(), 200, recited).refusal


# -- errors ---------------------------------------------------------------------------------------


def test_google_error_bodies_map_onto_the_tree() -> None:
    def body(code: int, status: str, *details: dict[str, object]) -> dict[str, object]:
        return {"error": {"code": code, "message": "m", "status": status, "details": list(details)}}

    retry = {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "37.5s"}
    limited = error_for_status(429, {}, body(429, "RESOURCE_EXHAUSTED", retry))
    assert isinstance(limited, RateLimitError) and limited.retry_after == 37.5
    assert "RESOURCE_EXHAUSTED" in str(limited)
    # A header, where one is sent, wins; the body's delay is capped like a header's.
    assert error_for_status(429, {"retry-after": "2"}, body(429, "X", retry)).retry_after == 2  # type: ignore[attr-defined]
    assert google_retry_delay(body(429, "X", retry), cap=10) == 10
    assert google_retry_delay(body(429, "X", {"@type": "x/google.rpc.RetryInfo"})) is None
    unavailable = error_for_status(503, {}, body(503, "UNAVAILABLE"))
    assert isinstance(unavailable, ServerError) and unavailable.status_code == 503
    assert type(error_for_status(500, {}, body(500, "INTERNAL"))) is ServerError
    assert type(error_for_status(400, {}, body(400, "INVALID_ARGUMENT"))) is BadRequestError
    assert isinstance(
        error_for_status(403, {}, body(403, "PERMISSION_DENIED")), AuthenticationError
    )
    key = {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID"}
    assert isinstance(
        error_for_status(400, {}, body(400, "INVALID_ARGUMENT", key)), AuthenticationError
    )


async def test_each_server_error_arrives_as_google_shapes_it_and_maps_once() -> None:
    async with Simulator(SimulatorConfig(api_key=KEY, rpm=1, limit_style="anthropic")) as sim:
        async with client(sim.url) as c:
            first = await c.complete(CompletionRequest(prompt="first"))
            assert first.rate_limit is None  # Gemini sends no rate-limit headers
            with pytest.raises(RateLimitError) as limited:
                await c.complete(CompletionRequest(prompt="second"))
            # No Retry-After header: the wait came from the body's RetryInfo.
            assert limited.value.retry_after is not None and limited.value.retry_after > 0
            assert "RESOURCE_EXHAUSTED" in str(limited.value)
            details = limited.value.body["error"]["details"]  # type: ignore[index]
            assert any(d["@type"].endswith("RetryInfo") for d in details)
        async with GeminiClient(base_url=sim.url, model=MODEL, api_key="wrong") as bad:
            with pytest.raises(AuthenticationError, match="API key not valid"):
                await bad.complete(CompletionRequest(prompt="x"))
        async with client(sim.url) as c:
            with pytest.raises(BadRequestError, match="INVALID_ARGUMENT"):
                await c.complete(CompletionRequest(prompt="x", max_tokens=-1))
    async with Simulator(SimulatorConfig(fail_rate=1.0)) as sim, client(sim.url) as c:
        with pytest.raises(ServerError, match="INTERNAL") as failed:
            await c.complete(CompletionRequest(prompt="x"))
        assert failed.value.status_code == 500
    async with Simulator(SimulatorConfig(overload_rate=1.0)) as sim, client(sim.url) as c:
        with pytest.raises(ServerError, match="UNAVAILABLE") as overloaded:
            await c.complete(CompletionRequest(prompt="x"))
        assert overloaded.value.status_code == 503


async def test_the_pace_is_learned_from_resource_exhausted_refusals(
    start_sim: Callable[..., SimulatorProcess],
) -> None:
    rpm, n = 1200, 160
    sim = start_sim("--latency-ms", "20", "--rpm", str(rpm), "--seed", "3")
    requests = [BatchRequest(str(i), CompletionRequest(prompt=f"q {i}")) for i in range(n)]
    async with client(sim.url) as c:
        processor = BatchProcessor(c, BatchProcessorConfig(max_concurrency=16))
        results = await processor.aprocess_batch(requests, timeout=120)
    assert [r.error for r in results if not r.ok] == []
    stats = sim.stats()
    assert stats["by_status"].get("200") == n
    assert stats["over_limit"] <= 0.15 * n, stats["over_limit"]
    limiter = processor.engine.limiter
    assert isinstance(limiter, RateLimiter)
    learned = limiter.requests_per_minute
    assert learned is not None and 0.5 * rpm <= learned <= 1.3 * rpm, learned


# -- keys -----------------------------------------------------------------------------------------


def test_the_key_comes_from_gemini_api_key_else_google_api_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    monkeypatch.setenv("GOOGLE_API_KEY", "google-key-1234")
    built = ClientSpec(provider="gemini", model=MODEL).build()
    assert built.http._headers["x-goog-api-key"] == "google-key-1234"
    assert GeminiClient().http._headers["x-goog-api-key"] == "google-key-1234"
    monkeypatch.setenv("GEMINI_API_KEY", "gemini-key-1234")
    assert ClientSpec(provider="gemini").build().http._headers["x-goog-api-key"] == (
        "gemini-key-1234"
    )
    # An explicit variable is the only one read.
    monkeypatch.delenv("GEMINI_API_KEY")
    monkeypatch.setenv("MY_KEY", "mine-123456")
    spec = ClientSpec(provider="gemini", api_key_env="MY_KEY")
    assert spec.build().http._headers["x-goog-api-key"] == "mine-123456"
    assert "google-key-1234" not in repr(built) and "x-goog-api-key" not in repr(built)


# -- whole runs: library and CLI ------------------------------------------------------------------


async def test_a_run_with_a_schema_parses_and_a_refusal_and_truncation_get_their_codes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLMB_TEST_GEMINI_KEY", KEY)
    async with Simulator(SimulatorConfig(api_key=KEY)) as sim:
        ok = await _run(sim.url, tmp_path / "ok.jsonl", schema=SCHEMA)
    assert ok.exit_code == 0 and ok.stats.success_count == 3
    for line in read_out(tmp_path / "ok.jsonl"):
        assert set(line["llmbatch"]["parsed"]) == {"label", "score"}
        assert line["llmbatch"]["cost"] > 0  # genai-prices knows gemini-2.5-flash
    async with Simulator(SimulatorConfig(api_key=KEY, refusal_rate=1.0)) as sim:
        refused = await _run(sim.url, tmp_path / "refused.jsonl", schema=SCHEMA)
    assert refused.exit_code == 1
    assert {line["error"]["code"] for line in read_out(tmp_path / "refused.jsonl")} == {"refused"}
    async with Simulator(SimulatorConfig(api_key=KEY, truncate_rate=1.0)) as sim:
        cut = await _run(sim.url, tmp_path / "cut.jsonl", schema=SCHEMA)
    assert cut.exit_code == 1
    assert {line["error"]["code"] for line in read_out(tmp_path / "cut.jsonl")} == {"truncated"}


async def _run(url: str, out: Path, **kw: object):  # type: ignore[no-untyped-def]
    import asyncio

    config = RunConfig(
        requests=[BatchRequest(f"r{i}", CompletionRequest(prompt=f"item {i}")) for i in range(3)],
        output=str(out),
        provider="gemini",
        base_url=url,
        model=MODEL,
        api_key_env="LLMB_TEST_GEMINI_KEY",
        max_invalid_retries=0,
        **kw,  # type: ignore[arg-type]
    )
    # `run` is synchronous; the simulator lives in this loop, so the run gets a thread.
    return await asyncio.to_thread(run_pipeline, config)


def test_cli_run_with_provider_gemini(
    start_sim: Callable[..., SimulatorProcess], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SIM_KEY", KEY)
    sim = start_sim("--api-key-env", "SIM_KEY")  # requires the key
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_requests(inp, [f"q{i}" for i in range(5)])
    args = ["run", str(inp), "-o", str(out), "--provider", "gemini", "--base-url", sim.url]
    proc = cli(*args, "--model", MODEL, "--no-progress")  # GEMINI_API_KEY: the fake key
    assert proc.returncode == 0, proc.stderr
    lines = read_out(out)
    assert sorted(line["custom_id"] for line in lines) == [f"q{i}" for i in range(5)]
    for line in lines:
        assert line["response"]["body"]["candidates"][0]["finishReason"] == "STOP"
        assert line["llmbatch"]["cost"] > 0
    assert KEY not in proc.stderr + proc.stdout + out.read_text()


# -- the official SDK against the simulator -----------------------------------------------------


def test_the_google_genai_sdk_drives_the_simulators_realtime_routes(
    start_sim: Callable[..., SimulatorProcess],
) -> None:
    genai = pytest.importorskip("google.genai")
    from google.genai import types

    sim = start_sim()
    options = types.HttpOptions(base_url=sim.url, api_version="v1beta")
    sdk = genai.Client(api_key=KEY, http_options=options)
    reply = sdk.models.generate_content(
        model=MODEL,
        contents="Why is the sky blue?",
        config=types.GenerateContentConfig(system_instruction="Be brief.", max_output_tokens=40),
    )
    assert reply.text and reply.candidates[0].finish_reason == types.FinishReason.STOP
    usage = reply.usage_metadata
    assert usage.prompt_token_count > 0 and usage.candidates_token_count > 0
    structured = sdk.models.generate_content(
        model=MODEL,
        contents="Label this.",
        config=types.GenerateContentConfig(
            response_mime_type="application/json", response_json_schema=SCHEMA
        ),
    )
    assert json.loads(structured.text)["label"] in ("a", "b")
    embedded = sdk.models.embed_content(model="text-embedding-004", contents=["a", "b"])
    assert [len(e.values) for e in embedded.embeddings] == [8, 8]
    # The SDK's default API version (v1) is served too.
    default = genai.Client(api_key=KEY, http_options=types.HttpOptions(base_url=sim.url))
    assert default.models.generate_content(model=MODEL, contents="Hi").text
    with pytest.raises(genai.errors.ClientError) as refused:
        sdk.models.generate_content(
            model=MODEL, contents="Hi", config=types.GenerateContentConfig(max_output_tokens=-1)
        )
    assert refused.value.code == 400 and refused.value.status == "INVALID_ARGUMENT"


def test_cli_on_ray_with_provider_gemini(
    start_sim: Callable[..., SimulatorProcess], tmp_path: Path
) -> None:
    pytest.importorskip("ray")
    sim = SimulatorProcess("--rpm", "3000", "--api-key-env", "SIM_KEY", env={"SIM_KEY": KEY})
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    ids = [f"q{i}" for i in range(60)]
    write_requests(inp, ids)
    args = ["run", str(inp), "-o", str(out), "--provider", "gemini", "--base-url", sim.url]
    args += ["--model", MODEL, "--ray", "--workers", "2", "--no-progress"]
    # Only GOOGLE_API_KEY, the SDK's other variable: the workers read it too.
    proc = cli(*args, keys=False, env={"GOOGLE_API_KEY": KEY}, timeout=300)
    try:
        assert proc.returncode == 0, proc.stderr[-2000:]
        lines = read_out(out)
        assert sorted(line["custom_id"] for line in lines) == sorted(ids)
        assert all(line["response"]["body"]["candidates"] for line in lines)
        assert sim.stats()["by_status"].get("400") is None  # the key was accepted everywhere
    finally:
        sim.close()


def test_gemini_answers_are_priced_from_genai_prices_with_cache_and_batch_discounts() -> None:
    from llmbatch.pipeline.costs import pricer_of
    from llmbatch.types import CompletionResponse, Usage

    notices: list[str] = []
    pricer = pricer_of(RunConfig(output="o.jsonl", provider="gemini", model=MODEL), notices.append)

    def cost(usage: Usage, *, batch: bool = False) -> float | None:
        reply = CompletionResponse("x", model=MODEL, usage=usage, batch_api=batch)
        return pricer.cost(reply)

    # gemini-2.5-flash: $0.30 in, $0.03 cached in, $2.50 out per 1M tokens.
    assert cost(Usage(1_000_000, 0)) == pytest.approx(0.30)
    assert cost(Usage(1_000_000, 0, cached_tokens=1_000_000)) == pytest.approx(0.03)
    assert cost(Usage(1_000_000, 1_000_000), batch=True) == pytest.approx((0.30 + 2.50) / 2)
    assert notices == []


def test_an_openai_batch_line_runs_on_gemini_and_what_cannot_go_is_refused() -> None:
    from llmbatch.io.formats import InputItem, parse_line

    c = GeminiClient(api_key=KEY, model=MODEL)
    line = {
        "custom_id": "a",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {
            "model": MODEL,
            "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": 9,
            "top_p": 0.5,
            "stop": "END",
            "seed": 7,
        },
    }
    item = parse_line(json.dumps(line).encode(), 1)
    assert isinstance(item, InputItem)
    config = c.body_for(item.request)["generationConfig"]
    assert config == {"maxOutputTokens": 9, "topP": 0.5, "stopSequences": ["END"], "seed": 7}
    image = CompletionRequest(
        messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]
    )
    with pytest.raises(UnsupportedRequestError, match="image_url"):
        c.body_for(image)


async def test_a_key_echoed_by_the_server_is_masked_in_the_error() -> None:
    async with (
        Simulator(SimulatorConfig(echo_credentials=0)) as sim,
        GeminiClient(base_url=sim.url, model=MODEL, api_key=KEY + " \n") as c,
    ):
        with pytest.raises(AuthenticationError) as info:
            await c.complete(CompletionRequest(prompt="hi"))
    err = info.value
    text = f"{err} {err!r} {json.dumps(err.body)}"
    assert "invalid credentials" in text  # the echo arrived...
    assert KEY not in text and KEY[-8:] not in text  # ...masked
