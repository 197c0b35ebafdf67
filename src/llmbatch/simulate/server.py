"""An OpenAI- and Anthropic-compatible server that behaves like a busy provider.

    async with Simulator(SimulatorConfig(latency_ms=50, rpm=1200, fail_rate=0.1)) as sim:
        client = OpenAIClient(base_url=sim.url + "/v1", api_key="sk-test")
        ...
        sim.stats()["received"]

    $ llmbatch simulate --port 8080 --latency-ms 200 --rpm 600 --limit-style retry-after

Routes: POST /v1/chat/completions, /v1/responses, /v1/completions, /v1/embeddings (OpenAI's
wire formats), /v1/messages (Anthropic's); GET /v1/models; GET /stats and POST /stats/reset
(counters); GET /config. Replies are derived from the prompt (the same prompt always gets the same
text; valid JSON in JSON mode) with usage of about one token per four characters.
The batch APIs of both providers (OpenAI /v1/files + /v1/batches, Anthropic
/v1/messages/batches) are in `batch_routes.py`, over the store of `batches.py`; Gemini's
routes (realtime, Batch and File API) in `gemini.py`, `gemini_batches.py` and
`gemini_files.py`.

This module routes and sequences; each concern lives in its own module: the wire formats
in `dialects.py`, schema-shaped replies and their faults in `structured.py`, the rate-limit
buckets in `limits.py`, what a refusal says in `styles.py`,
the FIFO model slots of the `queue` style in `llmbatch.fifo`, downtime in `outage.py`, the
counters in `counters.py`. A request goes: outage check, key, body, `overload_rate`
(answered at once, no limit charged), limits (refused with `over_limit_status`) or a slot
in the queue, then hang / reset / latency / 500 / malformed faults, then the reply.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Any

import orjson
from aiohttp import web

from ..fifo import FifoSemaphore
from .batch_routes import BatchRoutes
from .batches import BatchStore
from .config import SimulatorConfig
from .counters import Counters
from .dialects import ANTHROPIC, OPENAI, Dialect, max_output, reply_text, token_count
from .gemini import GeminiRoutes
from .limits import Charge, Limits
from .outage import Outage
from .prompt_cache import PromptCaches
from .structured import Shaper, embeddings_reply, unsupported
from .styles import STYLES
from .tiers import Tiers

__all__ = ["Simulator", "SimulatorConfig"]

# path, kind (as counted in `by_path`), wire format
_ROUTES = (
    ("/v1/chat/completions", "chat", OPENAI),
    ("/v1/responses", "responses", OPENAI),
    ("/v1/completions", "completions", OPENAI),
    ("/v1/embeddings", "embeddings", OPENAI),
    ("/v1/messages", "messages", ANTHROPIC),
)
# How many times to try binding the port again after an outage (every 0.1 s).
_REBIND_ATTEMPTS = 100

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _asks_json_schema(body: dict[str, Any]) -> bool:
    fmt = body.get("response_format")
    return isinstance(fmt, dict) and fmt.get("type") == "json_schema"


def _abort(request: web.Request) -> None:
    transport = request.transport
    if transport is not None:
        transport.abort()


def _gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


class Simulator:
    """Run the simulator inside the current event loop (`async with`) on a free port."""

    def __init__(self, config: SimulatorConfig | None = None) -> None:
        self.config = c = config or SimulatorConfig()
        self._rng = random.Random(c.seed)
        self._counters = Counters()
        self._tiers = Tiers(
            c.flex_refusal_rate, c.flex_refusal_status, c.flex_latency_factor, self._rng,
            self._counters,
        )  # fmt: skip
        self._limits = Limits.from_config(c, time.monotonic)
        self._style = STYLES[c.limit_style]
        self._slots = FifoSemaphore(c.slots) if self._style.queue else None
        self._outage = (
            Outage(c.outage_at, c.outage_for, self.take_down, self.bring_up)
            if c.outage_at is not None
            else None
        )
        self._shaper = Shaper(
            invalid_rate=c.invalid_rate,
            refusal_rate=c.refusal_rate,
            truncate_rate=c.truncate_rate,
            seed=c.seed,
        )
        self._caches = PromptCaches(
            machines=c.cache_machines,
            machine_tokens=c.cache_machine_tokens,
            spill_rpm=c.cache_spill_rpm,
            ttl=c.cache_ttl,
            rng=random.Random(c.seed),
        )
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self.port = c.port
        self.batches = BatchStore(c, self._counters, self.answer_line)
        self.app = self._make_app()

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.port}"

    def stats(self) -> dict[str, Any]:
        return (
            self._counters.as_dict()
            | self._shaper.counts()
            | self._caches.counts()
            | {
                "queue_depth": self._slots.waiting if self._slots is not None else 0,
                "down": self._outage is not None and self._outage.down,
            }
        )

    def _make_app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        for path, kind, dialect in _ROUTES:
            app.router.add_post(path, self._route(kind, dialect))
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/stats", self._get_stats)
        app.router.add_post("/stats/reset", self._reset_stats)
        app.router.add_get("/config", self._get_config)
        BatchRoutes(self.batches, self.config).add_to(app)
        GeminiRoutes(self, self.batches).add_to(app)
        return app

    def _route(self, kind: str, dialect: Dialect) -> Handler:
        async def handler(request: web.Request) -> web.StreamResponse:
            return await self._handle(request, kind, dialect)

        return handler

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        await self._open_site()
        self.port = int(self._runner.addresses[0][1])

    async def _open_site(self) -> None:
        assert self._runner is not None
        site = web.TCPSite(self._runner, self.config.host, self.port, backlog=2048)
        await site.start()
        self._site = site

    async def stop(self) -> None:
        if self._outage is not None:
            await self._outage.aclose()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
            self._site = None

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def take_down(self) -> None:
        """Go down as a dead process does: refuse new connections, cut the open ones."""
        self._counters.outages += 1
        if self._site is not None:
            await self._site.stop()  # closes the listening socket: connection refused
            self._site = None
        server = self._runner.server if self._runner is not None else None
        for handler in server.connections if server is not None else ():
            transport = handler.transport
            if transport is not None and not transport.is_closing():
                transport.abort()
                self._counters.outage_aborted += 1

    async def bring_up(self) -> None:
        """Listen again on the same port (retrying briefly if the port is still held)."""
        if self._runner is None:
            return
        for attempt in range(_REBIND_ATTEMPTS):
            try:
                await self._open_site()
                return
            except OSError:
                if attempt == _REBIND_ATTEMPTS - 1:
                    raise
                await asyncio.sleep(0.1)

    # -- plumbing -----------------------------------------------------------------------

    async def _get_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats(), dumps=lambda o: orjson.dumps(o).decode())

    async def _reset_stats(self, request: web.Request) -> web.Response:
        self._counters.reset()
        self._shaper.reset()
        self._caches.reset_counts()
        if self._outage is not None:
            self._outage.rearm()
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
        return web.Response(
            status=status,
            body=orjson.dumps(body),
            content_type="application/json",
            headers=headers,
        )

    # -- a request ----------------------------------------------------------------------

    async def _handle(
        self, request: web.Request, kind: str, dialect: Dialect
    ) -> web.StreamResponse:
        st = self._counters
        if self._outage is not None:
            if self._outage.down:
                # A connection that slipped in as the server went down: cut it too.
                st.outage_aborted += 1
                _abort(request)
                return web.Response(status=503)  # never written: the transport is gone
            self._outage.on_request()
        st.received += 1
        if st.first_received is None:
            st.first_received = time.time()
        st.by_path[kind] = st.by_path.get(kind, 0) + 1
        st.in_flight += 1
        st.max_in_flight = max(st.max_in_flight, st.in_flight)
        try:
            response = await self._serve(request, kind, dialect)
            # Count what the client gets: an answer to a cut connection never arrives.
            if _gone(request):
                st.undelivered += 1
            else:
                st.answered(response.status)
            return response
        finally:
            st.in_flight -= 1
            st.last_answered = time.time()

    async def _serve(self, request: web.Request, kind: str, dialect: Dialect) -> web.StreamResponse:
        c = self.config
        if c.echo_credentials is not None:
            sent = (
                request.headers.get("Authorization")
                or request.headers.get("x-api-key")
                or request.headers.get("x-goog-api-key", "")
            )
            echoed = f"invalid credentials: {(sent or '')[c.echo_credentials :]}"
            return self._respond(401, dialect.error("authentication_error", echoed))
        if c.api_key is not None and dialect.api_key(request.headers) != c.api_key:
            return self._respond(*dialect.unauthorized())
        try:
            body = orjson.loads(await request.read())
            if not isinstance(body, dict):
                raise ValueError("body is not an object")
        except ValueError as exc:
            return self._respond(*dialect.bad_request(f"bad JSON: {exc}"))
        try:
            body = dialect.request_body(kind, body)
        except ValueError as exc:
            return self._respond(*dialect.bad_request(str(exc)))
        problem = dialect.invalid(body) or unsupported(body) or self._caches.invalid(dialect, body)
        if problem is not None:
            return self._respond(*dialect.bad_request(problem))
        if c.reject_json_schema and _asks_json_schema(body):
            # llama.cpp's answer, a 500 for what is a request it cannot serve.
            message = "Input should be 'text' or 'json_object'"
            return self._respond(500, dialect.error("server_error", message))
        prompt = dialect.prompt(kind, body)
        max_tokens = max_output(kind, body)
        prompt_tokens = token_count(prompt)
        if (refused := self._tiers.refusal(body)) is not None:
            return self._respond(*refused)  # flex capacity is short: before any limit
        if c.overload_rate and self._rng.random() < c.overload_rate:
            self._counters.overloaded += 1
            return self._respond(*dialect.overloaded())
        if self._limits:
            wait = self._limits.admit(Charge(prompt_tokens, max_tokens or 0))
            if wait > 0:
                self._counters.over_limit += 1
                status = c.over_limit_status
                headers = self._style.refusal_headers(dialect, self._limits.states(), wait)
                return self._respond(status, dialect.refusal(status), headers)
        if c.prompt_cache:
            self._caches.arrive(kind, dialect, body)  # hits and misses as of now
        if self._slots is None:
            return await self._generate(request, kind, dialect, body, prompt, max_tokens)
        return await self._queued(request, kind, dialect, body, prompt, max_tokens)

    async def _queued(
        self,
        request: web.Request,
        kind: str,
        dialect: Dialect,
        body: dict[str, Any],
        prompt: str,
        max_tokens: int | None,
    ) -> web.StreamResponse:
        slots = self._slots
        assert slots is not None
        st = self._counters
        if slots.free == 0 or slots.waiting:
            st.max_queue_depth = max(st.max_queue_depth, slots.waiting + 1)
        await slots.acquire()
        try:
            if _gone(request):
                # The client gave up while queued: skip it rather than generate for nobody,
                # as vLLM does (llama.cpp may still generate; we keep the simpler server).
                st.abandoned += 1
                return web.Response(status=499)  # never written: the client is gone
            return await self._generate(request, kind, dialect, body, prompt, max_tokens)
        finally:
            slots.release()

    async def _generate(
        self,
        request: web.Request,
        kind: str,
        dialect: Dialect,
        body: dict[str, Any],
        prompt: str,
        max_tokens: int | None,
    ) -> web.StreamResponse:
        c, rng, st = self.config, self._rng, self._counters
        if c.hang_rate and rng.random() < c.hang_rate:
            st.hangs += 1
            await asyncio.sleep(c.hang_seconds)
            return self._respond(*dialect.gateway_timeout())
        if c.reset_rate and rng.random() < c.reset_rate:
            st.resets += 1
            _abort(request)
            # Nothing can be written any more; aiohttp drops this reply silently.
            return web.Response(status=200)
        delay = c.latency_ms
        if c.latency_jitter_ms:
            delay += rng.uniform(-c.latency_jitter_ms, c.latency_jitter_ms)
        delay *= self._tiers.latency_factor(body)
        if delay > 0:
            await asyncio.sleep(delay / 1000.0)
        if c.fail_rate and rng.random() < c.fail_rate:
            return self._respond(*dialect.server_failure(rng))
        if c.malformed_rate and rng.random() < c.malformed_rate:
            st.malformed += 1
            return web.Response(status=200, body=b'{"id": "cmpl-broken", "choices": [{"mess')
        return self._answer(kind, dialect, body, prompt, max_tokens)

    def answer_line(
        self, kind: str, dialect: Dialect, body: dict[str, Any]
    ) -> tuple[int, bytes, str]:
        """A batch line answered as its realtime route would (same body, same usage), but
        outside the realtime limits, latency and faults: batch pools are separate."""
        prompt = dialect.prompt(kind, body)
        response = self._answer(kind, dialect, body, prompt, max_output(kind, body), False)
        assert isinstance(response.body, bytes)
        return response.status, response.body, response.headers[dialect.request_id_header]

    def _answer(
        self,
        kind: str,
        dialect: Dialect,
        body: dict[str, Any],
        prompt: str,
        max_tokens: int | None,
        settle: bool = True,
    ) -> web.Response:
        st = self._counters
        prompt_tokens = token_count(prompt)
        # Schemas, forced tools and reply faults (`structured.py`); None: the plain reply.
        shaped = (
            self._shaper.shape(dialect, body, prompt, max_tokens)
            if kind in ("chat", "responses", "messages")
            else None
        )
        if kind == "embeddings":
            text, output_tokens = prompt, 0
        elif shaped is not None:
            text = shaped.text
            output_tokens = token_count(text)
        else:
            text = reply_text(prompt, max_tokens, dialect.json_mode(body))
            output_tokens = token_count(text)
        st.prompt_tokens += prompt_tokens
        st.completion_tokens += output_tokens
        if settle:  # a batch line was never charged to the realtime limits
            self._limits.settle_output(max_tokens or 0, output_tokens)
        headers = self._style.success_headers(dialect, self._limits.states())
        rid = hashlib.blake2b(f"{prompt}{st.received}".encode(), digest_size=8).hexdigest()
        headers[dialect.request_id_header] = "req_" + rid
        model = str(body.get("model") or self.config.model)
        if shaped is not None:
            payload = shaped.render(dialect, model, rid, prompt_tokens, output_tokens, body, kind)
        elif kind == "embeddings" and isinstance(body.get("input"), list):
            payload = embeddings_reply(model, body["input"], prompt_tokens)
        else:
            payload = dialect.reply(kind, model, rid, text, prompt_tokens, output_tokens, body)
        if (tier := self._tiers.served(body)) is not None and isinstance(payload, dict):
            payload["service_tier"] = tier
        if self.config.prompt_cache:
            self._caches.settle(kind, dialect, body, payload)
        return self._respond(200, payload, headers)
