"""A content-addressed response cache in SQLite (stdlib `sqlite3`).

    cache = SQLiteCache("cache.db", key=lambda req: request_key("openai", url, model, body(req)))
    processor = BatchProcessor(client, BatchProcessorConfig(cache=cache))

The key is a SHA-256 of everything that decides the answer: provider, base URL, model and the
full request body. Writes are batched into a transaction committed at most every
`commit_interval` seconds and on `close()`; WAL mode lets another process read meanwhile.

The cache is an optimisation, never a reason to lose an answer or stop a batch:

- a path that cannot be a cache (a directory, a file that is not SQLite, empty or not, a
  database that cannot be opened) raises `CacheError` here, at construction, naming the
  path, and the file is left as it was;
- once running, `get` and `put` never raise. A request the cache cannot key or store (the
  key function refuses it, as Anthropic's body does for an embeddings line; a response that
  does not serialise) is skipped; a database error (disk full, read-only, corrupted under
  us) is logged once and turns writes off for the rest of the run, and a failed read is a
  miss. The caller still returns and writes the answer; `errors` counts what was skipped.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson

from ..types import CompletionRequest, CompletionResponse, Usage

__all__ = ["CacheError", "SQLiteCache", "request_key"]

log = logging.getLogger("llmbatch.cache")


class CacheError(Exception):
    """The cache path cannot be used (`str(err)` names it); raised only at construction."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


def request_key(provider: str, base_url: str, model: str | None, body: Any) -> str:
    """A stable key: the same provider, endpoint, model and body always give the same key.

    Credentials in the URL (`https://user:secret@host/v1`) are not part of the endpoint:
    rotating them must not empty the cache, so they are left out of the key.
    """
    blob = orjson.dumps(
        [provider, _without_userinfo(base_url), model, body], option=orjson.OPT_SORT_KEYS
    )
    return hashlib.sha256(blob).hexdigest()


def _without_userinfo(url: str) -> str:
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


# The first 16 bytes of every SQLite database file.
_SQLITE_MAGIC = b"SQLite format 3\x00"


def _open(path: Path) -> sqlite3.Connection:
    if path.is_dir():
        raise CacheError(path, "is a directory, not a SQLite file")
    if not path.parent.is_dir():
        raise CacheError(path, f"directory {path.parent} does not exist")
    # SQLite turns an empty file into a database: one just created by someone else (the
    # results file of this very run, opened before the cache) would be destroyed. So only a
    # path that does not exist becomes a new cache, and SQLite never touches another file.
    try:
        with open(path, "rb") as f:
            head = f.read(len(_SQLITE_MAGIC))
    except FileNotFoundError:
        head = _SQLITE_MAGIC
    except OSError as exc:
        raise CacheError(path, f"cannot be read ({exc.strerror or exc})") from None
    if not head:
        raise CacheError(
            path,
            "an empty file, not a SQLite database (another file's, maybe: a cache is "
            "created at a path that does not exist yet)",
        )
    if head != _SQLITE_MAGIC:
        raise CacheError(path, "not a SQLite database (or a corrupt one)")
    try:
        db = sqlite3.connect(path, isolation_level=None)
    except sqlite3.Error as exc:
        raise CacheError(path, f"cannot be opened ({exc})") from None
    try:
        db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()  # reads the header
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute(
            "CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, value BLOB NOT NULL)"
        )
        db.execute("SELECT key, value FROM responses LIMIT 0")
    except sqlite3.DatabaseError as exc:
        db.close()
        text = str(exc)
        if "not a database" in text or "malformed" in text:
            raise CacheError(path, "not a SQLite database (or a corrupt one)") from None
        if "no such column" in text:
            raise CacheError(path, "a SQLite database, but not an llmbatch cache") from None
        raise CacheError(path, f"cannot be used as a cache ({text})") from None
    return db


class SQLiteCache:
    """A `ResponseCache` backed by one SQLite file. Use from one thread.

    `errors` counts requests the cache skipped; `writable` turns False after a database
    error on write (the run goes on without caching new answers).
    """

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
        self._db = _open(self.path)
        self._in_tx = False
        self._last_commit = time.monotonic()
        self.hits = 0
        self.misses = 0
        self.errors = 0
        self.writable = True
        # Where the one warning goes (the CLI's sink points it at the terminal).
        self.warn: Callable[[str], None] = log.warning

    def _failed(self, what: str, exc: BaseException) -> None:
        self.errors += 1
        if self.errors == 1:  # once: a full disk must not flood the log
            self.warn(
                f"the cache {self.path}: {what} failed ({exc!r}); going on without it where "
                "it fails (answers are not affected)"
            )

    def get(self, request: CompletionRequest) -> CompletionResponse | None:
        """The cached answer, or None (a miss, or the cache could not answer)."""
        try:
            key = self._key(request)
            row = self._db.execute("SELECT value FROM responses WHERE key = ?", (key,)).fetchone()
            if row is None:
                self.misses += 1
                return None
            v = orjson.loads(row[0])
            response = CompletionResponse(
                content=v["content"],
                model=v["model"],
                usage=Usage(v["prompt_tokens"], v["completion_tokens"]),
                request_id=v["request_id"],
                finish_reason=v["finish_reason"],
                raw=v["raw"],
                status_code=v["status_code"],
                cached=True,
            )
        except Exception as exc:  # the key function, the database or a foreign row
            self._failed("read", exc)
            self.misses += 1
            return None
        self.hits += 1
        return response

    def put(self, request: CompletionRequest, response: CompletionResponse) -> None:
        """Store a fresh answer; skips (never raises) what cannot be stored."""
        if response.cached or not self.writable:
            return
        try:
            key = self._key(request)
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
        except Exception as exc:  # this request only: its key or its body
            self._failed("store", exc)
            return
        try:
            if not self._in_tx:
                self._db.execute("BEGIN")
                self._in_tx = True
            self._db.execute(
                "INSERT OR REPLACE INTO responses (key, value) VALUES (?, ?)", (key, value)
            )
            if time.monotonic() - self._last_commit >= self._commit_interval:
                self._commit()
        except sqlite3.Error as exc:
            self._disable(exc)

    def _disable(self, exc: sqlite3.Error) -> None:
        self.writable = False
        self._failed("write", exc)
        if self._in_tx:
            # SQLite may have rolled back already (SQLITE_FULL does).
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
            self._in_tx = False

    def _commit(self) -> None:
        if self._in_tx:
            self._db.execute("COMMIT")
            self._in_tx = False
        self._last_commit = time.monotonic()

    def commit(self) -> None:
        """Make the writes so far durable; a failure turns writes off, it does not raise."""
        try:
            self._commit()
        except sqlite3.Error as exc:
            self._disable(exc)

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0])

    def close(self) -> None:
        try:
            self.commit()
        finally:
            self._db.close()
