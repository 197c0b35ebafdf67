"""The results journal: the output file, written so that a crash never loses a result.

    with Journal("out.jsonl") as journal:          # takes out.jsonl.lock, or raises JournalLocked
        scan = journal.scan                         # ids already done, torn tail repaired
        journal.write(result)                       # one line, straight to the kernel

Lines are in the OpenAI Batch output format, one per request, appended as results arrive:

    {"id": "batch_req_...", "custom_id": "...", "response": {"status_code", "request_id",
     "body"}, "error": null | {"code", "message"}, "llmbatch": {"duration", "attempts",
     "cached", "usage", and where they apply "batch_api", "cost" (USD), "extra_cost" (USD
     paid for lines of the id that compaction removed), "parsed", and the
     timing: "started_at", "finished_at" (Unix seconds), "wait", "provider", "backoff"
     (seconds) and "attempt_log": [[wait, provider, status or error code], ...]}}

Each line is one `write(2)` on an O_APPEND descriptor, so a crash leaves at worst one torn
last line, which the next open cuts off (that request is then simply redone). Data is
fsync'ed at least every `fsync_interval` seconds (via `sync_if_due`) and on close. When an id
ends up with more than one line (a failed one redone with --retry-failed, or a crash in
between), close rewrites the file keeping each id's newest line (its `cost` then sums every
line of the id: each was paid for), through a temp file and an atomic rename; the rename
goes to the real file when the path is a symlink, and the rewritten file keeps the
original's mode (and owner, where permitted). If the rewrite fails (a full
disk), the temp file is removed and the original is left as it was: it still holds every
result, and the next close tries again.

A second process on the same file is refused by a `flock` on `REAL.lock`, where REAL is the
path with symlinks resolved (two names for one file share one lock); the kernel releases it
even when the holder is killed with -9.

Lines that parse as JSON but are not result lines (hand edits, another tool's output) are
reported as corrupt and otherwise ignored, by resume and statistics alike.
"""

from __future__ import annotations

import contextlib
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
from ..types import BatchResult, Timing

__all__ = [
    "CompactionError",
    "Journal",
    "JournalLocked",
    "JournalScan",
    "iter_records",
    "journal_stats",
    "parse_record",
    "result_line",
    "timing_fields",
]


class JournalLocked(RuntimeError):
    """Another run is writing the same output file."""


class CompactionError(OSError):
    """The rewrite at close failed (a full disk): the original file is intact, every result in
    it; only the superseded lines of redone ids are still there. Carries the OS errno."""


@dataclass(slots=True)
class JournalScan:
    """What an existing output file holds. Sets are of custom_ids (newest line wins)."""

    ok: set[str] = field(default_factory=set)
    failed: set[str] = field(default_factory=set)
    lines: int = 0
    repaired_bytes: int = 0
    corrupt_lines: list[int] = field(default_factory=list)
    duplicated: set[str] = field(default_factory=set)
    cost: float = 0.0  # USD over every line's `cost`, superseded lines too: money spent


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


def _plain(parsed: Any) -> Any:
    """A parsed reply as JSON data: a pydantic model instance is dumped."""
    dump = getattr(parsed, "model_dump", None)
    return dump(mode="json") if callable(dump) else parsed


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
        usage = resp.usage
        meta["usage"] = {
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
        }
        if usage.cached_tokens:
            meta["usage"]["cached_tokens"] = usage.cached_tokens
        if usage.cache_write_tokens:
            meta["usage"]["cache_write_tokens"] = usage.cache_write_tokens
        if usage.cache_write_1h_tokens:
            meta["usage"]["cache_write_1h_tokens"] = usage.cache_write_1h_tokens
        if resp.batch_api:
            meta["batch_api"] = True
        if result.parsed is not None:
            meta["parsed"] = _plain(result.parsed)
        error = None
    else:
        status = getattr(err, "status_code", None)
        response = None
        if status is not None:
            body = _safe_body(getattr(err, "body", None))
            # A ReplyError carries the reply: its line keeps the raw (or partial) body.
            rid = getattr(err, "request_id", None)
            response = {"status_code": status, "request_id": rid, "body": body}
        error = {"code": error_code(err), "message": redact(f"{type(err).__name__}: {err}")}
    if result.cost is not None:
        meta["cost"] = round(result.cost, 10)
    if result.cache_saved is not None:
        meta["cache_saved"] = round(result.cache_saved, 10)
    if result.timing is not None:
        meta.update(timing_fields(result.timing))
    line = {
        "id": f"batch_req_{uuid.uuid4().hex}",
        "custom_id": result.id,
        "response": response,
        "error": error,
        "llmbatch": meta,
    }
    return orjson.dumps(line) + b"\n"


def timing_fields(timing: Timing) -> dict[str, Any]:
    """The `llmbatch` block's timing keys: wall times to the millisecond, spans to the µs."""
    return {
        "started_at": round(timing.started_at, 3),
        "finished_at": round(timing.finished_at, 3),
        "wait": round(timing.wait, 6),
        "provider": round(timing.provider, 6),
        "backoff": round(timing.backoff, 6),
        "attempt_log": [[round(w, 6), round(p, 6), o] for w, p, o in timing.attempts],
    }


def _is_result(obj: Any) -> bool:
    """A line this journal could have written: a string id, an error that is null or an object,
    and bookkeeping that is an object if present. Anything else is a foreign line."""
    return (
        isinstance(obj, dict)
        and isinstance(obj.get("custom_id"), str)
        and obj["custom_id"] != ""
        and (obj.get("error") is None or isinstance(obj["error"], dict))
        and isinstance(obj.get("llmbatch") or {}, dict)
    )


def parse_record(raw: bytes) -> dict[str, Any] | None:
    """One line decoded, if it is a result line (see `_is_result`); None otherwise."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return obj if _is_result(obj) else None


def iter_records(path: str | Path) -> Iterator[tuple[int, dict[str, Any] | None]]:
    """(line number, decoded result line, or None if it is not one) for each complete line."""
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            if not raw.endswith(b"\n"):
                return  # a torn tail is never data
            yield n, parse_record(raw)


def _number(value: Any, kind: type[int] | type[float]) -> Any:
    # Hand-edited lines may hold anything: a statistic that cannot be read counts as 0.
    if isinstance(value, bool) or not isinstance(value, int | float):
        return kind(0)
    return kind(value)


def journal_stats(path: str | Path) -> BatchStats:
    """Statistics of an output file: the newest line of each id, as a resume reads it.

    A file not compacted yet (a run killed after redoing failed ids) holds superseded lines;
    only their cost is counted (they were paid for, as the compaction keeps it). Two passes, so
    memory holds one line number per id, not the lines.
    """
    newest: dict[str, int] = {}
    for n, rec in iter_records(path):
        if rec is not None:
            newest[rec["custom_id"]] = n
    collector = StatsCollector()
    for n, rec in iter_records(path):
        if rec is None:
            continue
        meta = rec.get("llmbatch") or {}
        if newest.get(rec["custom_id"]) != n:
            if spent := _money(meta):
                collector.add_cost(_model(rec), spent)
            continue
        usage = meta.get("usage")
        usage = usage if isinstance(usage, dict) else {}
        err = rec.get("error")
        collector.add_values(
            rec["custom_id"],
            duration=_number(meta.get("duration"), float),
            attempts=_number(meta.get("attempts"), int),
            error_type=None if err is None else str(err.get("code") or "unknown"),
            prompt_tokens=_number(usage.get("prompt_tokens"), int),
            completion_tokens=_number(usage.get("completion_tokens"), int),
            cached=bool(meta.get("cached", False)),
            **_line_timing(meta),
            cost=_money(meta),
            model=_model(rec),
            cached_prompt_tokens=_number(usage.get("cached_tokens"), int),
            cache_write_tokens=_number(usage.get("cache_write_tokens"), int),
            cache_saved=_cost(meta, "cache_saved"),
        )
    return collector.snapshot()


def _line_timing(meta: dict[str, Any]) -> dict[str, float]:
    """A line's admission wait and provider time, if it has them (lines of older versions
    and of results made elsewhere do not)."""
    wait, provider = meta.get("wait"), meta.get("provider")
    if wait is None or provider is None:
        return {}
    return {"wait": _number(wait, float), "provider": _number(provider, float)}


def _cost(meta: dict[str, Any], key: str = "cost") -> float | None:
    value = meta.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _money(meta: dict[str, Any]) -> float | None:
    """USD a line stands for: its own `cost` plus `extra_cost`, what the lines compaction
    removed for its id had cost (superseded attempts, an answer bought twice)."""
    cost, extra = _cost(meta), _cost(meta, "extra_cost")
    if extra is None:
        return cost
    return (cost or 0.0) + extra


def _with_money(rec: dict[str, Any], total: float) -> bytes | None:
    """`rec` as a line whose cost plus extra_cost is `total`; None if it is that already."""
    meta = rec.get("llmbatch")
    if not isinstance(meta, dict):
        return None
    extra = total - (_cost(meta) or 0.0)
    if abs(extra - (_cost(meta, "extra_cost") or 0.0)) < 1e-12:
        return None
    meta["extra_cost"] = round(extra, 10)
    return orjson.dumps(rec) + b"\n"


def _model(rec: dict[str, Any]) -> str:
    """The model that answered, as its body says (OpenAI and Anthropic bodies name it
    `model`, Gemini's `modelVersion`)."""
    body = (
        (rec.get("response") or {}).get("body") if isinstance(rec.get("response"), dict) else None
    )
    model = (body.get("model") or body.get("modelVersion")) if isinstance(body, dict) else None
    return model if isinstance(model, str) else ""


class Journal:
    """The output file of one run. Open it with `with` (or `open()` / `close()`).

    `write` and `fsync` default to the `os` functions; tests pass failing ones to play a full
    disk. Any `OSError` from writing or syncing propagates: the caller must stop the run.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        fsync_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        write: Callable[[int, memoryview], int] = os.write,
        fsync: Callable[[int], None] = os.fsync,
    ) -> None:
        self.path = Path(path)
        # Symlinks resolved: the lock and the compaction act on the file, whatever its name.
        self.real_path = Path(os.path.realpath(self.path))
        self.lock_path = self.real_path.with_name(self.real_path.name + ".lock")
        self.fsync_interval = fsync_interval
        self._clock = clock
        self._write = write
        self._fsync = fsync
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
        """fsync, compact where ids have several lines, unlock. Unlocks even if those fail."""
        try:
            if self._fd is not None:
                fd, self._fd = self._fd, None
                try:
                    self._fsync(fd)
                finally:
                    os.close(fd)
                if self.scan.duplicated or self._rewritten:
                    self._compact()
        finally:
            self._unlock()

    def abandon(self) -> None:
        """Close after a failed write: keep what reached the file, skip compaction, unlock.

        The next run's open repairs a torn last line and compacts.
        """
        try:
            if self._fd is not None:
                fd, self._fd = self._fd, None
                with contextlib.suppress(OSError):  # the disk already failed once
                    self._fsync(fd)
                os.close(fd)
        finally:
            self._unlock()

    def __enter__(self) -> Journal:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing ----------------------------------------------------------------------------

    def write(self, result: BatchResult, *, replaces: bool = False) -> None:
        """Append `result`'s line. `replaces`: this run already wrote a line for its id (the
        newer one wins; close compacts)."""
        self.write_line(result.id, result_line(result))
        if replaces:
            self._rewritten.add(result.id)

    def write_line(self, custom_id: str, line: bytes) -> None:
        """Append a line made by `result_line` (possibly in another process)."""
        assert self._fd is not None, "journal is not open"
        view = memoryview(line)
        while view:  # a regular file takes it all at once; the loop is for the odd EINTR
            n = self._write(self._fd, view)
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
                self._fsync(self._fd)
                self._last_sync = now
                self._dirty = False

    def sync(self) -> None:
        """fsync now, whatever the interval (before a provider batch is marked collected)."""
        if self._fd is not None:
            self._fsync(self._fd)
            self._last_sync = self._clock()
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
            spent = _money(rec.get("llmbatch") or {})
            if spent:
                scan.cost += spent
        return scan

    def _compact(self) -> None:
        """Keep only the newest line of every id that has several; atomic via rename.

        Works on the real file (symlinks resolved), keeps its mode and, where permitted, its
        owner; on failure removes the temp file and leaves the original untouched.
        """
        target = self.real_path
        multi = self.scan.duplicated | self._rewritten
        newest: dict[str, int] = {}
        # Money of every line of those ids; the kept line takes what the others cost, so a
        # rerun's spend (the scan's cost) still counts what was paid for the removed lines.
        money: dict[str, float] = {}
        for n, rec in iter_records(target):
            if rec is not None and rec["custom_id"] in multi:
                cid = rec["custom_id"]
                newest[cid] = n
                money[cid] = money.get(cid, 0.0) + (_money(rec.get("llmbatch") or {}) or 0.0)
        st = os.stat(target)
        tmp = target.with_name(target.name + ".compact.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with open(target, "rb") as src, open(fd, "wb") as dst:
                os.fchmod(dst.fileno(), st.st_mode & 0o7777)
                with contextlib.suppress(OSError):  # only root may give a file away
                    os.fchown(dst.fileno(), st.st_uid, st.st_gid)
                for n, raw in enumerate(src, 1):
                    if not raw.endswith(b"\n"):
                        break
                    try:
                        obj = orjson.loads(raw)
                        cid = obj.get("custom_id")
                    except (orjson.JSONDecodeError, AttributeError):
                        cid = None
                    if isinstance(cid, str) and cid in newest:
                        if newest[cid] != n:
                            continue
                        raw = _with_money(obj, money[cid]) or raw
                    dst.write(raw)
                dst.flush()
                self._fsync(dst.fileno())
            os.replace(tmp, target)
        except BaseException as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            if isinstance(exc, OSError):
                raise CompactionError(exc.errno, exc.strerror) from exc
            raise
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        self.scan.duplicated.clear()
        self._rewritten.clear()
