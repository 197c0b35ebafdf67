"""An OpenAI- and Anthropic-compatible server that behaves like a busy provider.

    async with Simulator(SimulatorConfig(latency_ms=50, rpm=1200, fail_rate=0.1)) as sim:
        client = OpenAIClient(base_url=sim.url + "/v1", api_key="sk-test")
        ...
        sim.stats()["received"]

    $ llmbatch simulate --port 8080 --latency-ms 200 --rpm 600 --fail-rate 0.05

Routes: POST /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/messages (Anthropic);
GET /v1/models; GET /stats and POST /stats/reset (counters). Replies are derived from the
prompt (the same prompt always gets the same text; valid JSON in JSON mode) with usage of
about one token per four characters. Limits are continuous token buckets holding one second's
worth, as providers enforce them ("60,000 rpm" is policed as 1,000 per second); a request over
the limit gets 429 with `retry-after`, `retry-after-ms` and `x-ratelimit-*` headers (Anthropic's
`anthropic-ratelimit-*` on /v1/messages). Faults, each with its own probability: 500/529
errors, connection resets, hangs (no answer for `hang_seconds`) and malformed bodies.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import random
import time
from dataclasses import asdict, dataclass
from typing import Any

import orjson
from aiohttp import web

__all__ = ["Simulator", "SimulatorConfig"]

_WORDS = tuple(
    "module function returns data value parser request client server batch result error "
    "config cache token limit retry stream file summary handler engine worker queue state "
    "records index schema input output process metric report user session graph node".split()
)


@dataclass(slots=True)
class SimulatorConfig:
    host: str = "127.0.0.1"
    port: int = 0
    latency_ms: float = 0.0
    latency_jitter_ms: float = 0.0
    rpm: int | None = None
    tpm: int | None = None
    fail_rate: float = 0.0
    reset_rate: float = 0.0
    hang_rate: float = 0.0
    malformed_rate: float = 0.0
    seed: int | None = None
    api_key: str | None = None  # when set, requests must carry it
    hang_seconds: float = 120.0
    send_rate_limit_headers: bool = True
    model: str = "sim-1"


class _Bucket:
    """A continuously refilled bucket holding at most one second's worth of a per-minute limit."""

    def __init__(self, per_minute: int, clock: Any) -> None:
        self.limit = per_minute
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate)
        self.level = self.capacity
        self.clock = clock
        self.stamp = clock()

    def _refill(self) -> None:
        now = self.clock()
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now

    def take(self, amount: float) -> float:
        """Take `amount` if available and return 0, else return seconds until it would be."""
        self._refill()
        if amount <= self.level:
            self.level -= amount
            return 0.0
        return (min(amount, self.capacity) - self.level) / self.rate

    def reset_seconds(self) -> float:
        return (self.capacity - self.level) / self.rate


def _fmt_reset(seconds: float) -> str:
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    return f"{seconds:.3f}s"


class _Stats:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.received = 0
        self.by_status: dict[str, int] = {}
        self.by_path: dict[str, int] = {}
        self.in_flight = 0
        self.max_in_flight = 0
        self.resets = 0
        self.hangs = 0
        self.malformed = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.first_received: float | None = None  # wall clock, for measuring makespans
        self.last_answered: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "received": self.received,
            "by_status": dict(self.by_status),
            "by_path": dict(self.by_path),
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "resets": self.resets,
            "hangs": self.hangs,
            "malformed": self.malformed,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "rate_limited": self.by_status.get("429", 0),
            "first_received": self.first_received,
            "last_answered": self.last_answered,
        }


def _tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / 4))


def _reply_text(prompt: str, max_tokens: int | None, json_mode: bool) -> str:
    digest = hashlib.blake2b(prompt.encode(), digest_size=16).digest()
    n = min(max_tokens or 24, 24)
    words = [_WORDS[digest[i % 16] % len(_WORDS)] for i in range(max(3, n // 2))]
    text = " ".join(words)
    if json_mode:
        return orjson.dumps(
            {"summary": text, "label": words[0], "confidence": round(digest[0] / 255, 3)}
        ).decode()
    return text.capitalize() + "."


def _chat_prompt(body: dict[str, Any]) -> str:
    parts: list[str] = []
    system = body.get("system")
    if isinstance(system, str):
        parts.append(system)
    for m in body.get("messages") or ():
        content = m.get("content") if isinstance(m, dict) else None
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return "\n".join(parts)


class Simulator:
    """Run the simulator inside the current event loop (`async with`) on a free port."""

    def __init__(self, config: SimulatorConfig | None = None) -> None:
        self.config = config or SimulatorConfig()
        self._rng = random.Random(self.config.seed)
        self._stats = _Stats()
        self._clock = time.monotonic
        c = self.config
        self._requests = _Bucket(c.rpm, self._clock) if c.rpm else None
        self._tokens = _Bucket(c.tpm, self._clock) if c.tpm else None
        self._runner: web.AppRunner | None = None
        self.port = c.port
        self.app = self._make_app()

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.port}"

    def stats(self) -> dict[str, Any]:
        return self._stats.as_dict()

    def _make_app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_post("/v1/messages", self._messages)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/stats", self._get_stats)
        app.router.add_post("/stats/reset", self._reset_stats)
        app.router.add_get("/config", self._get_config)
        return app

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.host, self.config.port, backlog=2048)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- plumbing -----------------------------------------------------------------------

    async def _get_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats(), dumps=lambda o: orjson.dumps(o).decode())

    async def _reset_stats(self, request: web.Request) -> web.Response:
        self._stats.reset()
        return web.json_response({"ok": True})

    async def _get_config(self, request: web.Request) -> web.Response:
        return web.json_response(asdict(self.config) | {"api_key": None})

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"object": "list", "data": [{"id": self.config.model, "object": "model"}]}
        )

    def _respond(
        self, status: int, body: Any, headers: dict[str, str] | None = None
    ) -> web.Response:
        key = str(status)
        self._stats.by_status[key] = self._stats.by_status.get(key, 0) + 1
        return web.Response(
            status=status,
            body=orjson.dumps(body),
            content_type="application/json",
            headers=headers,
        )

    def _limit_headers(self, anthropic: bool) -> dict[str, str]:
        if not self.config.send_rate_limit_headers:
            return {}
        h: dict[str, str] = {}
        for name, bucket in (("requests", self._requests), ("tokens", self._tokens)):
            if bucket is None:
                continue
            bucket._refill()
            remaining = str(max(0, int(bucket.level)))
            if anthropic:
                reset = time.time() + bucket.reset_seconds()
                stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(reset)) + "Z"
                h[f"anthropic-ratelimit-{name}-limit"] = str(bucket.limit)
                h[f"anthropic-ratelimit-{name}-remaining"] = remaining
                h[f"anthropic-ratelimit-{name}-reset"] = stamp
            else:
                h[f"x-ratelimit-limit-{name}"] = str(bucket.limit)
                h[f"x-ratelimit-remaining-{name}"] = remaining
                h[f"x-ratelimit-reset-{name}"] = _fmt_reset(bucket.reset_seconds())
        return h

    def _error(self, anthropic: bool, status: int, kind: str, message: str) -> dict[str, Any]:
        if anthropic:
            return {"type": "error", "error": {"type": kind, "message": message}}
        return {"error": {"message": message, "type": kind, "param": None, "code": kind}}

    async def _handle(
        self, request: web.Request, kind: str, anthropic: bool = False
    ) -> web.StreamResponse:
        st = self._stats
        st.received += 1
        if st.first_received is None:
            st.first_received = time.time()
        st.by_path[kind] = st.by_path.get(kind, 0) + 1
        st.in_flight += 1
        st.max_in_flight = max(st.max_in_flight, st.in_flight)
        try:
            return await self._serve(request, kind, anthropic)
        finally:
            st.in_flight -= 1
            st.last_answered = time.time()

    async def _serve(self, request: web.Request, kind: str, anthropic: bool) -> web.StreamResponse:
        c = self.config
        if c.api_key is not None:
            sent = (
                request.headers.get("x-api-key")
                if anthropic
                else request.headers.get("Authorization", "").removeprefix("Bearer ")
            )
            if sent != c.api_key:
                kind_ = "authentication_error" if anthropic else "invalid_api_key"
                # Like real providers, never echo the key that was sent.
                return self._respond(401, self._error(anthropic, 401, kind_, "Invalid API key"))
        try:
            body = orjson.loads(await request.read())
            if not isinstance(body, dict):
                raise ValueError("body is not an object")
        except ValueError as exc:
            kind_ = "invalid_request_error"
            return self._respond(400, self._error(anthropic, 400, kind_, f"bad JSON: {exc}"))
        if anthropic and "max_tokens" not in body:
            return self._respond(
                400,
                self._error(anthropic, 400, "invalid_request_error", "max_tokens: Field required"),
            )
        if kind == "embeddings":
            raw_input = body.get("input", "")
            prompt = raw_input if isinstance(raw_input, str) else orjson.dumps(raw_input).decode()
        elif kind == "completions":
            prompt = str(body.get("prompt", ""))
        else:
            prompt = _chat_prompt(body)
        max_tokens = body.get("max_tokens")
        prompt_tokens = _tokens(prompt)
        if self._requests is not None or self._tokens is not None:
            wait = self._admit(prompt_tokens + int(max_tokens or 0))
            if wait > 0:
                headers = self._limit_headers(anthropic)
                headers["retry-after"] = str(max(1, math.ceil(wait)))
                headers["retry-after-ms"] = str(max(1, math.ceil(wait * 1000)))
                kind_ = "rate_limit_error" if anthropic else "rate_limit_exceeded"
                return self._respond(
                    429, self._error(anthropic, 429, kind_, "Rate limit reached"), headers
                )
        rng = self._rng
        if c.hang_rate and rng.random() < c.hang_rate:
            self._stats.hangs += 1
            await asyncio.sleep(c.hang_seconds)
            return self._respond(504, self._error(anthropic, 504, "timeout", "gateway timeout"))
        if c.reset_rate and rng.random() < c.reset_rate:
            self._stats.resets += 1
            transport = request.transport
            if transport is not None:
                transport.abort()
            # Nothing can be written any more; aiohttp drops this reply silently.
            return web.Response(status=200)
        delay = c.latency_ms
        if c.latency_jitter_ms:
            delay += rng.uniform(-c.latency_jitter_ms, c.latency_jitter_ms)
        if delay > 0:
            await asyncio.sleep(delay / 1000.0)
        if c.fail_rate and rng.random() < c.fail_rate:
            if anthropic and rng.random() < 0.5:
                body_ = self._error(True, 529, "overloaded_error", "Overloaded")
                return self._respond(529, body_)
            return self._respond(
                500, self._error(anthropic, 500, "server_error", "The server had an error")
            )
        if c.malformed_rate and rng.random() < c.malformed_rate:
            self._stats.malformed += 1
            key = str(200)
            self._stats.by_status[key] = self._stats.by_status.get(key, 0) + 1
            return web.Response(status=200, body=b'{"id": "cmpl-broken", "choices": [{"mess')
        return self._answer(kind, anthropic, body, prompt, prompt_tokens, max_tokens)

    def _admit(self, tokens: int) -> float:
        waits: list[float] = []
        if self._requests is not None:
            waits.append(self._requests.take(1))
        if self._tokens is not None:
            w = self._tokens.take(tokens)
            if w > 0 and self._requests is not None and waits[0] == 0:
                self._requests.level += 1  # give the request slot back: nothing was served
            waits.append(w)
        return max(waits)

    def _answer(
        self,
        kind: str,
        anthropic: bool,
        body: dict[str, Any],
        prompt: str,
        prompt_tokens: int,
        max_tokens: Any,
    ) -> web.Response:
        c = self.config
        model = str(body.get("model") or c.model)
        headers = self._limit_headers(anthropic)
        rid = (
            "req_"
            + hashlib.blake2b(f"{prompt}{self._stats.received}".encode(), digest_size=8).hexdigest()
        )
        headers["request-id" if anthropic else "x-request-id"] = rid
        if kind == "embeddings":
            digest = hashlib.blake2b(prompt.encode(), digest_size=8).digest()
            vector = [round(b / 255.0 - 0.5, 4) for b in digest]
            self._stats.prompt_tokens += prompt_tokens
            return self._respond(
                200,
                {
                    "object": "list",
                    "data": [{"object": "embedding", "index": 0, "embedding": vector}],
                    "model": model,
                    "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
                },
                headers,
            )
        rf = body.get("response_format")
        json_mode = isinstance(rf, dict) and rf.get("type") in ("json_object", "json_schema")
        json_mode = json_mode or (anthropic and "JSON" in str(body.get("system", "")))
        text = _reply_text(prompt, int(max_tokens) if max_tokens else None, json_mode)
        completion_tokens = _tokens(text)
        self._stats.prompt_tokens += prompt_tokens
        self._stats.completion_tokens += completion_tokens
        created = int(time.time())
        if anthropic:
            payload: dict[str, Any] = {
                "id": "msg_" + rid[4:],
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [{"type": "text", "text": text}],
                "stop_reason": "end_turn",
                "stop_sequence": None,
                "usage": {"input_tokens": prompt_tokens, "output_tokens": completion_tokens},
            }
        elif kind == "completions":
            payload = {
                "id": "cmpl-" + rid[4:],
                "object": "text_completion",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "text": text, "finish_reason": "stop"}],
                "usage": _usage(prompt_tokens, completion_tokens),
            }
        else:
            payload = {
                "id": "chatcmpl-" + rid[4:],
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": "stop",
                    }
                ],
                "usage": _usage(prompt_tokens, completion_tokens),
            }
        return self._respond(200, payload, headers)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, "chat")

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, "completions")

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, "embeddings")

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, "messages", anthropic=True)


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
