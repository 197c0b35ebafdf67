"""The HTTP face of the simulated batch APIs: OpenAI Files + Batches, Anthropic Message Batches.

    routes = BatchRoutes(store, config)
    routes.add_to(app)        # the routes below, on the simulator's aiohttp app

OpenAI (Bearer key):
    POST   /v1/files                 multipart: purpose=batch, file=@input.jsonl
    GET    /v1/files                 GET /v1/files/{id}    GET /v1/files/{id}/content
    DELETE /v1/files/{id}
    POST   /v1/batches               {input_file_id, endpoint, completion_window: "24h", metadata?}
    GET    /v1/batches/{id}          POST /v1/batches/{id}/cancel
    GET    /v1/batches               ?after=&limit= -> {object, data, first_id, last_id, has_more}
Anthropic (x-api-key):
    POST   /v1/messages/batches      {requests: [{custom_id, params}]}
    GET    /v1/messages/batches/{id} POST /v1/messages/batches/{id}/cancel
    GET    /v1/messages/batches/{id}/results   JSONL, in no particular order, once ended
    DELETE /v1/messages/batches/{id}           an ended batch only
    GET    /v1/messages/batches      ?limit=&after_id=&before_id=

What is checked where follows the real APIs. OpenAI refuses at once (400) a bad request
to create (unknown file, wrong purpose, endpoint, completion window) and an upload over
the size cap ("File is too large."); the content of the input file is checked while the
batch is `validating`, and a bad line makes the whole batch `failed` with
`errors.data[{code, message, param, line}]` (codes `invalid_json_line`,
`missing_required_parameter`, `url_mismatch`, `model_mismatch`, `duplicate_custom_id`,
`empty_file`, `too_many_tasks`; `token_limit_exceeded` when the model's live batches hold
more than `batch_enqueued_tokens`, `enqueued.py`). Anthropic checks the request at create: a bad
`custom_id` (`^[a-zA-Z0-9_-]{1,64}$`), a duplicate one or params without `model`,
`max_tokens` or `messages` is a 400 `invalid_request_error` naming `requests.{index}`;
a body over the byte cap is a 413 `request_too_large`.

Faults of single calls (see `SimulatorConfig`): the N-th create carried out with its answer
lost (`batch_lose_create`) or refused without effect (`batch_refuse_create`), and listings
refused with a status (`batch_list_status`).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import BodyPartReader, web

from .batches import BatchStore, CreateFaults, Item, SimBatch, dumps
from .config import SimulatorConfig
from .dialects import ANTHROPIC, OPENAI, Dialect
from .enqueued import EnqueuedQueue, batch_tokens

__all__ = [
    "ANTHROPIC_MAX_BYTES",
    "ANTHROPIC_MAX_REQUESTS",
    "OPENAI_MAX_BYTES",
    "OPENAI_MAX_REQUESTS",
    "BatchRoutes",
]

OPENAI_MAX_REQUESTS = 50_000
OPENAI_MAX_BYTES = 200 * 1024 * 1024
ANTHROPIC_MAX_REQUESTS = 100_000
ANTHROPIC_MAX_BYTES = 256 * 1024 * 1024

# endpoint -> (kind as the realtime routes name it, the body field a line must have)
_ENDPOINTS = {
    "/v1/chat/completions": ("chat", "messages"),
    "/v1/responses": ("responses", "input"),
    "/v1/completions": ("completions", "prompt"),
    "/v1/embeddings": ("embeddings", "input"),
}
_PURPOSES = ("batch", "fine-tune", "assistants", "vision", "user_data", "evals")
_CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_MAX_LISTED_ERRORS = 100
_CHUNK = 1 << 20

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(status: int, body: Any) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


def _openai_error(status: int, message: str, param: str | None = None) -> web.Response:
    return _json(
        status,
        {
            "error": {
                "message": message,
                "type": "invalid_request_error",
                "param": param,
                "code": None,
            }
        },
    )


def _anthropic_error(status: int, kind: str, message: str) -> web.Response:
    return _json(status, ANTHROPIC.error(kind, message))


def _line_error(code: str, message: str, line: int | None, param: str | None) -> dict[str, Any]:
    return {"code": code, "message": message, "param": param, "line": line}


def parse_openai_input(
    data: bytes, endpoint: str, max_requests: int
) -> tuple[list[Item], list[dict[str, Any]]]:
    """The lines of an OpenAI batch input file, and what is wrong with them (line numbers
    from 1). Any error fails the batch; the items are only meaningful without errors."""
    _kind, field = _ENDPOINTS[endpoint]
    items: list[Item] = []
    errors: list[dict[str, Any]] = []
    seen: set[str] = set()
    model: str | None = None
    count = 0

    def bad(code: str, message: str, line: int | None, param: str | None = None) -> None:
        if len(errors) < _MAX_LISTED_ERRORS:
            errors.append(_line_error(code, message, line, param))

    for number, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        count += 1
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError:
            bad("invalid_json_line", "This line is not parseable as valid JSON.", number)
            continue
        if not isinstance(obj, dict):
            bad("invalid_json_line", "This line is not a JSON object.", number)
            continue
        custom_id = obj.get("custom_id")
        body = obj.get("body")
        missing = [
            name
            for name, ok in (
                ("custom_id", isinstance(custom_id, str) and custom_id != ""),
                ("method", "method" in obj),
                ("url", "url" in obj),
                ("body", isinstance(body, dict)),
            )
            if not ok
        ]
        if missing:
            bad(
                "missing_required_parameter",
                f"Missing required parameter: '{missing[0]}'.",
                number,
                missing[0],
            )
            continue
        assert isinstance(custom_id, str) and isinstance(body, dict)
        if obj["method"] != "POST":
            bad("invalid_request", "The method must be 'POST'.", number, "method")
            continue
        if obj["url"] != endpoint:
            bad(
                "url_mismatch",
                f"The provided URL '{obj['url']}' does not match the batch endpoint '{endpoint}'.",
                number,
                "url",
            )
            continue
        line_model = body.get("model")
        if not isinstance(line_model, str) or not line_model:
            bad(
                "missing_required_parameter",
                "Missing required parameter: 'body.model'.",
                number,
                "body.model",
            )
            continue
        if field not in body:
            bad(
                "missing_required_parameter",
                f"Missing required parameter: 'body.{field}'.",
                number,
                f"body.{field}",
            )
            continue
        if model is None:
            model = line_model
        elif line_model != model:
            bad(
                "model_mismatch",
                f"The model '{line_model}' differs from the batch's model '{model}'; "
                "a batch uses one model.",
                number,
                "body.model",
            )
            continue
        if custom_id in seen:
            bad(
                "duplicate_custom_id",
                f"The custom_id '{custom_id}' appears more than once in this batch.",
                number,
                "custom_id",
            )
            continue
        seen.add(custom_id)
        items.append((custom_id, dumps(body)))
    if count == 0:
        bad("empty_file", "The batch input file is empty.", None)
    elif count > max_requests:
        bad(
            "too_many_tasks",
            f"The batch input file has {count} requests; the maximum is {max_requests}.",
            None,
        )
    return items, errors


def parse_anthropic_requests(body: Any, max_requests: int) -> tuple[list[Item], str | None]:
    """The requests of a Message Batches create, or why the whole request is refused."""
    if not isinstance(body, dict):
        return [], "body: Input should be an object"
    requests = body.get("requests")
    if not isinstance(requests, list):
        return [], "requests: Field required"
    if not requests:
        return [], "requests: List should have at least 1 item after validation, not 0"
    if len(requests) > max_requests:
        return [], (
            f"requests: List should have at most {max_requests} items after validation, "
            f"not {len(requests)}"
        )
    items: list[Item] = []
    seen: set[str] = set()
    for i, request in enumerate(requests):
        where = f"requests.{i}"
        if not isinstance(request, dict):
            return [], f"{where}: Input should be an object"
        custom_id = request.get("custom_id")
        if not isinstance(custom_id, str):
            return [], f"{where}.custom_id: Field required"
        if not _CUSTOM_ID.match(custom_id):
            return [], (f"{where}.custom_id: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'")
        if custom_id in seen:
            return [], f"{where}.custom_id: Duplicate custom_id '{custom_id}' in the batch"
        seen.add(custom_id)
        params = request.get("params")
        if not isinstance(params, dict):
            return [], f"{where}.params: Field required"
        for name, kind in (("model", str), ("max_tokens", int), ("messages", list)):
            if name not in params:
                return [], f"{where}.params.{name}: Field required"
            if not isinstance(params[name], kind) or isinstance(params[name], bool):
                return [], f"{where}.params.{name}: Input should be a valid {kind.__name__}"
        items.append((custom_id, dumps(params)))
    return items, None


def _model(items: list[Item]) -> str:
    """The model of a batch's lines (one per batch, checked by `parse_openai_input`)."""
    if not items:
        return ""
    model = orjson.loads(items[0][1]).get("model")
    return model if isinstance(model, str) else ""


class BatchRoutes:
    """Request handlers over a `BatchStore`; caps and auth from the simulator's config."""

    def __init__(self, store: BatchStore, config: SimulatorConfig) -> None:
        self.store = store
        self.config = config
        c = config
        self.openai_max_requests = c.batch_max_requests or OPENAI_MAX_REQUESTS
        self.openai_max_bytes = c.batch_max_bytes or OPENAI_MAX_BYTES
        self.anthropic_max_requests = c.batch_max_requests or ANTHROPIC_MAX_REQUESTS
        self.anthropic_max_bytes = c.batch_max_bytes or ANTHROPIC_MAX_BYTES
        self._faults = CreateFaults(config)  # creates of both providers count
        limit = c.batch_enqueued_tokens
        self.enqueued = EnqueuedQueue(store, limit) if limit is not None else None

    def add_to(self, app: web.Application) -> None:
        r = app.router
        r.add_post("/v1/files", self._auth(OPENAI, self.upload))
        r.add_get("/v1/files", self._auth(OPENAI, self.list_files))
        r.add_get("/v1/files/{id}", self._auth(OPENAI, self.get_file))
        r.add_get("/v1/files/{id}/content", self._auth(OPENAI, self.file_content))
        r.add_delete("/v1/files/{id}", self._auth(OPENAI, self.delete_file))
        r.add_post("/v1/batches", self._auth(OPENAI, self.create_openai))
        r.add_get("/v1/batches", self._auth(OPENAI, self.list_openai))
        r.add_get("/v1/batches/{id}", self._auth(OPENAI, self.get_openai))
        r.add_post("/v1/batches/{id}/cancel", self._auth(OPENAI, self.cancel_openai))
        r.add_post("/v1/messages/batches", self._auth(ANTHROPIC, self.create_anthropic))
        r.add_get("/v1/messages/batches", self._auth(ANTHROPIC, self.list_anthropic))
        r.add_get("/v1/messages/batches/{id}", self._auth(ANTHROPIC, self.get_anthropic))
        r.add_delete("/v1/messages/batches/{id}", self._auth(ANTHROPIC, self.delete_anthropic))
        r.add_post("/v1/messages/batches/{id}/cancel", self._auth(ANTHROPIC, self.cancel_anthropic))
        r.add_get(
            "/v1/messages/batches/{id}/results", self._auth(ANTHROPIC, self.anthropic_results)
        )

    @staticmethod
    def _failed_create(dialect: Dialect) -> web.Response:
        # Anthropic answers 529 overloaded_error, OpenAI a 500: both retryable.
        if dialect is ANTHROPIC:
            return _json(*dialect.overloaded())
        return _json(500, dialect.error("server_error", "The server had an error"))

    def _listing_refused(self, dialect: Dialect) -> web.Response | None:
        status = self.config.batch_list_status
        if status is None:
            return None
        return _json(status, dialect.error("permission_error", "This key may not list objects."))

    def _auth(self, dialect: Dialect, handler: Handler) -> Handler:
        async def checked(request: web.Request) -> web.StreamResponse:
            key = self.config.api_key
            if key is not None and dialect.api_key(request.headers) != key:
                return _json(*dialect.unauthorized())
            return await handler(request)

        return checked

    # -- OpenAI files ----------------------------------------------------------------------

    async def upload(self, request: web.Request) -> web.StreamResponse:
        if not request.content_type.startswith("multipart/"):
            return _openai_error(400, "The request must be multipart/form-data.")
        reader = await request.multipart()
        purpose: str | None = None
        filename = "upload.jsonl"
        data: bytes | None = None
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                continue
            if part.name == "purpose":
                purpose = (await part.text()).strip()
            elif part.name == "file":
                filename = part.filename or filename
                chunks: list[bytes] = []
                size = 0
                while chunk := await part.read_chunk(_CHUNK):
                    size += len(chunk)
                    if size > self.openai_max_bytes:
                        return _openai_error(400, "File is too large.")
                    chunks.append(chunk)
                data = b"".join(chunks)
        if purpose is None:
            return _openai_error(400, "Missing required parameter: 'purpose'.", "purpose")
        if purpose not in _PURPOSES:
            return _openai_error(400, f"Invalid value for 'purpose': '{purpose}'.", "purpose")
        if data is None:
            return _openai_error(400, "Missing required parameter: 'file'.", "file")
        if purpose == "batch" and not filename.endswith(".jsonl"):
            return _openai_error(400, "Invalid file format for Batch API. Must be .jsonl", "file")
        stored = self.store.add_file(filename, purpose, data)
        self.store.counters.files_uploaded += 1
        return _json(200, stored.obj())

    async def list_files(self, request: web.Request) -> web.StreamResponse:
        if (refused := self._listing_refused(OPENAI)) is not None:
            return refused
        purpose = request.query.get("purpose")
        files = [f.obj() for f in self.store.files.values() if purpose in (None, f.purpose)]
        files.reverse()
        return _json(
            200,
            {
                "object": "list",
                "data": files,
                "first_id": files[0]["id"] if files else None,
                "last_id": files[-1]["id"] if files else None,
                "has_more": False,
            },
        )

    def _no_file(self, file_id: str) -> web.Response:
        return _openai_error(404, f"No such File object: {file_id}", "id")

    async def get_file(self, request: web.Request) -> web.StreamResponse:
        f = self.store.files.get(request.match_info["id"])
        return _json(200, f.obj()) if f is not None else self._no_file(request.match_info["id"])

    async def file_content(self, request: web.Request) -> web.StreamResponse:
        f = self.store.files.get(request.match_info["id"])
        if f is None:
            return self._no_file(request.match_info["id"])
        return web.Response(body=f.data, content_type="application/octet-stream")

    async def delete_file(self, request: web.Request) -> web.StreamResponse:
        file_id = request.match_info["id"]
        if not self.store.delete_file(file_id):
            return self._no_file(file_id)
        self.store.counters.files_deleted += 1
        return _json(200, {"id": file_id, "object": "file", "deleted": True})

    # -- OpenAI batches --------------------------------------------------------------------

    async def create_openai(self, request: web.Request) -> web.StreamResponse:
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError as exc:
            return _openai_error(400, f"We could not parse the JSON body of your request: {exc}")
        if not isinstance(body, dict):
            return _openai_error(400, "The body must be a JSON object.")
        for name in ("input_file_id", "endpoint", "completion_window"):
            if not isinstance(body.get(name), str):
                return _openai_error(400, f"Missing required parameter: '{name}'.", name)
        endpoint = body["endpoint"]
        if endpoint not in _ENDPOINTS:
            return _openai_error(
                400,
                f"Invalid value for 'endpoint': '{endpoint}'; supported: {', '.join(_ENDPOINTS)}.",
                "endpoint",
            )
        if body["completion_window"] != "24h":
            return _openai_error(
                400,
                f"Invalid value for 'completion_window': '{body['completion_window']}'; "
                "supported: '24h'.",
                "completion_window",
            )
        metadata = body.get("metadata")
        if metadata is not None and not (
            isinstance(metadata, dict)
            and len(metadata) <= 16
            and all(len(k) <= 64 for k in metadata)
            and all(isinstance(v, str) and len(v) <= 512 for v in metadata.values())
        ):
            return _openai_error(
                400,
                "metadata: at most 16 pairs, keys up to 64 characters, string values up to "
                "512 characters.",
                "metadata",
            )
        f = self.store.files.get(body["input_file_id"])
        if f is None:
            return self._no_file(body["input_file_id"])
        if f.purpose != "batch":
            return _openai_error(
                400,
                f"The input file {f.id} must be uploaded with purpose 'batch'.",
                "input_file_id",
            )
        fault = self._faults.next()
        if fault == "refuse":
            return self._failed_create(OPENAI)
        items, errors = parse_openai_input(f.data, endpoint, self.openai_max_requests)
        if self.config.batch_fail_validation:
            errors.append(
                _line_error(
                    "invalid_request",
                    "The batch failed validation (forced by --batch-fail-validation).",
                    None,
                    None,
                )
            )
        kind = _ENDPOINTS[endpoint][0]
        model, tokens = _model(items), 0
        if not errors and self.enqueued is not None:
            tokens = batch_tokens(kind, items)
            if (refusal := await self.enqueued.admit(model, tokens)) is not None:
                errors.append(refusal)  # created, then failed: OpenAI's way
        batch = self.store.create_openai(
            f.id, endpoint, metadata, kind, [] if errors else items, errors or None
        )
        batch.model, batch.tokens = model, tokens
        if fault == "lose":
            return self._failed_create(OPENAI)
        return _json(200, batch.openai_obj(self.store.clock()))

    async def _openai_batch(self, request: web.Request) -> SimBatch | web.Response:
        batch_id = request.match_info["id"]
        batch = await self.store.get(batch_id, "openai")
        if batch is None:
            return _openai_error(404, f"No batch found with id '{batch_id}'.", "batch_id")
        return batch

    async def get_openai(self, request: web.Request) -> web.StreamResponse:
        batch = await self._openai_batch(request)
        if isinstance(batch, web.Response):
            return batch
        self.store.counters.batch_polls += 1
        return _json(200, batch.openai_obj(self.store.clock()))

    async def cancel_openai(self, request: web.Request) -> web.StreamResponse:
        batch = await self._openai_batch(request)
        if isinstance(batch, web.Response):
            return batch
        now = self.store.clock()
        if not await self.store.cancel(batch):
            status = batch.openai_status(now)
            return _openai_error(400, f"Cannot cancel a batch with status '{status}'.")
        return _json(200, batch.openai_obj(now))

    async def list_openai(self, request: web.Request) -> web.StreamResponse:
        if (refused := self._listing_refused(OPENAI)) is not None:
            return refused
        limit = _limit(request.query.get("limit"), 20, 100)
        if limit is None:
            return _openai_error(400, "Invalid value for 'limit': 1 to 100.", "limit")
        batches = await self.store.listing("openai")
        after = request.query.get("after")
        if after is not None:
            ids = [b.id for b in batches]
            batches = batches[ids.index(after) + 1 :] if after in ids else []
        page = batches[:limit]
        now = self.store.clock()
        data = [b.openai_obj(now) for b in page]
        return _json(
            200,
            {
                "object": "list",
                "data": data,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
                "has_more": len(batches) > limit,
            },
        )

    # -- Anthropic message batches ---------------------------------------------------------

    async def create_anthropic(self, request: web.Request) -> web.StreamResponse:
        chunks: list[bytes] = []
        size = 0
        while chunk := await request.content.read(_CHUNK):
            size += len(chunk)
            if size > self.anthropic_max_bytes:
                return _anthropic_error(
                    413,
                    "request_too_large",
                    f"Request exceeds the maximum size of {self.anthropic_max_bytes} bytes.",
                )
            chunks.append(chunk)
        try:
            body = orjson.loads(b"".join(chunks))
        except orjson.JSONDecodeError as exc:
            return _anthropic_error(400, "invalid_request_error", f"bad JSON: {exc}")
        del chunks
        items, problem = parse_anthropic_requests(body, self.anthropic_max_requests)
        if problem is None and self.config.batch_fail_validation:
            problem = "requests: the batch failed validation (forced by --batch-fail-validation)"
        if problem is not None:
            return _anthropic_error(400, "invalid_request_error", problem)
        fault = self._faults.next()
        if fault == "refuse":
            return self._failed_create(ANTHROPIC)
        batch = self.store.create_anthropic(items)
        if fault == "lose":
            return self._failed_create(ANTHROPIC)
        return _json(200, batch.anthropic_obj(_base_url(request)))

    async def _anthropic_batch(self, request: web.Request) -> SimBatch | web.Response:
        batch_id = request.match_info["id"]
        batch = await self.store.get(batch_id, "anthropic")
        if batch is None:
            return _anthropic_error(
                404, "not_found_error", f"No message batch found with id '{batch_id}'."
            )
        return batch

    async def get_anthropic(self, request: web.Request) -> web.StreamResponse:
        batch = await self._anthropic_batch(request)
        if isinstance(batch, web.Response):
            return batch
        self.store.counters.batch_polls += 1
        return _json(200, batch.anthropic_obj(_base_url(request)))

    async def cancel_anthropic(self, request: web.Request) -> web.StreamResponse:
        batch = await self._anthropic_batch(request)
        if isinstance(batch, web.Response):
            return batch
        if not await self.store.cancel(batch):
            return _anthropic_error(
                400,
                "invalid_request_error",
                f"Message batch {batch.id} is {batch.anthropic_status()} and cannot be canceled.",
            )
        return _json(200, batch.anthropic_obj(_base_url(request)))

    async def anthropic_results(self, request: web.Request) -> web.StreamResponse:
        batch = await self._anthropic_batch(request)
        if isinstance(batch, web.Response):
            return batch
        if batch.results is None:
            return _anthropic_error(
                400,
                "invalid_request_error",
                f"Message batch {batch.id} has not ended yet; its results are not available.",
            )
        return web.Response(body=batch.results, content_type="application/x-jsonl")

    async def delete_anthropic(self, request: web.Request) -> web.StreamResponse:
        batch = await self._anthropic_batch(request)
        if isinstance(batch, web.Response):
            return batch
        if batch.end is None:
            return _anthropic_error(
                400,
                "invalid_request_error",
                f"Message batch {batch.id} has not ended; cancel it before deleting it.",
            )
        del self.store.batches[batch.id]
        return _json(200, {"id": batch.id, "type": "message_batch_deleted"})

    async def list_anthropic(self, request: web.Request) -> web.StreamResponse:
        if (refused := self._listing_refused(ANTHROPIC)) is not None:
            return refused
        limit = _limit(request.query.get("limit"), 20, 1000)
        if limit is None:
            return _anthropic_error(400, "invalid_request_error", "limit: 1 to 1000")
        batches = await self.store.listing("anthropic")
        ids = [b.id for b in batches]
        after, before = request.query.get("after_id"), request.query.get("before_id")
        if before is not None:
            # The page just newer than `before_id` (the list is newest first).
            end = ids.index(before) if before in ids else 0
            page, has_more = batches[max(0, end - limit) : end], end > limit
        else:
            if after is not None:
                batches = batches[ids.index(after) + 1 :] if after in ids else []
            page, has_more = batches[:limit], len(batches) > limit
        base = _base_url(request)
        data = [b.anthropic_obj(base) for b in page]
        return _json(
            200,
            {
                "data": data,
                "has_more": has_more,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
            },
        )


def _limit(text: str | None, default: int, most: int) -> int | None:
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        return None
    return value if 1 <= value <= most else None


def _base_url(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"
