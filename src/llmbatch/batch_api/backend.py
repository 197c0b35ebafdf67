"""What the runner needs from a provider's batch API, and the values it returns.

    backend = backend_for(client)            # llmbatch.batch_api.providers: OpenAIBatches...
    key, line, wire = backend.encode(BatchRequest("a", request))
    info = await backend.create(key, input_path, file_id, tag="run:0")
    async for line in backend.results(info): ...     # LineOutcome per answered request

A backend speaks one provider's batch API over the client's own HTTP session and headers
(`APIRequests`), builds each line from the client's `body_for` and parses each answer with
its `parse`, so a batch line and a realtime line of the same request are the same.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import orjson

from ..errors import InvalidResponseError
from ..types import BatchRequest, CompletionResponse
from .split import Caps, Framing

__all__ = ["BatchBackend", "BatchInfo", "LineOutcome", "read_result_line"]


@dataclass(slots=True, frozen=True)
class BatchInfo:
    """A provider batch as last seen. `status` is the provider's own word; `ended` is True
    once no more results will come; `outcome` then says how it ended: completed, expired,
    cancelled or failed (the batch as a whole; `errors` says why, by input line). `refused`:
    the provider's message when it failed for the enqueued-token limit (`enqueued`): not a
    failure of its lines, the chunk is created again when there is room."""

    id: str
    status: str
    ended: bool
    total: int
    succeeded: int
    failed: int
    created_at: float | None = None
    outcome: str | None = None
    errors: tuple[tuple[int | None, str], ...] = ()
    tag: str | None = None
    refused: str | None = None
    raw: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True, frozen=True)
class LineOutcome:
    """One answered line of a batch: the provider's custom_id and either the reply body
    (`status`, `body`, `request_id`) or an `error` already mapped to the error tree."""

    custom_id: str
    status: int = 200
    body: Any = None
    request_id: str | None = None
    error: BaseException | None = None


class BatchBackend(Protocol):
    """One provider's batch API. `uploads`: inputs go up as files first (a backend with an
    `inline_max_bytes` attribute, Gemini, sends chunks up to that size inline instead); `tags`:
    a batch carries our metadata tag (`BatchInfo.tag`), so a lost create is found exactly."""

    name: str
    caps: Caps
    framing: Framing
    uploads: bool
    tags: bool

    def encode(self, item: BatchRequest) -> tuple[str, bytes, str]:
        """(chunk key, the request's line on the wire, its custom_id there). Raises
        `LLMBatchError` if the client cannot express the request."""
        ...

    def wire_id(self, rid: str) -> str:
        """The custom_id an older chunk (whose ids file kept only ids) sent for `rid`."""
        ...

    def parse(self, key: str, line: LineOutcome) -> CompletionResponse:
        """The response of a succeeded line, exactly as the realtime client parses it."""
        ...

    async def upload(self, path: Path, filename: str) -> str: ...

    async def find_upload(self, filename: str, size: int, since: float) -> str | None:
        """The id of a file uploaded since `since` as `filename` with `size` bytes (an
        upload whose answer was lost), or None."""
        ...

    async def create(self, key: str, path: Path, file_id: str | None, tag: str) -> BatchInfo: ...

    async def get(self, batch_id: str) -> BatchInfo: ...

    async def cancel(self, batch_id: str) -> BatchInfo: ...

    def recent(self, since: float) -> AsyncIterator[BatchInfo]:
        """Batches newest first, until one created before `since` (epoch seconds)."""
        ...

    def results(self, info: BatchInfo) -> AsyncIterator[LineOutcome]: ...

    async def cleanup(self, info: BatchInfo, file_id: str | None) -> None:
        """Delete what the batch left at the provider (files), where that applies."""
        ...


T = TypeVar("T")


def read_result_line(raw: bytes, read: Callable[[Any], T]) -> T:
    """`read` applied to a result line's JSON: a line that is not JSON, or lacks what `read`
    takes from it (a `KeyError` or `TypeError`), is an `InvalidResponseError` quoting it."""
    try:
        return read(orjson.loads(raw))
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise InvalidResponseError(
            f"a batch result line is not valid ({exc}): {raw[:200]!r}"
        ) from None
