"""The sidecar index of an output: what each line holds, so a rerun never parses the output.

    for entry in entries("out.jsonl", write=True):    # index checked, caught up, or rebuilt
        entry.line, entry.custom_id, entry.ok, entry.money, entry.duration, ...

`OUT.idx` holds one small binary record per line of the output (the journal): where the line
is, a CRC-32 of its bytes, its id, status, money and the numbers `llmbatch stats` counts. The
journal appends records as its lines are fsynced (`IndexWriter`), never before, so the index
never claims a line that is not on disk.

The journal is the truth; the index is never trusted over it. Reading checks, in order: the
header names the journal's inode (a copied, moved-in or rewritten output gets a new one); each
record's own CRC (a torn or damaged record ends the trusted part); records follow each other
without a gap and end within the journal (an index that claims more than a cut journal holds
loses the excess); and the line CRC of a sample of records (the 1st, 2nd, 4th, 8th ... and the
last) against the journal's bytes. Lines past what the index covers (written by a run killed
before its index caught up, or by an older version) are decoded from the journal and, when
`write`, appended. Anything else wrong (a bad header, a sample that does not match) and the
index is rebuilt from the journal. A missing or unreadable index is simply rebuilt.

Records are written only by the holder of the output's lock (a run, or a reader that could
take it); a reader that cannot (a run is writing) reads the index and the journal's tail
without writing.
"""

from __future__ import annotations

import contextlib
import math
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from .line import ResultLine

__all__ = [
    "Entry",
    "IndexWriter",
    "StaleIndex",
    "entries",
    "expected_lines",
    "header",
    "index_path",
    "record",
]

_MAGIC = b"LLMBIDX1"
_HEADER = struct.Struct("<8sQQ")  # magic, journal st_dev, journal st_ino
# crc of the rest | var length | flags | line start | line length | line crc | attempts |
# duration, wait, provider, cost, extra cost | prompt tokens, completion tokens; then the
# model, the error code (one length byte each) and the id (the rest).
_REC = struct.Struct("<IIBxxxQIIIdddddqq")
_OK, _RESULT, _CACHED, _BATCH = 1, 2, 4, 8
_NAN = math.nan
_READ = 1 << 20


def index_path(output: str | Path) -> Path:
    """Where the index of `output` lives: beside its real file (symlinks resolved)."""
    real = Path(os.path.realpath(output))
    return real.with_name(real.name + ".idx")


class StaleIndex(Exception):
    """The index disagrees with the journal beyond a cut: read again from the journal."""


@dataclass(slots=True, frozen=True)
class Entry:
    """One line of an output, as the index (or the journal, decoded) describes it."""

    line: int  # from 1
    start: int  # byte offset in the journal
    length: int
    custom_id: str  # "" for a line that is not a result line
    ok: bool
    cached: bool
    batch_api: bool
    attempts: int
    duration: float
    wait: float | None
    provider: float | None
    cost: float | None
    extra_cost: float | None
    prompt_tokens: int | None
    completion_tokens: int | None
    model: str
    code: str

    @property
    def is_result(self) -> bool:
        return bool(self.custom_id)

    @property
    def money(self) -> float | None:
        if self.extra_cost is None:
            return self.cost
        return (self.cost or 0.0) + self.extra_cost


def record(line: ResultLine | Entry | None, start: int, raw: bytes) -> bytes:
    """The index record of one journal line at `start` (`line`: it decoded, or its entry in
    another index; None if it is not a result line)."""
    if line is None or not line.custom_id:
        var = b"\x00\x00"
        fields: tuple[int | float, ...] = (0, 0.0, _NAN, _NAN, _NAN, _NAN, -1, -1)
        flags = 0
    else:
        model = line.model.encode()[:255]
        code = (line.code or "").encode()[:255]
        var = (
            bytes((len(model),))
            + model
            + bytes((len(code),))
            + code
            + line.custom_id.encode("utf-8", "surrogatepass")
        )
        flags = _RESULT | (_OK if line.ok else 0)
        flags |= (_CACHED if line.cached else 0) | (_BATCH if line.batch_api else 0)
        fields = (
            min(max(line.attempts, 0), 0xFFFF_FFFF),
            line.duration,
            _nan(line.wait),
            _nan(line.provider),
            _nan(line.cost),
            _nan(line.extra_cost),
            -1 if line.prompt_tokens is None else line.prompt_tokens,
            -1 if line.completion_tokens is None else line.completion_tokens,
        )
    body = _REC.pack(0, len(var), flags, start, len(raw), zlib.crc32(raw), *fields)[4:] + var
    return struct.pack("<I", zlib.crc32(body)) + body


def _nan(value: float | None) -> float:
    return _NAN if value is None else value


def _opt(value: float) -> float | None:
    return None if value != value else value


def _entry(n: int, rec: tuple[Any, ...], var: bytes) -> Entry:
    (_, _, flags, start, length, _, attempts, duration, wait, provider, cost, extra, pt, ct) = rec
    if not flags & _RESULT:
        return Entry(
            n,
            start,
            length,
            "",
            False,
            False,
            False,
            0,
            0.0,
            None,
            None,
            None,
            None,
            None,
            None,
            "",
            "",
        )
    m = var[0]
    model = var[1 : 1 + m].decode(errors="replace")
    c = var[1 + m]
    code = var[2 + m : 2 + m + c].decode(errors="replace")
    cid = var[2 + m + c :].decode("utf-8", "surrogatepass")
    return Entry(
        n,
        start,
        length,
        cid,
        bool(flags & _OK),
        bool(flags & _CACHED),
        bool(flags & _BATCH),
        attempts,
        duration,
        _opt(wait),
        _opt(provider),
        _opt(cost),
        _opt(extra),
        None if pt < 0 else pt,
        None if ct < 0 else ct,
        model,
        code,
    )


def _journal_entry(n: int, start: int, raw: bytes) -> tuple[Entry, bytes]:
    rec = record(ResultLine.decode(raw), start, raw)
    return _entry(n, _REC.unpack_from(rec), rec[_REC.size :]), rec


def entries(
    output: str | Path, *, write: bool = False, trust_index: bool = True
) -> Iterator[Entry]:
    """Every complete line of `output`, in order, from its index where the index can be
    trusted and from the journal where not. With `write` (the caller holds the output's lock)
    the index is brought up to date (caught up, cut, or rebuilt) on the way.

    May raise `StaleIndex` part-way (a sampled line does not match): the index is then
    removed (with `write`) or ignored, and the caller starts again; `collect` does that."""
    journal = Path(output)
    ipath = index_path(journal)
    try:
        st = os.stat(journal)
    except FileNotFoundError:
        return
    size = st.st_size
    header = _HEADER.pack(_MAGIC, st.st_dev, st.st_ino)
    offset, n = 0, 0
    trusted_end = 0  # index bytes that are good records
    fd = os.open(journal, os.O_RDONLY)
    try:
        f = None
        if trust_index:
            with contextlib.suppress(OSError):
                f = open(ipath, "rb")  # noqa: SIM115 (closed below)
        if f is not None:
            with f:
                if f.read(_HEADER.size) == header:
                    trusted_end = _HEADER.size
                    check_at, last = 1, (0, 0, 0)
                    for rec, var, rec_len in _records(f):
                        start, length = rec[3], rec[4]
                        if start != offset or start + length > size:
                            break
                        n += 1
                        if n == check_at:
                            check_at *= 2
                            if not _line_matches(fd, start, length, rec[5]):
                                _discard(ipath, write)
                                raise StaleIndex(f"{ipath}: line {n} differs from the journal")
                        last = (start, length, rec[5])
                        offset += length
                        trusted_end += rec_len
                        yield _entry(n, rec, var)
                    if n and n != check_at // 2 and not _line_matches(fd, *last):
                        _discard(ipath, write)
                        raise StaleIndex(f"{ipath}: its last line differs from the journal")
        # The journal's lines past what the index covers.
        writer = _tail_writer(ipath, header, trusted_end, write)
        try:
            with open(journal, "rb") as j:
                j.seek(offset)
                for raw in j:
                    if not raw.endswith(b"\n"):
                        break  # a torn tail is never data
                    n += 1
                    entry, packed = _journal_entry(n, offset, raw)
                    if writer is not None:
                        writer.write(packed)
                    offset += len(raw)
                    yield entry
        finally:
            if writer is not None:
                writer.close()
    finally:
        os.close(fd)


def _line_matches(fd: int, start: int, length: int, crc: int) -> bool:
    """True if the journal's bytes at `start` have the CRC `crc`."""
    return zlib.crc32(os.pread(fd, length, start)) == crc


def _discard(ipath: Path, write: bool) -> None:
    if write:
        with contextlib.suppress(OSError):
            os.unlink(ipath)


def _records(f: BinaryIO) -> Iterator[tuple[tuple[Any, ...], bytes, int]]:
    """(fixed fields, variable part, record length) of each good record; stops at the first
    torn or damaged one."""
    read = f.read
    buf = b""
    pos = 0
    fixed = _REC.size
    unpack = _REC.unpack_from
    crc32 = zlib.crc32
    while True:
        if len(buf) - pos < fixed:
            more = read(_READ)
            buf = buf[pos:] + more
            pos = 0
            if len(buf) < fixed:
                return
        rec = unpack(buf, pos)
        end = pos + fixed + rec[1]
        if end > len(buf):
            more = read(max(_READ, end - len(buf)))
            buf = buf[pos:] + more
            end -= pos
            pos = 0
            if end > len(buf):
                return  # torn
        if crc32(memoryview(buf)[pos + 4 : end]) != rec[0]:
            return  # damaged
        yield rec, buf[pos + fixed : end], end - pos
        pos = end


class IndexWriter:
    """Appends records to an output's index: the journal calls `add` per line it writes and
    `flush` after each fsync of the journal (records of lines not on disk yet wait).

    An index that cannot be written is dropped (removed; the next open rebuilds it from the
    journal): it is a convenience, the journal is the output."""

    def __init__(self, output: str | Path, journal_fd: int, *, start: int) -> None:
        self.path = index_path(output)
        self.offset = start  # journal bytes covered so far
        self._pending: list[bytes] = []
        self._fd: int | None = None
        self.failed = False
        try:
            st = os.fstat(journal_fd)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            if os.fstat(self._fd).st_size == 0:
                os.write(self._fd, _HEADER.pack(_MAGIC, st.st_dev, st.st_ino))
        except OSError:
            self.drop()

    def add(self, raw: bytes, line: ResultLine | None) -> None:
        if not self.failed:
            self._pending.append(record(line, self.offset, raw))
        self.offset += len(raw)

    def flush(self) -> None:
        """Write the records held back (call after the journal's fsync)."""
        if not self._pending or self._fd is None:
            return
        data = b"".join(self._pending)
        self._pending.clear()
        try:
            os.write(self._fd, data)
        except OSError:
            self.drop()

    def drop(self) -> None:
        """Stop writing and remove the index: it no longer matches the journal."""
        self.failed = True
        self._pending.clear()
        self.close()
        with contextlib.suppress(OSError):
            os.unlink(self.path)

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None


class _TailWriter:
    """Writes a fresh or cut index while `entries` reads the journal's tail."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd = fd
        self._buf: list[bytes] = []
        self._size = 0

    def write(self, rec: bytes) -> None:
        self._buf.append(rec)
        self._size += len(rec)
        if self._size >= _READ:
            self._spill()

    def _spill(self) -> None:
        if self._buf:
            os.write(self._fd, b"".join(self._buf))
            self._buf.clear()
            self._size = 0

    def close(self) -> None:
        try:
            self._spill()
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
        finally:
            os.close(self._fd)


def _tail_writer(ipath: Path, header: bytes, trusted_end: int, write: bool) -> _TailWriter | None:
    """A writer continuing the index after its `trusted_end` good bytes (a new index when
    there are none), or None without `write` or when the index cannot be written."""
    if not write:
        return None
    try:
        if trusted_end:
            fd = os.open(ipath, os.O_WRONLY)
            os.ftruncate(fd, trusted_end)
            os.lseek(fd, trusted_end, os.SEEK_SET)
        else:
            fd = os.open(ipath, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.write(fd, header)
    except OSError:
        return None
    return _TailWriter(ipath, fd)


def header(dev: int, ino: int) -> bytes:
    """The first bytes of an index for the journal file (`st_dev`, `st_ino`)."""
    return _HEADER.pack(_MAGIC, dev, ino)


def expected_lines(output: str | Path) -> int:
    """About how many lines `output` holds, from its index's size (a record is ~100 bytes),
    else from its own (~300): sizes an id table so that loading it seldom grows it."""
    for path, per_line in ((index_path(output), 100), (Path(output), 300)):
        with contextlib.suppress(OSError):
            return os.stat(path).st_size // per_line
    return 0
