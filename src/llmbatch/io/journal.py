"""The results journal: the output file, written so that a crash never loses a result.

    with Journal("out.jsonl") as journal:          # takes out.jsonl.lock, or raises JournalLocked
        scan = journal.scan                         # ids already done, torn tail repaired
        journal.write(result)                       # one line, straight to the kernel

Lines are in the OpenAI Batch output format, one per request, appended as results arrive;
`llmbatch.io.line.ResultLine` encodes and decodes them (the one place that knows the format).

What the file holds is read through its sidecar index (`llmbatch.io.index`, `OUT.idx`,
written as lines are fsynced and never trusted over the journal), into compact structures:
the finished ids in an `IdTable` (about 23 bytes per id), the superseded lines as a set of
line numbers (lines of ids written again; few). No reader holds a line per id. A run's journal
also keeps where each line starts (4 bytes a line, `_Lines`): an input id that matches a
finished one on both of the table's hashes counts as finished only if the line named holds
that very id (read back and decoded), so a resume never skips an unfinished id.

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
even when the holder is killed with -9. A run refused before it wrote anything closes with
`discard`, which removes the files its `open` created (output, index, lock: a refused run
leaves nothing new behind, and never touches what an earlier run left). The lock file is
removed while still held, and `open` checks that the file it locked is still the one at
the path, so a run that opened the old one just before takes the new one instead.

Lines that parse as JSON but are not result lines (hand edits, another tool's output) are
reported as corrupt and otherwise ignored, by resume and statistics alike.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from array import array
from bisect import bisect_right
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from ..stats import BatchStats, StatsCollector
from ..types import BatchResult
from .finished import IdTable, _crc
from .index import (
    Entry,
    IndexWriter,
    StaleIndex,
    _id_at,
    _scan,
    entries,
    expected_lines,
    header,
    ids,
    index_path,
    lane_name,
    price_list,
    record,
    set_summary,
    summary,
)
from .line import ResultLine, timing_fields, with_money

__all__ = [
    "CompactionError",
    "Journal",
    "JournalLocked",
    "JournalScan",
    "iter_lines",
    "journal_stats",
    "read_output",
    "result_line",
    "superseded_lines",
    "timing_fields",
]


class JournalLocked(RuntimeError):
    """Another run is writing the same output file."""


class CompactionError(OSError):
    """The rewrite at close failed (a full disk): the original file is intact, every result in
    it; only the superseded lines of redone ids are still there. Carries the OS errno."""


@dataclass(slots=True)
class JournalScan:
    """What an output file holds: its finished ids (newest line of each wins) and more."""

    finished: IdTable = field(default_factory=IdTable)
    lines: int = 0
    repaired_bytes: int = 0
    corrupt_lines: list[int] = field(default_factory=list)
    superseded: set[int] = field(default_factory=set)  # lines a newer line of the id replaced
    cost: float = 0.0  # USD over every line's money, superseded lines too: money spent
    ok_count: int = 0  # ids whose newest line is an answer
    failed_count: int = 0

    def is_ok(self, rid: str) -> bool:
        """True if `rid`'s newest line is an answer (`done` for the executors)."""
        return self.finished.status(rid) is True

    def is_failed(self, rid: str) -> bool:
        return self.finished.status(rid) is False


def result_line(result: BatchResult) -> bytes:
    """The output line for one result, newline included (`ResultLine.of(result).encode()`)."""
    return ResultLine.of(result).encode()


def iter_lines(path: str | Path) -> Iterator[tuple[int, ResultLine | None]]:
    """(line number, decoded result line, or None if it is not one) for each complete line."""
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            if not raw.endswith(b"\n"):
                return  # a torn tail is never data
            yield n, ResultLine.decode(raw)


class _Lines:
    """Where each line of a journal starts (4 bytes a line: the low 32 bits, plus the first
    line past each 4 GiB), to read back the id a line holds: the exact check behind the
    journal's finished-id table (`IdTable(same=...)`), so a resume never takes an unfinished
    id for a finished one whose hashes it shares. Reads through its own descriptor."""

    def __init__(self, path: str | Path) -> None:
        self._path = path
        self._fd = -1  # opened at the first look (the journal may not exist yet)
        self.clear()

    def clear(self) -> None:
        self._low = array("I")
        self._wraps: list[int] = []  # index of the first line starting at or past k * 4 GiB
        self.end = 0  # where the last line ends

    def add(self, start: int, length: int) -> None:
        while start >> 32 > len(self._wraps):
            self._wraps.append(len(self._low))
        self._low.append(start & 0xFFFF_FFFF)
        self.end = start + length

    def holds(self, line: int, rid: str) -> bool:
        """True if line `line` (from 1) of the journal holds exactly the id `rid` (the table
        names only lines the scan read as result lines).

        Runs once per finished id a resume looks up (~1 us): a line as the encoder writes it
        (`{"id":"<plain>","custom_id":<id>,...`, no other `"custom_id":` key in it) is
        compared as bytes; any other line is decoded (`ResultLine.decode`)."""
        i = line - 1
        low, wraps = self._low, self._wraps
        if not 0 <= i < len(low):
            return False
        start = low[i] | (bisect_right(wraps, i) << 32 if wraps else 0)
        if i + 1 < len(low):
            end = low[i + 1] | (bisect_right(wraps, i + 1) << 32 if wraps else 0)
        else:
            end = self.end
        if self._fd < 0:
            self._fd = os.open(self._path, os.O_RDONLY)
        raw = os.pread(self._fd, end - start, start)
        if raw.startswith(b'{"id":"') and raw.count(b'"custom_id":') == 1:
            j = raw.find(b'"', 7)
            if j > 0 and raw.find(b"\\", 7, j) < 0:
                try:
                    want = b',"custom_id":' + orjson.dumps(rid) + b","
                except orjson.JSONEncodeError:  # a lone surrogate: decoded below
                    want = b""
                if want and raw.startswith(want, j + 1):
                    return True
        decoded = ResultLine.decode(raw)
        return decoded is not None and decoded.custom_id == rid

    def close(self) -> None:
        """Release the descriptor and the offsets (the journal is closed: nothing asks)."""
        self.clear()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def read_output(
    path: str | Path,
    *,
    write: bool = False,
    hash: Callable[[str], int] = hash,
    check: Callable[[str], int] = _crc,
    lines_of: _Lines | None = None,
) -> JournalScan:
    """What `path` holds, through its index (`write`: the caller holds the lock, and the
    index is brought up to date). The newest line of an id wins; older ones are superseded.
    With `lines_of` (the journal's), the finished-id table is exact (see `_Lines`)."""
    for trust in (True, False):
        if lines_of is not None:
            lines_of.clear()  # a second pass starts afresh
        same = None if lines_of is None else lines_of.holds
        scan = JournalScan(IdTable(expected_lines(path), hash=hash, check=check, same=same))
        add, superseded, corrupt = scan.finished.add, scan.superseded, scan.corrupt_lines
        cost, lines = 0.0, 0
        try:
            for lines, cid, ok, money, start, length in ids(path, write=write, trust_index=trust):
                if lines_of is not None:
                    lines_of.add(start, length)
                if not cid:
                    corrupt.append(lines)
                    continue
                before = add(cid, lines, ok)
                if before is not None:
                    superseded.add(before)
                cost += money
        except StaleIndex:
            continue
        scan.lines = lines
        scan.cost = cost
        scan.ok_count, scan.failed_count = scan.finished.counts()
        if write:
            set_summary(path, os.stat(path).st_size, lines, scan.finished.repeats)
        return scan
    raise AssertionError("unreachable: the second pass does not trust the index")


def superseded_lines(path: str | Path) -> set[int]:
    """Line numbers of `path` a newer line of their id replaced (the file is not compacted
    yet). Free when the index's summary says no id repeats; else one pass over the index."""
    found = summary(path)
    if found is not None and found.repeats == 0 and found.covered == _size(path):
        return set()
    return read_output(path).superseded


def _size(path: str | Path) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return -1


def journal_stats(path: str | Path, *, superseded: set[int] | None = None) -> BatchStats:
    """Statistics of an output file: the newest line of each id, as a resume reads it.

    A file not compacted yet (a run killed after redoing failed ids) holds superseded lines;
    only their cost is counted (they were paid for, as the compaction keeps it). Read from
    the index, not the lines; `superseded` (the journal that wrote the file knows them) spares
    looking for them.
    """
    for trust in (True, False):
        try:
            if superseded is None:
                superseded = superseded_lines(path) if trust else _superseded(path)
            return _stats(_scan(Path(path), False, trust), superseded)
        except StaleIndex:
            superseded = None
    raise AssertionError("unreachable: the second pass does not trust the index")


def _superseded(path: str | Path) -> set[int]:
    table, superseded = IdTable(expected_lines(path)), set()
    for n, cid, _, _, _, _ in ids(path, trust_index=False):
        if cid and (before := table.add(cid, n)) is not None:
            superseded.add(before)
    return superseded


def _stats(lines: Iterator[tuple[int, tuple[Any, ...], bytes]], superseded: set[int]) -> BatchStats:
    """The stats of raw index records (`_scan`'s), the hot loop of `llmbatch stats`: fields
    are read from the record tuple, the strings decoded once each (few models, codes, lanes
    and price lists)."""
    collector = StatsCollector()
    add, add_cost = collector.add_line, collector.add_cost
    texts: dict[tuple[bytes, int], tuple[str, str, str, str | None]] = {}
    for n, rec, var in lines:
        flags = rec[2]
        if not flags & 2:  # not a result line
            continue
        at = _id_at(var, flags)
        key = (var[:at], flags >> 8)
        found = texts.get(key)
        if found is None:
            m = var[0]
            model = var[1 : 1 + m].decode(errors="replace")
            code = var[2 + m : 2 + m + var[1 + m]].decode(errors="replace")
            found = texts[key] = (model, code, lane_name(var, flags), price_list(flags))
        model, code, lane, priced = found
        cost, extra = rec[10], rec[11]
        if extra == extra:  # not NaN: the line carries what removed lines cost
            cost = (0.0 if cost != cost else cost) + extra
        money = None if cost != cost else cost
        if superseded and n in superseded:
            if money:
                add_cost(model, money)
            continue
        wait, provider, pt, ct, saved = rec[8], rec[9], rec[12], rec[13], rec[16]
        add(
            var[at:].decode("utf-8", "surrogatepass") if not flags & 1 else "",
            rec[7],
            rec[6],
            None if flags & 1 else code,
            pt if pt > 0 else 0,
            ct if ct > 0 else 0,
            bool(flags & 4),
            None if wait != wait or provider != provider else wait,
            provider,
            money,
            model,
            rec[14] if rec[14] > 0 else 0,
            rec[15] if rec[15] > 0 else 0,
            None if saved != saved else saved,
            lane,
            priced,
        )
    return collector.snapshot()


class Journal:
    """The output file of one run. Open it with `with` (or `open()` / `close()`).

    `write` and `fsync` default to the `os` functions; tests pass failing ones to play a full
    disk. Any `OSError` from writing or syncing propagates: the caller must stop the run.
    `scan.finished` is kept up to date as lines are written (the newest line of an id wins).
    `id_hash` and `id_check` are the finished-id table's two hashes (tests inject colliding
    ones); whatever they are, a match is confirmed by the id of the line it names (`_Lines`).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        fsync_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        write: Callable[[int, memoryview], int] = os.write,
        fsync: Callable[[int], None] = os.fsync,
        id_hash: Callable[[str], int] = hash,
        id_check: Callable[[str], int] = _crc,
    ) -> None:
        self.path = Path(path)
        # Symlinks resolved: the lock and the compaction act on the file, whatever its name.
        self.real_path = Path(os.path.realpath(self.path))
        self.lock_path = self.real_path.with_name(self.real_path.name + ".lock")
        self.fsync_interval = fsync_interval
        self._clock = clock
        self._write = write
        self._fsync = fsync
        self._hash, self._check = id_hash, id_check
        # Where each line starts: the finished-id table checks a match against the line's id.
        self._lines_of = _Lines(self.real_path)
        self._fd: int | None = None
        self._lock_fd: int | None = None
        self._index: IndexWriter | None = None
        self._last_sync = 0.0
        self._dirty = False
        self._created: list[Path] = []  # by `open`, for `discard`: output and index, lock last
        self.scan = JournalScan()
        self.written = 0
        self._lines = 0

    # -- lifecycle --------------------------------------------------------------------------

    def open(self) -> JournalScan:
        new_lock = self._lock()
        # Under the lock: what is there now is no other run's work in progress.
        new = [p for p in (self.real_path, index_path(self.real_path)) if not p.exists()]
        self._created = [*new, *([self.lock_path] if new_lock else [])]
        try:
            self.scan = self._scan_and_repair()
            self._lines = self.scan.lines
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            self._index = IndexWriter(
                self.real_path,
                self._fd,
                start=os.fstat(self._fd).st_size,
                lines=self.scan.lines,
                repeats=self.scan.finished.repeats,
            )
        except BaseException:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            self._lines_of.close()
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
                    self._flush_index()
                finally:
                    os.close(fd)
                    self._close_index()
                if self.scan.superseded:
                    self._compact()
        finally:
            self._close_index()
            self._lines_of.close()
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
                    self._flush_index()
                os.close(fd)
        finally:
            self._close_index()
            self._lines_of.close()
            self._unlock()

    def discard(self) -> None:
        """Close a journal its run never used (the run was refused): the files `open` created
        go if nothing was written (else as `abandon`); files that were there stay."""
        if self._lock_fd is None or self.written or self._lines:
            self.abandon()
            return
        created, self._created = self._created, []
        try:
            if self._fd is not None:
                fd, self._fd = self._fd, None
                os.close(fd)
        finally:
            self._close_index()
            self._lines_of.close()
            for path in created:  # the lock last, while still held (see `_lock`)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            self._unlock()

    def __enter__(self) -> Journal:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing ----------------------------------------------------------------------------

    def write(self, result: BatchResult, *, replaces: bool = False) -> None:
        """Append `result`'s line. `replaces` is accepted for callers that know this run wrote
        the id before: the journal knows it too (the newer line wins; close compacts)."""
        line = ResultLine.of(result)
        self._append(result.id, line.encode(), line)

    def write_line(self, custom_id: str, line: bytes) -> None:
        """Append a line made by `result_line` (possibly in another process)."""
        self._append(custom_id, line, ResultLine.decode(line))

    def _append(self, custom_id: str, raw: bytes, line: ResultLine | None) -> None:
        assert self._fd is not None, "journal is not open"
        view = memoryview(raw)
        while view:  # a regular file takes it all at once; the loop is for the odd EINTR
            try:
                n = self._write(self._fd, view)
            except OSError as exc:
                index, self._index = self._index, None
                if index is None:
                    raise
                # Part of the line may be there: the index is dropped (rebuilt next time). On
                # a full disk that frees its space, so the line is tried once more: the index
                # never costs a result.
                index.drop()
                if exc.errno != errno.ENOSPC:
                    raise
                continue
            view = view[n:]
        self.written += 1
        self._lines += 1
        self._dirty = True
        self._lines_of.add(self._lines_of.end, len(raw))
        ok = line is not None and line.ok
        before = self.scan.finished.add(custom_id, self._lines, ok)
        if before is not None:
            self.scan.superseded.add(before)
        if self._index is not None:
            self._index.add(raw, line, repeat=before is not None)
        self.sync_if_due()

    def sync_if_due(self) -> None:
        if self._dirty and self._fd is not None:
            now = self._clock()
            if now - self._last_sync >= self.fsync_interval:
                self._fsync(self._fd)
                self._last_sync = now
                self._dirty = False
                self._flush_index()

    def sync(self) -> None:
        """fsync now, whatever the interval (before a provider batch is marked collected)."""
        if self._fd is not None:
            self._fsync(self._fd)
            self._last_sync = self._clock()
            self._dirty = False
            self._flush_index()

    def _flush_index(self) -> None:
        # Only after the journal's fsync: the index never claims a line not on disk.
        if self._index is not None:
            self._index.flush()

    def _close_index(self) -> None:
        if self._index is not None:
            self._index.close()
            self._index = None

    # -- internals --------------------------------------------------------------------------

    def _lock(self) -> bool:
        """Take the lock; True if this call created the lock file."""
        while True:
            try:
                fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
                created = True
            except FileExistsError:
                try:
                    fd = os.open(self.lock_path, os.O_RDWR)
                except FileNotFoundError:  # removed by a refused run just now: make it
                    continue
                created = False
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
                os.close(fd)
                raise JournalLocked(
                    f"{self.path} is being written by another llmbatch run (pid {holder}); "
                    f"wait for it to finish or stop it"
                ) from None
            # A refused run removes the lock file it created while holding it (`discard`):
            # locked after that, this one is no longer the path's lock; take the new one.
            held = os.fstat(fd)
            try:
                now = os.stat(self.lock_path)
            except FileNotFoundError:
                now = None
            if now is not None and (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino):
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd
        return created

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            # The lock file stays: removing it would let a waiting run lock a dead inode.
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def _scan_and_repair(self) -> JournalScan:
        repaired = 0
        self._lines_of.clear()
        if not self.path.exists():
            return JournalScan(
                IdTable(hash=self._hash, check=self._check, same=self._lines_of.holds)
            )
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
                    repaired = size - cut
        scan = read_output(
            self.real_path,
            write=True,
            hash=self._hash,
            check=self._check,
            lines_of=self._lines_of,
        )
        scan.repaired_bytes = repaired
        return scan

    def _compact(self) -> None:
        """Keep only the newest line of every id that has several; atomic via rename.

        Works on the real file (symlinks resolved), keeps its mode and, where permitted, its
        owner; on failure removes the temp file and leaves the original untouched. The kept
        line of such an id carries what its removed lines cost (`extra_cost`), so a rerun's
        spend still counts them. The index is rewritten beside it (a crash between the two
        renames leaves an index naming the old file's inode: rebuilt on the next open).
        """
        target = self.real_path
        superseded = self.scan.superseded
        tmp = target.with_name(target.name + ".compact.tmp")
        itmp = index_path(target).with_name(index_path(target).name + ".tmp")
        try:
            try:
                self._rewrite(target, tmp, itmp, superseded, trust=True)
            except StaleIndex:  # the index no longer matches: the journal's lines decoded
                self._rewrite(target, tmp, itmp, superseded, trust=False)
            os.replace(tmp, target)
        except BaseException as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            with contextlib.suppress(OSError):
                os.unlink(itmp)
            if isinstance(exc, OSError):
                raise CompactionError(exc.errno, exc.strerror) from exc
            raise
        with contextlib.suppress(OSError):  # the index is a convenience: rebuilt if missing
            os.replace(itmp, index_path(target))
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        superseded.clear()

    def _rewrite(
        self, target: Path, tmp: Path, itmp: Path, superseded: set[int], *, trust: bool
    ) -> None:
        """Write `tmp` (the file without its superseded lines) and `itmp` (its index), reading
        what each line is from the index (`trust`) or by decoding it."""
        st = os.stat(target)
        carry: dict[str, float] = {}  # money of the removed lines, by id (few)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with open(target, "rb") as src, open(fd, "wb") as dst:
            os.fchmod(dst.fileno(), st.st_mode & 0o7777)
            with contextlib.suppress(OSError):  # only root may give a file away
                os.fchown(dst.fileno(), st.st_uid, st.st_gid)
            new = os.fstat(dst.fileno())
            index = _IndexCopy(itmp, new.st_dev, new.st_ino)
            offset = lines = 0
            for e in entries(target, trust_index=trust):
                raw = src.readline()
                if e.line in superseded:
                    carry[e.custom_id] = carry.get(e.custom_id, 0.0) + (e.money or 0.0)
                    continue
                kept: Entry | ResultLine | None = e
                if e.custom_id in carry:
                    total = carry.pop(e.custom_id) + (e.money or 0.0)
                    patched = with_money(raw, total)
                    if patched is not None:
                        raw = patched
                        kept = ResultLine.decode(raw)
                dst.write(raw)
                index.add(record(kept, offset, raw))
                offset += len(raw)
                lines += 1
            dst.flush()
            self._fsync(dst.fileno())
        index.close(header(new.st_dev, new.st_ino, offset, lines, 0))


class _IndexCopy:
    """The index of a compacted file, written beside it; a failure only loses the index."""

    def __init__(self, path: Path, dev: int, ino: int) -> None:
        self.path = path
        self._f = open(path, "wb")  # noqa: SIM115 (closed in close)
        self._f.write(header(dev, ino))

    def add(self, rec: bytes) -> None:
        self._f.write(rec)

    def close(self, final_header: bytes) -> None:
        """Close with the header that says what the index covers (no id repeats)."""
        self._f.seek(0)
        self._f.write(final_header)
        self._f.close()
