"""Cutting a stream of requests into provider batches under the provider's caps.

    splitter = Splitter(directory, OPENAI_CAPS, framing=JSONL, start=0)
    for key, rid, line, tokens in encoded:
        if (chunk := splitter.add(key, rid, line, tokens)) is not None:   # one just filled
            submit(chunk)
    for chunk in splitter.finish():                          # the partly filled rest
        submit(chunk)

Each chunk is written to disk as it fills (`chunk-N.input`, the exact body or file to send)
with its ids beside it (`chunk-N.ids`: one JSON string per line, or `[id, custom_id]` when
the id goes on the wire as another custom_id), so memory holds no more than
the lines being encoded, whatever the input's size. Requests with different keys (OpenAI: the
endpoint and model, one of each per batch) go to different chunks. A chunk closes before it
would pass any cap: requests, bytes (framing included), and an optional estimated-token cap.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import orjson

__all__ = [
    "ANTHROPIC_CAPS",
    "JSONL",
    "JSON_REQUESTS",
    "OPENAI_CAPS",
    "Caps",
    "Chunk",
    "Framing",
    "Splitter",
    "TooLarge",
    "ids_digest",
    "read_ids",
]

MB = 1024 * 1024


@dataclass(slots=True, frozen=True)
class Caps:
    """The most one batch may hold. `max_tokens` (estimated input tokens) is optional."""

    max_requests: int
    max_bytes: int
    max_tokens: int | None = None

    def lowered(self, max_requests: int | None = None, max_tokens: int | None = None) -> Caps:
        """These caps, with the user's lower request cap and token cap applied."""
        return Caps(
            min(self.max_requests, max_requests or self.max_requests),
            self.max_bytes,
            max_tokens if max_tokens is not None else self.max_tokens,
        )


# The providers' documented limits: OpenAI 50,000 requests and 200 MB per input file;
# Anthropic 100,000 requests and 256 MB per Message Batch.
OPENAI_CAPS = Caps(50_000, 200 * MB)
ANTHROPIC_CAPS = Caps(100_000, 256 * MB)


@dataclass(slots=True, frozen=True)
class Framing:
    """What surrounds and separates the lines of one chunk on the wire."""

    head: bytes
    sep: bytes
    tail: bytes


JSONL = Framing(b"", b"", b"")  # OpenAI: an uploaded JSONL file; each line ends in "\n"
JSON_REQUESTS = Framing(b'{"requests":[', b",", b"]}")  # Anthropic: one JSON body


class TooLarge(ValueError):
    """One request alone is over a cap: no batch can hold it."""


@dataclass(slots=True)
class Chunk:
    """One batch's worth of requests, written to `input_path` and `ids_path`."""

    n: int
    key: str
    input_path: Path
    ids_path: Path
    count: int = 0
    bytes: int = 0
    tokens: int = 0
    digest: str = ""
    cost: float = 0.0  # the worst case (USD) of its requests, when a budget is kept


def ids_digest(ids: list[str]) -> str:
    """The digest the ledger keeps of a chunk's ids (checked when the ids file is read back)."""
    h = hashlib.sha256()
    for rid in ids:
        h.update(orjson.dumps(rid) + b"\n")
    return h.hexdigest()


def read_ids(path: Path) -> list[tuple[str, str | None]]:
    """The (id, custom_id on the wire or None if the id itself) pairs of a chunk's ids file."""
    entries: list[tuple[str, str | None]] = []
    with open(path, "rb") as f:
        for line in f:
            value = orjson.loads(line)
            if isinstance(value, list):
                entries.append((str(value[0]), str(value[1])))
            else:
                entries.append((str(value), None))
    return entries


class _Open:
    """A chunk being written: its two files and running totals."""

    def __init__(self, chunk: Chunk, framing: Framing) -> None:
        self.chunk = chunk
        self.framing = framing
        self.data: BinaryIO = open(chunk.input_path, "wb")  # noqa: SIM115 - closed in close()
        self.ids: BinaryIO = open(chunk.ids_path, "wb")  # noqa: SIM115
        self.hash = hashlib.sha256()
        self.data.write(framing.head)
        chunk.bytes = len(framing.head) + len(framing.tail)

    def fits(self, caps: Caps, line: bytes, tokens: int) -> bool:
        c = self.chunk
        extra = len(line) + (len(self.framing.sep) if c.count else 0)
        return (
            c.count + 1 <= caps.max_requests
            and c.bytes + extra <= caps.max_bytes
            and (caps.max_tokens is None or c.count == 0 or c.tokens + tokens <= caps.max_tokens)
        )

    def add(self, rid: str, line: bytes, tokens: int, cost: float, wire: str | None) -> None:
        c = self.chunk
        c.cost += cost
        if c.count:
            self.data.write(self.framing.sep)
            c.bytes += len(self.framing.sep)
        self.data.write(line)
        encoded = orjson.dumps(rid) + b"\n"
        # The digest is of the ids alone; the custom_id sent (when it differs) is kept beside.
        self.ids.write(encoded if wire in (None, rid) else orjson.dumps([rid, wire]) + b"\n")
        self.hash.update(encoded)
        c.count += 1
        c.bytes += len(line)
        c.tokens += tokens

    def close(self) -> Chunk:
        """Finish both files and make them durable: the ledger will point at them."""
        self.data.write(self.framing.tail)
        for f in (self.data, self.ids):
            f.flush()
            os.fsync(f.fileno())
            f.close()
        self.chunk.digest = self.hash.hexdigest()
        return self.chunk

    def discard(self) -> None:
        for f in (self.data, self.ids):
            f.close()
        for p in (self.chunk.input_path, self.chunk.ids_path):
            p.unlink(missing_ok=True)


class Splitter:
    """Writes requests into chunk files under `caps`, one open chunk per key.

    `start` is the number of the first chunk (the ledger's next free number). `add` raises
    `TooLarge` for a request that alone passes the byte cap; the caller fails that one line.
    """

    def __init__(self, directory: Path, caps: Caps, *, framing: Framing, start: int = 0) -> None:
        self.directory = directory
        self.caps = caps
        self.framing = framing
        self._next = start
        self._open: dict[str, _Open] = {}

    def reserve(self, count: int) -> int:
        """Take `count` chunk numbers for chunks cut elsewhere; returns the first."""
        first, self._next = self._next, self._next + count
        return first

    @property
    def open_cost(self) -> float:
        """The worst case (USD) of the requests in open chunks: not yet reserved."""
        return sum(c.chunk.cost for c in self._open.values())

    def open_chunk(self, key: str) -> int | None:
        """The number of the open chunk for `key` (where the last request of it went)."""
        current = self._open.get(key)
        return None if current is None else current.chunk.n

    def add(
        self,
        key: str,
        rid: str,
        line: bytes,
        tokens: int,
        cost: float = 0.0,
        wire: str | None = None,
    ) -> Chunk | None:
        """Add one request; return the chunk it closed, if any (the request starts the next).
        `cost`: its worst case in USD, summed in `Chunk.cost`; `wire`: its custom_id on the
        wire, when not `rid`."""
        if len(line) + len(self.framing.head) + len(self.framing.tail) > self.caps.max_bytes:
            raise TooLarge(
                f"the request is {len(line):,} bytes encoded; a batch holds at most "
                f"{self.caps.max_bytes:,}"
            )
        closed = None
        current = self._open.get(key)
        if current is not None and not current.fits(self.caps, line, tokens):
            del self._open[key]
            closed = current.close()
            current = None
        if current is None:
            current = self._open[key] = self._new(key)
        current.add(rid, line, tokens, cost, wire)
        return closed

    def finish(self) -> list[Chunk]:
        """Close every open chunk (in the order they were opened)."""
        chunks = [c.close() for c in self._open.values() if c.chunk.count]
        for c in self._open.values():
            if not c.chunk.count:
                c.discard()
        self._open.clear()
        return chunks

    def discard(self) -> None:
        """Drop the open chunks' files (the run stopped before they were submitted)."""
        for c in self._open.values():
            c.discard()
        self._open.clear()

    def _new(self, key: str) -> _Open:
        n, self._next = self._next, self._next + 1
        chunk = Chunk(
            n,
            key,
            self.directory / f"chunk-{n}.input",
            self.directory / f"chunk-{n}.ids",
        )
        return _Open(chunk, self.framing)
