"""The simulator's Gemini File API, in the shapes of Google's API reference and the SDK.

    files = GeminiFiles(config, counters)
    files.add_to(app)                 # the routes below
    files.add_generated(name, data)   # a batch's responses file

    POST   /upload/v1beta/files                 resumable start: X-Goog-Upload-Protocol:
                                                resumable, -Command: start, body {"file":
                                                {"displayName", "mimeType"}}; answers the
                                                X-Goog-Upload-URL header
    POST   /upload/v1beta/files?upload_id=U     X-Goog-Upload-Command: upload[, finalize],
                                                X-Goog-Upload-Offset; finalize answers
                                                {"file": File} with X-Goog-Upload-Status: final
    GET    /v1beta/files[?pageSize&pageToken]   {"files": [...], "nextPageToken"?}
    GET    /v1beta/files/{id}    DELETE /v1beta/files/{id}
    GET    /v1beta/files/{id}:download?alt=media (and /download/v1beta/...): generated files only

A file that does not exist is a 403 PERMISSION_DENIED "... or it may not exist", as Google
answers. Files are capped at 2 GB (`--batch-max-bytes` lowers it). Also the helpers the
Gemini batch routes share: the key check, JSON and `google.rpc.Status` answers, pagination.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from .config import SimulatorConfig
from .counters import Counters
from .gemini_wire import google_error

__all__ = [
    "MAX_FILE_BYTES",
    "GeminiFile",
    "GeminiFiles",
    "base_url",
    "error",
    "json_response",
    "page",
    "rfc3339",
]

MAX_FILE_BYTES = 2 * 1024 * 1024 * 1024  # the File API's per-file limit

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def rfc3339(wall: float | None) -> str | None:
    if wall is None:
        return None
    micros = int((wall % 1) * 1_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(wall)) + f".{micros:06d}Z"


def json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status, body=orjson.dumps(body), content_type="application/json", headers=headers
    )


def error(status: int, message: str, **kw: Any) -> web.Response:
    return json_response(status, google_error(status, message, **kw))


@dataclass(slots=True)
class GeminiFile:
    name: str  # "files/abc"
    display_name: str
    mime_type: str
    data: bytes
    created: float
    source: str = "UPLOADED"  # or "GENERATED" (a batch's responses)

    def obj(self, base: str) -> dict[str, Any]:
        obj = {
            "name": self.name,
            "displayName": self.display_name,
            "mimeType": self.mime_type,
            "sizeBytes": str(len(self.data)),
            "createTime": rfc3339(self.created),
            "updateTime": rfc3339(self.created),
            "expirationTime": rfc3339(self.created + 48 * 3600),
            "sha256Hash": base64.b64encode(hashlib.sha256(self.data).digest()).decode(),
            "uri": f"{base}/v1beta/{self.name}",
            "state": "ACTIVE",
            "source": self.source,
        }
        if self.source == "GENERATED":
            obj["downloadUri"] = f"{base}/download/v1beta/{self.name}:download?alt=media"
        return obj


@dataclass(slots=True)
class _Upload:
    display_name: str
    mime_type: str
    size: int | None
    data: bytearray = field(default_factory=bytearray)


class GeminiFiles:
    """The File API of one simulator."""

    def __init__(self, config: SimulatorConfig, counters: Counters) -> None:
        self.config = config
        self.counters = counters
        self.max_file_bytes = config.batch_max_bytes or MAX_FILE_BYTES
        self.files: dict[str, GeminiFile] = {}
        self.uploads: dict[str, _Upload] = {}

    def add_to(self, app: web.Application) -> None:
        r = app.router
        r.add_post("/upload/v1beta/files", self.auth(self.upload))
        r.add_get("/v1beta/files", self.auth(self.list_files))
        r.add_get("/v1beta/files/{call}", self.auth(self.get_file))
        r.add_get("/download/v1beta/files/{call}", self.auth(self.get_file))
        r.add_delete("/v1beta/files/{id}", self.auth(self.delete_file))

    def auth(self, handler: Handler) -> Handler:
        """`handler`, behind the key check (a wrong key: 400 API_KEY_INVALID, as Google)."""

        async def checked(request: web.Request) -> web.StreamResponse:
            if (refused := self.refuse_key(request)) is not None:
                return refused
            return await handler(request)

        return checked

    def refuse_key(self, request: web.Request) -> web.Response | None:
        key = self.config.api_key
        if key is None or request.headers.get("x-goog-api-key") == key:
            return None
        return error(
            400, "API key not valid. Please pass a valid API key.", reason="API_KEY_INVALID"
        )

    def listing_refused(self) -> web.Response | None:
        status = self.config.batch_list_status
        if status is None:
            return None
        return error(status, "The caller does not have permission")

    def add_generated(self, name: str, data: bytes) -> None:
        self.files[name] = GeminiFile(
            name, name, "application/jsonl", data, time.time(), "GENERATED"
        )

    async def upload(self, request: web.Request) -> web.StreamResponse:
        upload_id = request.query.get("upload_id")
        command = request.headers.get("X-Goog-Upload-Command", "")
        if upload_id is None:
            if request.headers.get("X-Goog-Upload-Protocol") != "resumable" or command != "start":
                return error(400, "Only the resumable upload protocol is supported here.")
            try:
                body = orjson.loads(await request.read() or b"{}")
            except orjson.JSONDecodeError as exc:
                return error(400, f"Invalid JSON payload received. {exc}")
            meta = body.get("file") if isinstance(body, dict) else None
            meta = meta if isinstance(meta, dict) else {}
            declared = request.headers.get("X-Goog-Upload-Header-Content-Length")
            size = int(declared) if declared and declared.isdigit() else None
            if size is not None and size > self.max_file_bytes:
                return error(400, f"File too large: {size} bytes; the limit is 2 GB.")
            mime = request.headers.get("X-Goog-Upload-Header-Content-Type") or str(
                meta.get("mimeType") or "application/octet-stream"
            )
            uid = secrets.token_hex(12)
            self.uploads[uid] = _Upload(str(meta.get("displayName") or ""), mime, size)
            url = f"{base_url(request)}/upload/v1beta/files?upload_id={uid}"
            url += "&upload_protocol=resumable"
            headers = {"X-Goog-Upload-URL": url, "X-Goog-Upload-Status": "active"}
            return web.Response(status=200, headers=headers)
        pending = self.uploads.get(upload_id)
        if pending is None:
            return error(404, f"No upload session {upload_id!r}.")
        offset = request.headers.get("X-Goog-Upload-Offset", "0")
        if not offset.isdigit() or int(offset) != len(pending.data):
            return error(400, f"X-Goog-Upload-Offset {offset} != {len(pending.data)} received.")
        while chunk := await request.content.read(1 << 20):
            pending.data += chunk
            if len(pending.data) > self.max_file_bytes:
                del self.uploads[upload_id]
                return error(400, "File too large; the limit is 2 GB.")
        if "finalize" not in command:
            return web.Response(status=200, headers={"X-Goog-Upload-Status": "active"})
        del self.uploads[upload_id]
        stored = GeminiFile(
            f"files/{secrets.token_hex(6)}",
            pending.display_name,
            pending.mime_type,
            bytes(pending.data),
            time.time(),
        )
        self.files[stored.name] = stored
        self.counters.files_uploaded += 1
        return json_response(
            200, {"file": stored.obj(base_url(request))}, {"X-Goog-Upload-Status": "final"}
        )

    def _listing_refused(self) -> web.Response | None:
        status = self.config.batch_list_status
        if status is None:
            return None
        return error(status, "The caller does not have permission")

    async def list_files(self, request: web.Request) -> web.StreamResponse:
        if (refused := self.listing_refused()) is not None:
            return refused
        base = base_url(request)
        found = [f.obj(base) for f in reversed(self.files.values())]
        listed, token = page(found, request)
        body: dict[str, Any] = {"files": listed} if listed else {}
        if token:
            body["nextPageToken"] = token
        return json_response(200, body)

    async def get_file(self, request: web.Request) -> web.StreamResponse:
        call = request.match_info["call"]
        name, _, verb = call.partition(":")
        stored = self.files.get(f"files/{name}")
        if stored is None:
            return error(
                403, f"You do not have permission to access the File {name} or it may not exist."
            )
        if verb == "download":
            if stored.source != "GENERATED":
                return error(400, "Only generated files can be downloaded.")
            return web.Response(body=stored.data, content_type="application/octet-stream")
        if verb:
            return error(404, f"Method not found: {verb!r}.")
        return json_response(200, stored.obj(base_url(request)))

    async def delete_file(self, request: web.Request) -> web.StreamResponse:
        name = f"files/{request.match_info['id']}"
        if self.files.pop(name, None) is None:
            return error(
                403, f"You do not have permission to access the File {name} or it may not exist."
            )
        self.counters.files_deleted += 1
        return json_response(200, {})


def page(items: list[dict[str, Any]], request: web.Request) -> tuple[list[Any], str | None]:
    """One page of `items` (pageSize, pageToken = the offset as text)."""
    try:
        size = int(request.query.get("pageSize") or 50)
        start = int(request.query.get("pageToken") or 0)
    except ValueError:
        return [], None
    size = max(1, min(size, 1000))
    end = start + size
    return items[start:end], (str(end) if end < len(items) else None)


def base_url(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"
