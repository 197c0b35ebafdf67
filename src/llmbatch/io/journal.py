"""The results journal: the output file, written so that a crash never loses a result.

    with Journal("out.jsonl") as journal:          # takes out.jsonl.lock, or raises JournalLocked
        scan = journal.scan                         # ids already done, torn tail repaired
        journal.write(result)                       # one line, straight to the kernel

Lines are in the OpenAI Batch output format, one per request, appended as results arrive:

    {"id": "batch_req_...", "custom_id": "...", "response": {"status_code", "request_id",
     "body"}, "error": null | {"code", "message"}, "llmbatch": {"duration", "attempts",
     "cached", "usage"}}

Each line is one `write(2)` on an O_APPEND descriptor, so a crash leaves at worst one torn
last line, which the next open cuts off (that request is then simply redone). Data is
fsync'ed at least every `fsync_interval` seconds (via `sync_if_due`) and on close. When an id
ends up with more than one line (a failed one redone with --retry-failed, or a crash in
between), close rewrites the file keeping each id's newest line, through a temp file and an
atomic rename. A second process on the same file is refused by a `flock` on `FILE.lock`,
which the kernel releases even when the holder is killed with -9.
"""

from __future__ import annotations

import fcntl
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from ..errorlog import redact
from ..errors import error_code
from ..stats import BatchStats, StatsCollector
from ..types import BatchResult

__all__ = [
    "Journal",
    "JournalLocked",
    "JournalScan",
    "iter_records",
    "journal_stats",
    "result_line",
]


class JournalLocked(RuntimeError):
    """Another run is writing the same output file."""


@dataclass(slots=True)
class JournalScan:
    """What an existing output file holds. Sets are of custom_ids (newest line wins)."""

    ok: set[str] = field(default_factory=set)
    failed: set[str] = field(default_factory=set)
    lines: int = 0
    repaired_bytes: int = 0
    corrupt_lines: list[int] = field(default_factory=list)
    duplicated: set[str] = field(default_factory=set)


def _safe_body(body: Any) -> Any:
    """Error bodies may echo what was sent: mask anything shaped like a key."""
    if body is None:
        return None
    text = body if isinstance(body, str) else orjson.dumps(body).decode()
    masked = redact(text)
    if masked == text:
        return body
    try:
        return orjson.loads(masked) if not isinstance(body, str) else masked
    except orjson.JSONDecodeError:
        return masked


def result_line(result: BatchResult) -> bytes:
    """The output line for one result, newline included."""
    resp, err = result.response, result.error
    meta: dict[str, Any] = {
        "duration": round(result.duration, 6),
        "attempts": result.attempts,
        "cached": bool(resp is not None and resp.cached),
    }
    if err is None and resp is not None:
        body = resp.raw if resp.raw is not None else {"content": resp.content}
        response: dict[str, Any] | None = {
            "status_code": resp.status_code,
            "request_id": resp.request_id,
            "body": body,
        }
        meta["usage"] = {
            "prompt_tokens": resp.usage.prompt_tokens,
            "completion_tokens": resp.usage.completion_tokens,
        }
        error = None
    else:
        status = getattr(err, "status_code", None)
        response = None
        if status is not None:
            body = _safe_body(getattr(err, "body", None))
            response = {"status_code": status, "request_id": None, "body": body}
        error = {"code": error_code(err), "message": redact(f"{type(err).__name__}: {err}")}
    line = {
        "id": f"batch_req_{uuid.uuid4().hex}",
        "custom_id": result.id,
        "response": response,
        "error": error,
        "llmbatch": meta,
    }
    return orjson.dumps(line) + b"\n"


def iter_records(path: str | Path) -> Iterator[tuple[int, dict[str, Any] | None]]:
    """(line number, decoded line or None if it does not parse) for each complete line."""
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            if not raw.endswith(b"\n"):
                return  # a torn tail is never data
            try:
                obj = orjson.loads(raw)
            except orjson.JSONDecodeError:
                yield n, None
                continue
            yield n, obj if isinstance(obj, dict) and "custom_id" in obj else None


def journal_stats(path: str | Path) -> BatchStats:
    """Statistics of an output file, one line per request (as the journal leaves it)."""
    collector = StatsCollector()
    for _, rec in iter_records(path):
        if rec is None:
            continue
        meta = rec.get("llmbatch") or {}
        usage = meta.get("usage") or {}
        err = rec.get("error")
        collector.add_values(
            str(rec["custom_id"]),
            duration=float(meta.get("duration", 0.0)),
            attempts=int(meta.get("attempts", 0)),
            error_type=None if err is None else str(err.get("code") or "unknown"),
            prompt_tokens=int(usage.get("prompt_tokens", 0)),
            completion_tokens=int(usage.get("completion_tokens", 0)),
            cached=bool(meta.get("cached", False)),
        )
    return collector.snapshot()


class Journal:
    """The output file of one run. Open it with `with` (or `open()` / `close()`)."""

    def __init__(
        self,
        path: str | Path,
        *,
        fsync_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self.fsync_interval = fsync_interval
        self._clock = clock
        self._fd: int | None = None
        self._lock_fd: int | None = None
        self._last_sync = 0.0
        self._dirty = False
        self.scan = JournalScan()
        self.written = 0
        self._rewritten: set[str] = set()

    # -- lifecycle --------------------------------------------------------------------------

    def open(self) -> JournalScan:
        self._lock()
        try:
            self.scan = self._scan_and_repair()
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except BaseException:
            self._unlock()
            raise
        self._last_sync = self._clock()
        return self.scan

    def close(self) -> None:
        if self._fd is not None:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None
            if self.scan.duplicated or self._rewritten:
                self._compact()
        self._unlock()

    def __enter__(self) -> Journal:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing ----------------------------------------------------------------------------

    def write(self, result: BatchResult) -> None:
        self.write_line(result.id, result_line(result))

    def write_line(self, custom_id: str, line: bytes) -> None:
        """Append a line made by `result_line` (possibly in another process)."""
        assert self._fd is not None, "journal is not open"
        view = memoryview(line)
        while view:  # a regular file takes it all at once; the loop is for the odd EINTR
            n = os.write(self._fd, view)
            view = view[n:]
        self.written += 1
        self._dirty = True
        if custom_id in self.scan.ok or custom_id in self.scan.failed:
            self._rewritten.add(custom_id)
        self.sync_if_due()

    def sync_if_due(self) -> None:
        if self._dirty and self._fd is not None:
            now = self._clock()
            if now - self._last_sync >= self.fsync_interval:
                os.fsync(self._fd)
                self._last_sync = now
                self._dirty = False

    # -- internals --------------------------------------------------------------------------

    def _lock(self) -> None:
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise JournalLocked(
                f"{self.path} is being written by another llmbatch run (pid {holder}); "
                f"wait for it to finish or stop it"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            # The lock file stays: removing it would let a waiting run lock a dead inode.
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def _scan_and_repair(self) -> JournalScan:
        scan = JournalScan()
        if not self.path.exists():
            return scan
        size = self.path.stat().st_size
        if size:
            with open(self.path, "rb+") as f:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    # Find the end of the last complete line and cut the torn one off.
                    pos, chunk = size, 65536
                    cut = 0
                    while pos > 0:
                        start = max(0, pos - chunk)
                        f.seek(start)
                        block = f.read(pos - start)
                        idx = block.rfind(b"\n")
                        if idx >= 0:
                            cut = start + idx + 1
                            break
                        pos = start
                    f.truncate(cut)
                    os.fsync(f.fileno())
                    scan.repaired_bytes = size - cut
        ok, failed = scan.ok, scan.failed
        for n, rec in iter_records(self.path):
            scan.lines = n
            if rec is None:
                scan.corrupt_lines.append(n)
                continue
            cid = rec["custom_id"]
            if cid in ok or cid in failed:
                scan.duplicated.add(cid)
                ok.discard(cid)
                failed.discard(cid)
            (ok if rec.get("error") is None else failed).add(cid)
        return scan

    def _compact(self) -> None:
        """Keep only the newest line of every id that has several; atomic via rename."""
        multi = self.scan.duplicated | self._rewritten
        newest: dict[str, int] = {}
        for n, rec in iter_records(self.path):
            if rec is not None and rec["custom_id"] in multi:
                newest[rec["custom_id"]] = n
        tmp = self.path.with_name(self.path.name + ".compact.tmp")
        with open(self.path, "rb") as src, open(tmp, "wb") as dst:
            for n, raw in enumerate(src, 1):
                if not raw.endswith(b"\n"):
                    break
                try:
                    cid = orjson.loads(raw).get("custom_id")
                except (orjson.JSONDecodeError, AttributeError):
                    cid = None
                if cid in newest and newest[cid] != n:
                    continue
                dst.write(raw)
            dst.flush()
            os.fsync(dst.fileno())
        os.replace(tmp, self.path)
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        self.scan.duplicated.clear()
        self._rewritten.clear()
