"""The simulator's Gemini routes: realtime `generateContent` / `embedContent`.

    GeminiRoutes(simulator, store).add_to(app)

    POST /v1beta/models/{model}:generateContent     a chat request in Gemini's shape
    POST /v1beta/models/{model}:embedContent        one embedding
    POST /v1beta/models/{model}:batchEmbedContents  several (google-genai's embed_content)

A request is served by the simulator's own chat logic (`Simulator._handle` with the `GEMINI`
dialect: the same limits, latency, faults, schemas, refusals and truncation as every route),
then its answer is rewritten into Gemini's shape (`gemini_wire`). Over a limit the answer is
Google's 429 RESOURCE_EXHAUSTED with the wait in a `RetryInfo` detail (the limit style decides
whether a wait is told at all, as it decides Retry-After on the other routes; Gemini itself
sends no header for it); other errors are `google.rpc.Status` bodies; a wrong key is a 400
API_KEY_INVALID, as Google answers. The batch routes (`:batchGenerateContent`, `/v1beta/
batches`) are in `gemini_batches.py`, the File API in `gemini_files.py`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from .gemini_batches import GeminiBatchRoutes
from .gemini_files import GeminiFiles
from .gemini_wire import GEMINI, from_chat_reply, google_error

if TYPE_CHECKING:
    from .batches import BatchStore
    from .server import Simulator

__all__ = ["GeminiRoutes", "gemini_answer"]

_VERBS = {
    "generateContent": "chat",
    "embedContent": "embeddings",
    "batchEmbedContents": "embeddings",  # what google-genai's embed_content calls
}
_DROPPED = ("retry-after", "retry-after-ms", "x-request-id")


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status, body=orjson.dumps(body), content_type="application/json", headers=headers
    )


def _wait(headers: Any) -> float | None:
    """The wait the limit style chose to tell, in seconds (from the headers it set)."""
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        raw = headers.get(name)
        if raw is not None:
            try:
                return math.ceil(float(raw) * scale * 1000) / 1000
            except ValueError:
                continue
    return None


def gemini_answer(
    kind: str, model: str, response: web.StreamResponse, *, many: bool = False
) -> web.StreamResponse:
    """`response` (the chat logic's answer) in Gemini's shape. A body that is not JSON (the
    `malformed` fault) or a response never written (a reset) is left as it is."""
    if not isinstance(response, web.Response) or not isinstance(response.body, bytes):
        return response
    try:
        body = orjson.loads(response.body)
    except orjson.JSONDecodeError:
        return response
    # Gemini sends no rate-limit headers, whatever the limit style sends on other routes.
    headers = {
        k: v
        for k, v in response.headers.items()
        if k.lower() not in _DROPPED and "ratelimit" not in k.lower()
    }
    headers.pop("Content-Type", None)
    headers.pop("Content-Length", None)
    status = response.status
    if status == 200:
        try:
            return _json(200, from_chat_reply(kind, body, model, many=many), headers)
        except (KeyError, IndexError, TypeError):
            return response
    error = body.get("error") if isinstance(body, dict) else None
    message = str(error.get("message")) if isinstance(error, dict) else "error"
    if status == 401:
        # Google answers a wrong key with a 400 naming the reason, not a 401. What an echoing
        # server (`echo_credentials`) says is kept, to test that clients mask it.
        if message == "Invalid API key":
            message = "API key not valid. Please pass a valid API key."
        return _json(400, google_error(400, message, reason="API_KEY_INVALID"), headers)
    if status == 429:
        message = "You exceeded your current quota, please check your plan and billing details."
    elif status == 503:
        message = "The model is overloaded. Please try again later."
    payload = google_error(status, message, retry_delay=_wait(response.headers))
    return _json(status, payload, headers)


class GeminiRoutes:
    """The Gemini routes of one `Simulator` (realtime here, batches in `gemini_batches`)."""

    def __init__(self, simulator: Simulator, store: BatchStore) -> None:
        self.sim = simulator
        self.files = GeminiFiles(store.config, store.counters)
        self.batches = GeminiBatchRoutes(simulator, store, self.files)

    def add_to(self, app: web.Application) -> None:
        # One route for every `models/{model}:{verb}`: a path segment holds both. v1 too:
        # google-genai 2.x and later default to it for realtime calls.
        app.router.add_post("/v1beta/models/{call}", self.call)
        app.router.add_post("/v1/models/{call}", self.call)
        app.router.add_post("/v1beta/tunedModels/{call}", self.call)
        self.files.add_to(app)
        self.batches.add_to(app)

    async def call(self, request: web.Request) -> web.StreamResponse:
        model, _, verb = request.match_info["call"].partition(":")
        if verb == "batchGenerateContent":
            return await self.batches.create(request, model)
        kind = _VERBS.get(verb)
        if kind is None:
            return _json(404, google_error(404, f"Method not found: {verb!r}."))
        response = await self.sim._handle(request, kind, GEMINI)
        return gemini_answer(kind, model, response, many=verb == "batchEmbedContents")
