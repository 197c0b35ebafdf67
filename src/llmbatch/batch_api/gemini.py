"""Gemini's Batch API: inline requests for a small batch, an uploaded JSONL file for a large one.

    backend = GeminiBatches(GeminiClient(model="gemini-2.5-flash"))
    info = await backend.create("gemini-2.5-flash", Path("chunk-0.input"), None, tag="run:0")

Routes (under the client's base URL, https://generativelanguage.googleapis.com): POST
/v1beta/models/{model}:batchGenerateContent {"batch": {"displayName", "inputConfig":
{"requests": {"requests": [{"request", "metadata": {"key"}}]}} | {"fileName": "files/..."}}},
GET /v1beta/batches/{id}, POST /v1beta/batches/{id}:cancel, GET /v1beta/batches?pageSize&
pageToken (`operations`, `nextPageToken`); the File API's resumable upload (POST
/upload/v1beta/files with X-Goog-Upload-Command: start, then "upload, finalize" to the
X-Goog-Upload-URL it answers), GET /v1beta/files (to find a lost upload), GET
/v1beta/files/{id}:download?alt=media and DELETE /v1beta/files/{id}. The shapes are those of
Google's API reference and the google-genai SDK.

A batch is an Operation whose `metadata` is the batch: `state` BATCH_STATE_PENDING, RUNNING,
SUCCEEDED, FAILED, CANCELLED or EXPIRED, `batchStats` (int64 counts as strings), `displayName`
and, once it has ended, `output` (also the done Operation's `response`): `responsesFile`, a
JSONL file of `{"key", "response"}` or `{"key", "error"}` lines, or `inlinedResponses.
inlinedResponses` (`{"response"|"error", "metadata": {"key"}}`). A line's error is a
`google.rpc.Status` whose `code` is a gRPC code (3 INVALID_ARGUMENT, 8 RESOURCE_EXHAUSTED, 13
INTERNAL ...): it is mapped to the HTTP status Google pairs with it, then onto the error tree.

One batch holds one model (the route names it), so the model ("models/NAME") is the chunk key.
Each chunk is written as the file's JSONL (`{"key": id, "request": GenerateContentRequest}`,
the request exactly as the realtime client builds it); a chunk of at most `inline_max_bytes`
(19 MB: the API takes inline requests "under 20MB" in all) is sent inline, without a file, a
larger one is uploaded first. The batch's `displayName` is our tag (the ledger's run key and
chunk number), so a batch whose create answer was lost is found exactly by listing batches.
Keys are the request ids as they are.

What the API leaves open, and how it is read here: an EXPIRED batch has no results (Google:
"the job will not have any results to retrieve"), so its lines are `batch_expired`; whatever
output a CANCELLED or FAILED batch has is read, and its other lines get `batch_cancelled` /
`batch_failed`. The listing's order is not documented, so a look-up reads every page.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson

from ..clients._http import APIRequests, error_for_status
from ..clients.gemini import API_VERSION, model_name
from ..clients.provider import ProviderClient
from ..errors import (
    AuthenticationError,
    BadRequestError,
    InvalidResponseError,
    LLMBatchError,
    UnsupportedRequestError,
)
from ..types import BatchRequest, CompletionRequest, CompletionResponse
from .backend import BatchInfo, LineOutcome, read_result_line
from .split import JSONL, Caps

__all__ = ["GEMINI_CAPS", "INLINE_MAX_BYTES", "GeminiBatches", "grpc_http_status"]

MB = 1024 * 1024
# Files up to 2 GB (the File API's limit). The API documents no request count per batch;
# 100,000 keeps a batch (and a rerun's look-up of it) a manageable size.
GEMINI_CAPS = Caps(100_000, 2048 * MB)
INLINE_MAX_BYTES = 19 * MB  # under the 20 MB inline limit, with room for the wrapping
_PAGE = "100"
_OUTCOMES = {
    "SUCCEEDED": "completed",
    "FAILED": "failed",
    "CANCELLED": "cancelled",
    "EXPIRED": "expired",
}
# google.rpc.Code -> the HTTP status Google's APIs answer it with.
_GRPC_HTTP = {
    1: 499,  # CANCELLED
    2: 500,  # UNKNOWN
    3: 400,  # INVALID_ARGUMENT
    4: 504,  # DEADLINE_EXCEEDED
    5: 404,  # NOT_FOUND
    6: 409,  # ALREADY_EXISTS
    7: 403,  # PERMISSION_DENIED
    8: 429,  # RESOURCE_EXHAUSTED
    9: 400,  # FAILED_PRECONDITION
    10: 409,  # ABORTED
    11: 400,  # OUT_OF_RANGE
    12: 501,  # UNIMPLEMENTED
    13: 500,  # INTERNAL
    14: 503,  # UNAVAILABLE
    15: 500,  # DATA_LOSS
    16: 401,  # UNAUTHENTICATED
}
_NAMES = {
    "CANCELLED": 499,
    "INVALID_ARGUMENT": 400,
    "DEADLINE_EXCEEDED": 504,
    "NOT_FOUND": 404,
    "PERMISSION_DENIED": 403,
    "RESOURCE_EXHAUSTED": 429,
    "FAILED_PRECONDITION": 400,
    "INTERNAL": 500,
    "UNAVAILABLE": 503,
    "UNAUTHENTICATED": 401,
}
_FRACTION = re.compile(r"(\.\d{6})\d+")


def grpc_http_status(status: Any) -> int:
    """The HTTP status of a `google.rpc.Status` (a batch line's error): by its `status` name,
    else its numeric gRPC `code` (an HTTP status is taken as it is); 500 when unknown."""
    if not isinstance(status, dict):
        return 500
    name = status.get("status")
    if isinstance(name, str) and name in _NAMES:
        return _NAMES[name]
    code = status.get("code")
    if isinstance(code, int) and not isinstance(code, bool):
        if 100 <= code <= 599:
            return code
        return _GRPC_HTTP.get(code, 500)
    return 500


class GeminiBatches:
    name = "gemini"
    caps = GEMINI_CAPS
    framing = JSONL
    uploads = True  # only chunks over `inline_max_bytes`: smaller ones go inline
    tags = True

    def __init__(self, client: ProviderClient, *, inline_max_bytes: int = INLINE_MAX_BYTES) -> None:
        self.client = client
        self.api = APIRequests(client.http)
        self.inline_max_bytes = inline_max_bytes

    def encode(self, item: BatchRequest) -> tuple[str, bytes, str]:
        request = item.request
        if request.endpoint != "chat":
            raise UnsupportedRequestError(
                f"Gemini batches here take chat requests, not {request.endpoint!r}"
            )
        model = model_name(request.model or self.client.model)
        body = self.client.body_for(request)
        line = b'{"key":' + orjson.dumps(item.id) + b',"request":' + orjson.dumps(body) + b"}\n"
        return model, line, item.id

    def wire_id(self, rid: str) -> str:
        return rid

    def parse(self, key: str, line: LineOutcome) -> CompletionResponse:
        return self.client.parse(CompletionRequest(), line.status, {}, line.body)

    # -- files -----------------------------------------------------------------------------------

    async def upload(self, path: Path, filename: str) -> str:
        size = path.stat().st_size  # noqa: ASYNC240 (one stat, no read)
        start = {
            "X-Goog-Upload-Protocol": "resumable",
            "X-Goog-Upload-Command": "start",
            "X-Goog-Upload-Header-Content-Length": str(size),
            "X-Goog-Upload-Header-Content-Type": "application/jsonl",
        }
        meta = {"file": {"displayName": filename, "mimeType": "application/jsonl"}}
        headers, _ = await self.api.send(
            "POST", f"/upload/{API_VERSION}/files", payload=meta, headers=start
        )
        url = headers.get("X-Goog-Upload-URL") or headers.get("x-goog-upload-url")
        if not url:
            raise InvalidResponseError("the File API answered the upload start without an URL")
        finish = {
            "X-Goog-Upload-Command": "upload, finalize",
            "X-Goog-Upload-Offset": "0",
            "Content-Type": "application/jsonl",
        }
        _, body = await self.api.send("POST", url, file_path=str(path), headers=finish)
        name = body.get("file", {}).get("name") if isinstance(body, dict) else None
        if not isinstance(name, str):
            raise InvalidResponseError(f"upload answer lacks file.name: {str(body)[:200]}")
        return name

    async def find_upload(self, filename: str, size: int, since: float) -> str | None:
        params = {"pageSize": _PAGE}
        while True:
            page = await self.api.json("GET", f"/{API_VERSION}/files", params=params)
            if not isinstance(page, dict):
                raise InvalidResponseError(f"file list is not an object: {str(page)[:200]}")
            for f in page.get("files") or ():
                created = _when(f.get("createTime"))
                if created is not None and created < since:
                    continue
                if f.get("displayName") == filename and str(f.get("sizeBytes")) == str(size):
                    return str(f["name"])
            token = page.get("nextPageToken")
            if not token:
                return None
            params = {"pageSize": _PAGE, "pageToken": str(token)}

    # -- batches ---------------------------------------------------------------------------------

    async def create(self, key: str, path: Path, file_id: str | None, tag: str) -> BatchInfo:
        config: dict[str, Any]
        if file_id is not None:
            config = {"fileName": file_id}
        else:
            # Up to 19 MB read and rewrapped: off the event loop, which polls other batches.
            config = {"requests": {"requests": await asyncio.to_thread(_inline, path)}}
        payload = {"batch": {"displayName": tag, "inputConfig": config}}
        route = f"/{API_VERSION}/{key}:batchGenerateContent"
        return _info(await self.api.json("POST", route, payload))

    async def get(self, batch_id: str) -> BatchInfo:
        return _info(await self.api.json("GET", f"/{API_VERSION}/{batch_id}"))

    async def cancel(self, batch_id: str) -> BatchInfo:
        await self.api.json("POST", f"/{API_VERSION}/{batch_id}:cancel")
        return await self.get(batch_id)

    async def recent(self, since: float) -> AsyncIterator[BatchInfo]:
        params = {"pageSize": _PAGE}
        while True:
            page = await self.api.json("GET", f"/{API_VERSION}/batches", params=params)
            if not isinstance(page, dict):
                raise InvalidResponseError(f"batch list is not an object: {str(page)[:200]}")
            for raw in page.get("operations") or ():
                info = _info(raw)
                if info.created_at is None or info.created_at >= since:
                    yield info
            token = page.get("nextPageToken")
            if not token:
                return
            params = {"pageSize": _PAGE, "pageToken": str(token)}

    async def results(self, info: BatchInfo) -> AsyncIterator[LineOutcome]:
        output = _output(info.raw)
        inlined = (output.get("inlinedResponses") or {}).get("inlinedResponses")
        if isinstance(inlined, list):
            for entry in inlined:
                meta = entry.get("metadata") if isinstance(entry, dict) else None
                key = meta.get("key") if isinstance(meta, dict) else None
                if key is None:
                    continue  # not ours to match: its line is told it had no result
                yield _outcome(str(key), entry)
            return
        file_name = output.get("responsesFile")
        if not file_name:
            return
        path = f"/{API_VERSION}/{file_name}:download?alt=media"
        try:
            async for raw in self.api.lines(path):
                line, key = read_result_line(raw, lambda line: (line, str(line["key"])))
                yield _outcome(key, line)
        except AuthenticationError as exc:
            # Google answers a file that is gone (deleted, or past its 48 hours) with 403
            # PERMISSION_DENIED "... or it may not exist"; the key was good for the poll just
            # before, so this is the results gone, which the runner fails line by line.
            if exc.status_code != 403:
                raise
            raise BadRequestError(
                f"{file_name} is gone ({exc.message})", status_code=404, body=exc.body
            ) from None

    async def cleanup(self, info: BatchInfo, file_id: str | None) -> None:
        for name in (file_id, _output(info.raw).get("responsesFile")):
            if name:
                # A file left behind expires after 48 hours; it costs no result.
                with contextlib.suppress(LLMBatchError):
                    await self.api.json("DELETE", f"/{API_VERSION}/{name}")


def _inline(path: Path) -> list[dict[str, Any]]:
    """The chunk's JSONL lines as inline requests (`{"request", "metadata": {"key"}}`)."""
    requests = []
    with open(path, "rb") as f:
        for raw in f:
            if raw.strip():
                line = orjson.loads(raw)
                requests.append({"request": line["request"], "metadata": {"key": line["key"]}})
    return requests


def _when(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        text = _FRACTION.sub(r"\1", value.replace("Z", "+00:00"))
        return dt.datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _output(op: dict[str, Any]) -> dict[str, Any]:
    output = _dict(_dict(op.get("metadata")).get("output"))
    return output or _dict(op.get("response"))


def _count(stats: dict[str, Any], name: str) -> int:
    try:
        return int(stats.get(name) or 0)
    except (TypeError, ValueError):
        return 0


def _info(op: Any) -> BatchInfo:
    if not isinstance(op, dict) or not isinstance(op.get("name"), str):
        raise InvalidResponseError(f"not a batch operation: {str(op)[:200]}")
    meta = _dict(op.get("metadata"))
    state = str(meta.get("state") or "BATCH_STATE_PENDING")
    word = state.rsplit("_STATE_", 1)[-1]  # BATCH_STATE_X (REST) or JOB_STATE_X (the SDK's)
    error = op.get("error")
    if error and word not in _OUTCOMES:
        word = "FAILED"  # a done Operation with an error
    outcome = _OUTCOMES.get(word)
    stats = _dict(meta.get("batchStats"))
    errors: tuple[tuple[int | None, str], ...] = ()
    if isinstance(error, dict):
        errors = ((None, f"{error.get('status') or error.get('code')}: {error.get('message')}"),)
    tag = meta.get("displayName")
    return BatchInfo(
        id=str(op["name"]),
        status=state,
        ended=outcome is not None,
        total=_count(stats, "requestCount"),
        succeeded=_count(stats, "successfulRequestCount"),
        failed=_count(stats, "failedRequestCount"),
        created_at=_when(meta.get("createTime")),
        outcome=outcome,
        errors=errors,
        tag=tag if isinstance(tag, str) else None,
        raw=op,
    )


def _outcome(key: str, line: dict[str, Any]) -> LineOutcome:
    response = line.get("response")
    if isinstance(response, dict) and not line.get("error"):
        return LineOutcome(key, 200, response, response.get("responseId"))
    # A failed line: a google.rpc.Status (some writers name it "status").
    status = line.get("error") or line.get("status") or {}
    http = grpc_http_status(status)
    message = status.get("message") if isinstance(status, dict) else None
    body = {"error": {"code": http, "message": str(message or "no answer")}}
    if isinstance(status, dict) and isinstance(status.get("status"), str):
        body["error"]["status"] = status["status"]
    return LineOutcome(key, http, error=error_for_status(http, {}, body))
