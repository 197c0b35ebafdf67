"""A content-addressed response cache in SQLite (stdlib `sqlite3`).

    cache = SQLiteCache("cache.db", key=lambda req: request_key("openai", url, model, body(req)))
    processor = BatchProcessor(client, BatchProcessorConfig(cache=cache))

The key is a SHA-256 of everything that decides the answer: provider, base URL, model and the
full request body. Writes are batched into a transaction committed at most every
`commit_interval` seconds and on `close()`; WAL mode lets another process read meanwhile.
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from ..types import CompletionRequest, CompletionResponse, Usage

__all__ = ["SQLiteCache", "request_key"]


def request_key(provider: str, base_url: str, model: str | None, body: Any) -> str:
    """A stable key: the same provider, endpoint, model and body always give the same key."""
    blob = orjson.dumps([provider, base_url, model, body], option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(blob).hexdigest()


class SQLiteCache:
    """A `ResponseCache` backed by one SQLite file. Use from one thread."""

    def __init__(
        self,
        path: str | Path,
        key: Callable[[CompletionRequest], str],
        *,
        commit_interval: float = 1.0,
    ) -> None:
        self.path = Path(path)
        self._key = key
        self._commit_interval = commit_interval
        self._db = sqlite3.connect(self.path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, value BLOB NOT NULL)"
        )
        self._in_tx = False
        self._last_commit = time.monotonic()
        self.hits = 0
        self.misses = 0

    def get(self, request: CompletionRequest) -> CompletionResponse | None:
        row = self._db.execute(
            "SELECT value FROM responses WHERE key = ?", (self._key(request),)
        ).fetchone()
        if row is None:
            self.misses += 1
            return None
        self.hits += 1
        v = orjson.loads(row[0])
        return CompletionResponse(
            content=v["content"],
            model=v["model"],
            usage=Usage(v["prompt_tokens"], v["completion_tokens"]),
            request_id=v["request_id"],
            finish_reason=v["finish_reason"],
            raw=v["raw"],
            status_code=v["status_code"],
            cached=True,
        )

    def put(self, request: CompletionRequest, response: CompletionResponse) -> None:
        if response.cached:
            return
        value = orjson.dumps(
            {
                "content": response.content,
                "model": response.model,
                "prompt_tokens": response.usage.prompt_tokens,
                "completion_tokens": response.usage.completion_tokens,
                "request_id": response.request_id,
                "finish_reason": response.finish_reason,
                "raw": response.raw,
                "status_code": response.status_code,
            }
        )
        if not self._in_tx:
            self._db.execute("BEGIN")
            self._in_tx = True
        self._db.execute(
            "INSERT OR REPLACE INTO responses (key, value) VALUES (?, ?)",
            (self._key(request), value),
        )
        if time.monotonic() - self._last_commit >= self._commit_interval:
            self.commit()

    def commit(self) -> None:
        if self._in_tx:
            self._db.execute("COMMIT")
            self._in_tx = False
        self._last_commit = time.monotonic()

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0])

    def close(self) -> None:
        self.commit()
        self._db.close()
