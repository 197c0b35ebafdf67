"""Anthropic's Message Batches: requests sent inline, results read from `results_url`.

    backend = AnthropicBatches(AnthropicClient(model="claude-haiku-4-5"))
    info = await backend.create("messages", Path("chunk-0.input"), None, tag="run:0")

Routes (under the client's base URL, e.g. https://api.anthropic.com): POST
/v1/messages/batches {"requests": [{custom_id, params}]}, GET /v1/messages/batches/{id},
POST /v1/messages/batches/{id}/cancel, GET /v1/messages/batches?limit&after_id, and the
batch's `results_url` (JSONL, in any order; each line's `result.type` is succeeded, errored,
canceled or expired). processing_status is in_progress, canceling or ended.

A custom_id must match ^[a-zA-Z0-9_-]{1,64}$: other ids (file paths, long keys) are sent as
"llmb_" + a hash of the id. Ids that already start with "llmb_" are hashed too, so a mapped
id never collides with a user's own. Each custom_id then ends in "_" + a digest of the
request's params (`proof_id`), and the chunk's ids file keeps it, to map answers back.

Why the digest: batches carry no metadata and the API never shows a batch's requests, so
a batch whose create answer was lost can only be told from another run's batch of the same
size by its results. Their custom_ids name both the ids and the content of the requests
that batch ran, so the runner adopts it only when they are exactly its chunk's.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson

from ..clients._http import APIRequests, error_for_status
from ..clients.provider import ProviderClient
from ..errors import BatchAPIError, InvalidResponseError
from ..types import BatchRequest, CompletionRequest, CompletionResponse
from .backend import BatchInfo, LineOutcome, read_result_line
from .split import ANTHROPIC_CAPS, JSON_REQUESTS

__all__ = ["AnthropicBatches", "proof_id", "wire_id"]

_SAFE = re.compile(r"[a-zA-Z0-9_-]{1,64}")
_PREFIX = "llmb_"
_PROOF = 17  # "_" + 16 hex digits of the params' digest
ROUTE = "/v1/messages/batches"
# Anthropic's error types, as the HTTP status they stand for (so the tree maps them).
_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "overloaded_error": 529,
}


def wire_id(rid: str) -> str:
    """`rid` if Anthropic accepts it as a custom_id, else "llmb_" + 32 hex digits of its hash."""
    if _SAFE.fullmatch(rid) and not rid.startswith(_PREFIX):
        return rid
    return _PREFIX + hashlib.blake2b(rid.encode(), digest_size=16).hexdigest()


def proof_id(rid: str, params: bytes) -> str:
    """The custom_id sent for `rid` whose params are `params` (JSON bytes): `wire_id(rid)`
    (hashed if too long to take the suffix) + "_" + 16 hex digits of the params' hash."""
    base = wire_id(rid)
    if len(base) + _PROOF > 64:
        base = _PREFIX + hashlib.blake2b(rid.encode(), digest_size=16).hexdigest()
    return f"{base}_{hashlib.blake2b(params, digest_size=8).hexdigest()}"


class AnthropicBatches:
    name = "anthropic"
    caps = ANTHROPIC_CAPS
    framing = JSON_REQUESTS
    uploads = False
    tags = False

    def __init__(self, client: ProviderClient) -> None:
        self.client = client
        self.api = APIRequests(client.http)

    def encode(self, item: BatchRequest) -> tuple[str, bytes, str]:
        params = orjson.dumps(self.client.body_for(item.request))
        custom_id = proof_id(item.id, params)
        line = b'{"custom_id":' + orjson.dumps(custom_id) + b',"params":' + params + b"}"
        return "messages", line, custom_id

    def wire_id(self, rid: str) -> str:
        return wire_id(rid)

    def parse(self, key: str, line: LineOutcome) -> CompletionResponse:
        return self.client.parse(CompletionRequest(), 200, {}, line.body)

    async def upload(self, path: Path, filename: str) -> str:
        raise NotImplementedError("Anthropic batches take their requests inline")

    async def find_upload(self, filename: str, size: int, since: float) -> str | None:
        return None

    async def create(self, key: str, path: Path, file_id: str | None, tag: str) -> BatchInfo:
        return _info(await self.api.post_file(ROUTE, str(path), "application/json"))

    async def get(self, batch_id: str) -> BatchInfo:
        return _info(await self.api.json("GET", f"{ROUTE}/{batch_id}"))

    async def cancel(self, batch_id: str) -> BatchInfo:
        return _info(await self.api.json("POST", f"{ROUTE}/{batch_id}/cancel"))

    async def recent(self, since: float) -> AsyncIterator[BatchInfo]:
        params = {"limit": "100"}
        while True:
            page = await self.api.json("GET", ROUTE, params=params)
            data = page.get("data") if isinstance(page, dict) else None
            if not isinstance(data, list):
                raise InvalidResponseError(f"batch list lacks 'data': {str(page)[:200]}")
            for raw in data:
                info = _info(raw)
                if info.created_at is not None and info.created_at < since:
                    return
                yield info
            if not page.get("has_more") or not data:
                return
            params = {"limit": "100", "after_id": str(page.get("last_id") or data[-1]["id"])}

    async def results(self, info: BatchInfo) -> AsyncIterator[LineOutcome]:
        url = info.raw.get("results_url")
        if not url:
            return
        async for raw in self.api.lines(str(url)):
            yield _outcome(raw)

    async def cleanup(self, info: BatchInfo, file_id: str | None) -> None:
        return None  # nothing uploaded; results expire at the provider after 29 days


def _when(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _info(body: Any) -> BatchInfo:
    if not isinstance(body, dict) or "id" not in body or "processing_status" not in body:
        raise InvalidResponseError(f"not a message batch: {str(body)[:200]}")
    status = str(body["processing_status"])
    counts = body.get("request_counts") or {}
    n = {
        k: int(counts.get(k) or 0)
        for k in ("processing", "succeeded", "errored", "canceled", "expired")
    }
    ended = status == "ended"
    outcome = None
    if ended:
        # Every request has its own result line; this is what lines without one are told.
        if body.get("cancel_initiated_at"):
            outcome = "cancelled"
        elif n["expired"]:
            outcome = "expired"
        else:
            outcome = "completed"
    return BatchInfo(
        id=str(body["id"]),
        status=status,
        ended=ended,
        total=sum(n.values()),
        succeeded=n["succeeded"],
        failed=n["errored"] + n["canceled"] + n["expired"],
        created_at=_when(body.get("created_at")),
        outcome=outcome,
        raw=body,
    )


def _outcome(raw: bytes) -> LineOutcome:
    custom_id, result, kind = read_result_line(
        raw, lambda line: (str(line["custom_id"]), line["result"], line["result"]["type"])
    )
    if kind == "succeeded":
        message = result.get("message")
        return LineOutcome(custom_id, 200, message, (message or {}).get("id"))
    if kind == "expired":
        error = BatchAPIError("the batch expired before this request ran", code="batch_expired")
        return LineOutcome(custom_id, error=error)
    if kind == "canceled":
        error = BatchAPIError(
            "the batch was cancelled before this request ran", code="batch_cancelled"
        )
        return LineOutcome(custom_id, error=error)
    # errored: {"type": "error", "error": {"type": "invalid_request_error", "message": ...}}
    body = result.get("error") if isinstance(result.get("error"), dict) else {}
    inner = body["error"] if isinstance(body.get("error"), dict) else body
    status = _STATUS.get(str(inner.get("type")), 500)
    return LineOutcome(custom_id, status, error=error_for_status(status, {}, body))
