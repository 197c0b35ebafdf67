"""The simulator's Gemini Batch API, in the shapes Google's API reference and the
google-genai SDK use.

    routes = GeminiBatchRoutes(simulator, store, files)    # files: `gemini_files.GeminiFiles`
    routes.add_to(app)

Batches:
    POST   /v1beta/models/{model}:batchGenerateContent   {"batch": {"displayName",
           "inputConfig": {"fileName": "files/..."} | {"requests": {"requests": [{"request",
           "metadata": {"key"}}]}}}} -> an Operation {"name": "batches/...", "metadata":
           GenerateContentBatch}
    GET    /v1beta/batches/{id}    POST /v1beta/batches/{id}:cancel    DELETE /v1beta/batches/{id}
    GET    /v1beta/batches[?pageSize&pageToken]  {"operations": [...], "nextPageToken"?}

A batch runs on the clock of the other simulated batches (`batches.BatchStore`: `--batch-
seconds`, the window `--batch-expire-seconds`, and the faults `--batch-expire-after`,
`--batch-stall-rate`, `--batch-error-rate`, `--batch-delay-median`, `--batch-fail-validation`,
`--batch-lose-create`, `--batch-refuse-create`, `--batch-list-status`): BATCH_STATE_PENDING
while "validating", BATCH_STATE_RUNNING as lines finish, then BATCH_STATE_SUCCEEDED with
`metadata.output` (and the done Operation's `response`) holding `responsesFile` (a generated
JSONL file of `{"key", "response"}` / `{"key", "error"}` lines, in input order) or, for inline
requests, `inlinedResponses.inlinedResponses` (`{"response"|"error", "metadata": {"key"}}`).
BATCH_STATE_EXPIRED has no output (Google: "the job will not have any results to retrieve");
BATCH_STATE_CANCELLED keeps the lines finished before the cancel (the API does not say;
clients must cope with either); BATCH_STATE_FAILED carries the Operation's `error`. A line
whose request the API refuses (no contents, a bad max_output_tokens) is answered with its own
`error` (google.rpc.Status, `code` 3 INVALID_ARGUMENT); `--batch-error-rate` lines get code 13
INTERNAL. Inline requests over 20 MB or more requests than `--batch-max-requests` (default
100,000 here) are a 400 at create; an input line that is not JSON fails the batch.
batchStats counts are int64 strings, as proto3 JSON writes them.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from .batches import CreateFaults, Timeline, dumps
from .gemini_files import GeminiFiles, error, json_response, page, rfc3339
from .gemini_wire import GEMINI, GRPC_CODES, from_chat_reply, to_chat

if TYPE_CHECKING:
    from .batches import BatchStore
    from .server import Simulator

__all__ = [
    "INLINE_MAX_BYTES",
    "MAX_REQUESTS",
    "GeminiBatch",
    "GeminiBatchRoutes",
]

INLINE_MAX_BYTES = 20 * 1024 * 1024  # "keep the total request size under 20MB"
MAX_REQUESTS = 100_000  # the simulator's own cap (lowered by --batch-max-requests)
_VALIDATE_SHARE = 0.1
_FINALIZE_SHARE = 0.1
_LINES_PER_SLICE = 2000
_BATCH_TYPE = "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatch"
_OUTPUT_TYPE = "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatchOutput"


def _status(code_name: str, message: str) -> dict[str, Any]:
    """A `google.rpc.Status` as a batch line carries it (numeric gRPC code)."""
    return {"code": GRPC_CODES[code_name], "message": message, "status": code_name}


# A line to run: (key, the chat body as JSON bytes) or (key, why the API refuses it).
_Line = tuple[str, bytes | str]


# The common ends of a batch (`batches.Timeline.ending`), as Gemini names them.
_STATES = {
    "cancelled": "BATCH_STATE_CANCELLED",
    "completed": "BATCH_STATE_SUCCEEDED",
    "expired": "BATCH_STATE_EXPIRED",
}


class GeminiBatch:
    """One batch: its lines, its timeline, what it answered so far."""

    def __init__(
        self,
        name: str,
        model: str,
        display_name: str,
        items: list[_Line],
        timeline: Timeline,
        *,
        file_name: str | None,
        failure: str | None,
        grace: float,
    ) -> None:
        self.name = name
        self.model = model
        self.display_name = display_name
        self.items: list[_Line] | None = items
        self.n = len(items)
        self.timeline = timeline
        self.wall0 = time.time()
        self.file_name = file_name  # None: inline requests
        self.failure = failure  # the batch will fail, saying this
        self.grace = grace
        self.cancel_at: float | None = None
        self.answered = 0
        self.succeeded = 0
        self.failed = 0
        self.lines: list[bytes] = []
        self.state: str | None = None  # set once ended
        self.ended_at: float | None = None
        self.output: dict[str, Any] | None = None

    def wall(self, mono: float) -> float:
        return self.wall0 + (mono - self.timeline.t0)

    def current_state(self, now: float) -> str:
        if self.state is not None:
            return self.state
        if now < self.timeline.start or self.failure is not None:
            return "BATCH_STATE_PENDING"
        return "BATCH_STATE_RUNNING"

    def operation(self, now: float) -> dict[str, Any]:
        state = self.current_state(now)
        meta: dict[str, Any] = {
            "@type": _BATCH_TYPE,
            "model": f"models/{self.model}",
            "displayName": self.display_name,
            "createTime": rfc3339(self.wall0),
            "updateTime": rfc3339(self.wall(min(now, self.ended_at or now))),
            "batchStats": {
                "requestCount": str(self.n),
                "successfulRequestCount": str(self.succeeded),
                "failedRequestCount": str(self.failed),
                "pendingRequestCount": str(self.n - self.answered if self.state is None else 0),
            },
            "state": state,
            "name": self.name,
        }
        if self.file_name is not None:
            meta["inputConfig"] = {"fileName": self.file_name}
        op: dict[str, Any] = {"name": self.name, "metadata": meta}
        if self.state is not None:
            meta["endTime"] = rfc3339(self.wall(self.ended_at or now))
            op["done"] = True
            if self.state == "BATCH_STATE_FAILED":
                op["error"] = _status("INVALID_ARGUMENT", self.failure or "the batch failed")
            elif self.output is not None:
                meta["output"] = self.output
                op["response"] = {"@type": _OUTPUT_TYPE, **self.output}
        return op


class GeminiBatchRoutes:
    """The Batch API of one simulator, over the shared batch clock and its File API."""

    def __init__(self, simulator: Simulator, store: BatchStore, files: GeminiFiles) -> None:
        self.sim = simulator
        self.store = store
        self.config = c = store.config
        self.max_requests = c.batch_max_requests or MAX_REQUESTS
        self.files = files
        self.batches: dict[str, GeminiBatch] = {}
        self._faults = CreateFaults(c)

    def add_to(self, app: web.Application) -> None:
        r, auth = app.router, self.files.auth
        r.add_get("/v1beta/batches", auth(self.list_batches))
        r.add_get("/v1beta/batches/{id}", auth(self.get_batch))
        r.add_post("/v1beta/batches/{call}", auth(self.cancel_batch))
        r.add_delete("/v1beta/batches/{id}", auth(self.delete_batch))

    async def create(self, request: web.Request, model: str) -> web.StreamResponse:
        if (refused := self.files.refuse_key(request)) is not None:
            return refused
        raw = bytearray()
        while chunk := await request.content.read(1 << 20):
            raw += chunk
            if len(raw) > INLINE_MAX_BYTES:
                return error(
                    400, f"Request payload size exceeds the limit: {INLINE_MAX_BYTES} bytes."
                )
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            return error(400, f"Invalid JSON payload received. {exc}")
        batch_body = body.get("batch") if isinstance(body, dict) else None
        if not isinstance(batch_body, dict):
            return error(400, "batch: required")
        config = batch_body.get("inputConfig", batch_body.get("input_config"))
        if not isinstance(config, dict):
            return error(400, "batch.input_config: required")
        file_name = config.get("fileName", config.get("file_name"))
        inline = config.get("requests")
        failure: str | None = None
        if isinstance(file_name, str):
            stored = self.files.files.get(file_name)
            if stored is None:
                return error(404, f"File {file_name} not found.")
            items, failure = _file_lines(stored.data)
        elif isinstance(inline, dict) and isinstance(inline.get("requests"), list):
            items, problem = _inline_lines(inline["requests"])
            if problem is not None:
                return error(400, problem)
        else:
            return error(400, "batch.input_config: one of file_name or requests is required")
        if len(items) > self.max_requests:
            return error(
                400, f"Too many requests in the batch: {len(items)} (at most {self.max_requests})."
            )
        if not items:
            return error(400, "The batch has no requests.")
        if failure is None and self.config.batch_fail_validation:
            failure = "The batch failed validation (forced by --batch-fail-validation)."
        fault = self._faults.next()
        if fault == "refuse":
            return error(503, "The service is currently unavailable.")
        now = self.store.clock()
        s = self.config.batch_seconds
        batch = GeminiBatch(
            f"batches/{secrets.token_hex(10)}",
            model.removeprefix("models/"),
            str(batch_body.get("displayName", batch_body.get("display_name")) or ""),
            items,
            self.store._timeline(now, len(items), "openai"),
            file_name=file_name if isinstance(file_name, str) else None,
            failure=failure,
            grace=_FINALIZE_SHARE * s,
        )
        self.batches[batch.name] = batch
        self.store.counters.batches_created += 1
        self.store.counters.batch_lines += batch.n
        if fault == "lose":
            return error(503, "The service is currently unavailable.")
        return json_response(200, batch.operation(now))

    async def _batch(self, name: str) -> GeminiBatch | web.Response:
        batch = self.batches.get(f"batches/{name}")
        if batch is None:
            return error(404, f"Batch batches/{name} not found.")
        await self._refresh(batch)
        return batch

    async def get_batch(self, request: web.Request) -> web.StreamResponse:
        batch = await self._batch(request.match_info["id"])
        if isinstance(batch, web.Response):
            return batch
        self.store.counters.batch_polls += 1
        return json_response(200, batch.operation(self.store.clock()))

    async def cancel_batch(self, request: web.Request) -> web.StreamResponse:
        name, _, verb = request.match_info["call"].partition(":")
        if verb != "cancel":
            return error(404, f"Method not found: {verb!r}.")
        batch = await self._batch(name)
        if isinstance(batch, web.Response):
            return batch
        if batch.state is not None or batch.cancel_at is not None or batch.failure is not None:
            state = batch.current_state(self.store.clock())
            return error(400, f"Batch {batch.name} is in state {state} and cannot be cancelled.")
        batch.cancel_at = self.store.clock()
        self.store.counters.batches_cancelled += 1
        return json_response(200, {})

    async def delete_batch(self, request: web.Request) -> web.StreamResponse:
        batch = await self._batch(request.match_info["id"])
        if isinstance(batch, web.Response):
            return batch
        del self.batches[batch.name]
        return json_response(200, {})

    async def list_batches(self, request: web.Request) -> web.StreamResponse:
        if (refused := self.files.listing_refused()) is not None:
            return refused
        found = list(reversed(self.batches.values()))
        for batch in found:
            await self._refresh(batch)
        now = self.store.clock()
        listed, token = page([b.operation(now) for b in found], request)
        body: dict[str, Any] = {"operations": listed} if listed else {}
        if token:
            body["nextPageToken"] = token
        return json_response(200, body)

    # -- the state machine (as `batches.BatchStore.advance`) ----------------------------------

    async def _refresh(self, batch: GeminiBatch) -> None:
        while True:
            if self._advance(batch, _LINES_PER_SLICE):
                return
            await asyncio.sleep(0)  # let other requests in between slices

    def _advance(self, batch: GeminiBatch, most: int) -> bool:
        if batch.state is not None:
            return True
        now = self.store.clock()
        tl = batch.timeline
        if batch.failure is not None:
            if now >= tl.start:
                self._finish(batch, "BATCH_STATE_FAILED", tl.start)
            return True
        due = tl.due(now, batch.cancel_at)
        upto = min(due, batch.answered + most)
        self._answer(batch, upto)
        if upto < due:
            return False
        ending = tl.ending(now, batch.answered, batch.cancel_at, batch.grace, batch.grace)
        if ending is not None:
            end, at = ending
            self._finish(batch, _STATES[end], at)
        return True

    def _answer(self, batch: GeminiBatch, upto: int) -> None:
        items = batch.items
        if items is None or upto <= batch.answered:
            return
        rate = self.config.batch_error_rate
        inline = batch.file_name is None
        for i in range(batch.answered, upto):
            key, chat = items[i]
            result: dict[str, Any]
            if isinstance(chat, str):
                result = {"error": _status("INVALID_ARGUMENT", chat)}
            elif rate and self.store.rng.random() < rate:
                result = {"error": _status("INTERNAL", "Internal error encountered.")}
            else:
                status, body, _rid = self.sim.answer_line("chat", GEMINI, orjson.loads(chat))
                if status == 200:
                    reply = from_chat_reply("chat", orjson.loads(body), batch.model)
                    result = {"response": reply}
                else:
                    result = {"error": _status("INTERNAL", body.decode("utf-8", "replace"))}
            if "response" in result:
                batch.succeeded += 1
            else:
                batch.failed += 1
            line = {**result, "metadata": {"key": key}} if inline else {"key": key, **result}
            batch.lines.append(dumps(line))
        self.store.counters.batch_lines_answered += upto - batch.answered
        batch.answered = upto

    def _finish(self, batch: GeminiBatch, state: str, at: float) -> None:
        batch.state = state
        batch.ended_at = at
        if state == "BATCH_STATE_EXPIRED":
            self.store.counters.batches_expired += 1
        elif state == "BATCH_STATE_FAILED":
            self.store.counters.batches_failed += 1
        if state in ("BATCH_STATE_SUCCEEDED", "BATCH_STATE_CANCELLED") and batch.lines:
            if batch.file_name is None:
                responses = [orjson.Fragment(line) for line in batch.lines]
                batch.output = {"inlinedResponses": {"inlinedResponses": responses}}
            else:
                name = f"files/batch-{batch.name.removeprefix('batches/')}"
                data = b"\n".join(batch.lines) + b"\n"
                self.files.add_generated(name, data)
                batch.output = {"responsesFile": name}
        batch.lines = []
        batch.items = None


def _chat_line(request: Any, where: str) -> bytes | str:
    """The chat body of one batch request, or why the API refuses it."""
    if not isinstance(request, dict):
        return f"{where}: request must be an object"
    try:
        return orjson.dumps(to_chat("chat", request))
    except ValueError as exc:
        return f"{where}: {exc}"


def _file_lines(data: bytes) -> tuple[list[_Line], str | None]:
    """The lines of an input file, or why the batch fails (a line that is not JSON)."""
    items: list[_Line] = []
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            line = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return [], f"Line {number} of the input file is not valid JSON."
        if not isinstance(line, dict):
            return [], f"Line {number} of the input file is not a JSON object."
        key = str(line.get("key", number))
        items.append((key, _chat_line(line.get("request"), f"line {number}")))
    return items, None


def _inline_lines(requests: list[Any]) -> tuple[list[_Line], str | None]:
    items: list[_Line] = []
    for i, entry in enumerate(requests):
        if not isinstance(entry, dict) or not isinstance(entry.get("request"), dict):
            return [], f"batch.input_config.requests.requests[{i}].request: required"
        meta = entry.get("metadata")
        key = str(meta.get("key", i)) if isinstance(meta, dict) else str(i)
        items.append((key, _chat_line(entry["request"], f"requests[{i}]")))
    return items, None
