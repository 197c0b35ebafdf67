"""OpenAI's Batch API: a JSONL file uploaded with purpose=batch, then one batch per file.

    backend = OpenAIBatches(OpenAIClient(model="gpt-4o-mini"))
    file_id = await backend.upload(Path("chunk-0.input"), "llmbatch-run-0.jsonl")
    info = await backend.create("/v1/chat/completions gpt-4o-mini", path, file_id, tag="run:0")

Routes (under the client's base URL, e.g. https://api.openai.com/v1): POST /files (multipart,
purpose=batch), POST /batches {input_file_id, endpoint, completion_window, metadata}, GET
/batches/{id}, POST /batches/{id}/cancel, GET /batches?limit&after, GET /files/{id}/content,
DELETE /files/{id}. Statuses: validating, failed, in_progress, finalizing, completed, expired,
cancelling, cancelled. A batch holds one endpoint and one model, so both make the chunk key.
Each batch carries metadata {"llmbatch_chunk": "<run key>:<chunk>"}: a rerun finds a batch
whose create answer was lost by listing batches and matching it.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson

from ..clients._http import APIRequests, error_for_status
from ..clients.provider import ProviderClient
from ..errors import BatchAPIError, InvalidResponseError, LLMBatchError
from ..types import BatchRequest, CompletionRequest, CompletionResponse
from .backend import BatchInfo, LineOutcome, read_result_line
from .enqueued import REFUSAL_CODE
from .split import JSONL, OPENAI_CAPS

__all__ = ["TAG_KEY", "OpenAIBatches"]

TAG_KEY = "llmbatch_chunk"
COMPLETION_WINDOW = "24h"
_ENDED = {"completed", "failed", "expired", "cancelled"}
_ENDPOINTS = {
    "/v1/chat/completions": "chat",
    "/v1/responses": "responses",
    "/v1/completions": "completions",
    "/v1/embeddings": "embeddings",
}


class OpenAIBatches:
    name = "openai"
    caps = OPENAI_CAPS
    framing = JSONL
    uploads = True
    tags = True

    def __init__(self, client: ProviderClient) -> None:
        self.client = client
        self.api = APIRequests(client.http)

    def encode(self, item: BatchRequest) -> tuple[str, bytes, str]:
        request = item.request
        url = "/v1" + self.client.path_for(request)
        body = self.client.body_for(request)
        line = {"custom_id": item.id, "method": "POST", "url": url, "body": body}
        return f"{url} {body.get('model') or ''}", orjson.dumps(line) + b"\n", item.id

    def wire_id(self, rid: str) -> str:
        return rid

    def parse(self, key: str, line: LineOutcome) -> CompletionResponse:
        endpoint = _ENDPOINTS.get(key.split(" ", 1)[0], "chat")
        headers = {"x-request-id": line.request_id} if line.request_id else {}
        request = CompletionRequest(endpoint=endpoint)  # type: ignore[arg-type]
        return self.client.parse(request, line.status, headers, line.body)

    async def upload(self, path: Path, filename: str) -> str:
        body = await self.api.post_multipart(
            "/files", {"purpose": "batch"}, "file", str(path), filename
        )
        return str(_field(body, "id"))

    async def find_upload(self, filename: str, size: int, since: float) -> str | None:
        params = {"purpose": "batch", "limit": "10000", "order": "desc"}
        while True:
            page = await self.api.json("GET", "/files", params=params)
            data = _field(page, "data")
            for f in data:
                created = f.get("created_at")
                if isinstance(created, int | float) and created < since:
                    return None
                if f.get("filename") == filename and f.get("bytes") == size:
                    return str(f["id"])
            if not page.get("has_more") or not data:
                return None
            params = {**params, "after": str(data[-1]["id"])}

    async def create(self, key: str, path: Path, file_id: str | None, tag: str) -> BatchInfo:
        payload = {
            "input_file_id": file_id,
            "endpoint": key.split(" ", 1)[0],
            "completion_window": COMPLETION_WINDOW,
            "metadata": {TAG_KEY: tag},
        }
        return _info(await self.api.json("POST", "/batches", payload))

    async def get(self, batch_id: str) -> BatchInfo:
        return _info(await self.api.json("GET", f"/batches/{batch_id}"))

    async def cancel(self, batch_id: str) -> BatchInfo:
        return _info(await self.api.json("POST", f"/batches/{batch_id}/cancel"))

    async def recent(self, since: float) -> AsyncIterator[BatchInfo]:
        params = {"limit": "100"}
        while True:
            page = await self.api.json("GET", "/batches", params=params)
            data = _field(page, "data")
            for raw in data:
                info = _info(raw)
                if info.created_at is not None and info.created_at < since:
                    return
                yield info
            if not page.get("has_more") or not data:
                return
            params = {"limit": "100", "after": str(data[-1]["id"])}

    async def results(self, info: BatchInfo) -> AsyncIterator[LineOutcome]:
        # Answers in the output file, failures (and expired / cancelled lines) in the error
        # file; either may be absent.
        for key in ("output_file_id", "error_file_id"):
            file_id = info.raw.get(key)
            if not file_id:
                continue
            async for raw in self.api.lines(f"/files/{file_id}/content"):
                yield _outcome(raw)

    async def cleanup(self, info: BatchInfo, file_id: str | None) -> None:
        ids = [file_id, info.raw.get("output_file_id"), info.raw.get("error_file_id")]
        for fid in ids:
            if fid:
                # A file left behind costs storage, not a result.
                with contextlib.suppress(LLMBatchError):
                    await self.api.json("DELETE", f"/files/{fid}")


def _field(body: Any, name: str) -> Any:
    if not isinstance(body, dict) or name not in body:
        raise InvalidResponseError(f"answer lacks {name!r}: {str(body)[:200]}")
    return body[name]


def _info(body: Any) -> BatchInfo:
    status = str(_field(body, "status"))
    counts = body.get("request_counts") or {}
    listed = [e for e in ((body.get("errors") or {}).get("data") or ()) if isinstance(e, dict)]
    errors = tuple(
        (e.get("line"), f"{e.get('code') or 'error'}: {e.get('message') or ''}".strip())
        for e in listed
    )
    # Created over the enqueued-token limit: failed, but none of its lines was at fault.
    refused = next(
        (str(e.get("message") or "") for e in listed if e.get("code") == REFUSAL_CODE), None
    )
    ended = status in _ENDED
    metadata = body.get("metadata") or {}
    return BatchInfo(
        id=str(_field(body, "id")),
        status=status,
        ended=ended,
        total=int(counts.get("total") or 0),
        succeeded=int(counts.get("completed") or 0),
        failed=int(counts.get("failed") or 0),
        created_at=float(body["created_at"]) if body.get("created_at") is not None else None,
        outcome=status if ended else None,
        errors=errors,
        tag=metadata.get(TAG_KEY) if isinstance(metadata, dict) else None,
        refused=refused if status == "failed" else None,
        raw=body,
    )


def _outcome(raw: bytes) -> LineOutcome:
    line, custom_id = read_result_line(raw, lambda line: (line, str(line["custom_id"])))
    response, error = line.get("response"), line.get("error")
    if isinstance(response, dict) and response.get("status_code") == 200 and not error:
        return LineOutcome(custom_id, 200, response.get("body"), response.get("request_id") or None)
    if isinstance(error, dict) and error.get("code") in ("batch_expired", "batch_cancelled"):
        code = str(error["code"])
        return LineOutcome(
            custom_id, error=BatchAPIError(str(error.get("message") or code), code=code)
        )
    if isinstance(response, dict) and isinstance(response.get("status_code"), int):
        status = int(response["status_code"])
        return LineOutcome(
            custom_id, status, error=error_for_status(status, {}, response.get("body"))
        )
    message = (
        str(error.get("message") or error.get("code")) if isinstance(error, dict) else "no answer"
    )
    return LineOutcome(custom_id, error=BatchAPIError(message, code="batch_failed"))
