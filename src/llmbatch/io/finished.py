"""A compact set of ids with one small value each: the finished ids of an output, and the
ids an input check has seen. About 23 bytes per id, where a `set[str]` takes ~370.

    ids = IdTable()
    ids.add("req-1", line=1, ok=True)           # returns the line the id had before, or None
    ids.add("req-1", line=7, ok=False)          # the newest line wins: 1 is now superseded
    ids.status("req-1")                         # False (failed); None for an id not there

The table is open addressing with linear probing over three typed arrays (`array`), so an id
costs no Python object: its slot holds a 64-bit hash of it (`hash`, injectable), a second,
independent 31-bit check (CRC-32 of its UTF-8 bytes) with the status bit, and the line it was
last seen on. Without `same`, two ids are taken for one when both hashes agree (a 95-bit
match: about once in 10^14 at 10M x 10M ids; enough for a plan's counts or a hint). With
`same(line, id)` (the journal's: it reads the id back from that line of the output), a
matching slot counts only if its line really holds the id: membership is exact, so a resume
never skips an unfinished id, and a finished line is never taken for an older line of another
id. `same` is called only when both hashes match (once per finished id a resume looks up).
Hash and check are injectable (the collision tests make every id collide on both).

Why our own table and not a library: `set`/`dict` hold an object per id (the memory this
replaces), sortedcontainers too; numpy is not a dependency of the core. The table grows by
doubling at 70 % load; `expect` sizes it up front when the count is known, so loading an
output never holds two tables at once.
"""

from __future__ import annotations

import sys
import zlib
from array import array
from collections.abc import Callable

__all__ = ["IdTable"]

_MASK64 = (1 << 64) - 1
_LOAD = 0.7
_MIN_SLOTS = 1024
_ODD = bytes(i & 1 for i in range(256))


def _crc(rid: str) -> int:
    return zlib.crc32(rid.encode("utf-8", "surrogatepass"))


class IdTable:
    """Ids, each with the line it was last added on and a status bit (ok / failed).

    `hash` maps an id to an int (Python's `hash` by default: salted per process, which is
    fine, the table lives in one), `check` to the second one (CRC-32); tests inject colliding
    ones. `same(line, id)`: True if `line` (as added) holds exactly `id` (see the module).
    """

    __slots__ = (
        "_check",
        "_checks",
        "_hash",
        "_keys",
        "_lines",
        "_same",
        "_slots",
        "count",
        "repeats",
    )

    def __init__(
        self,
        expect: int = 0,
        *,
        hash: Callable[[str], int] = hash,
        check: Callable[[str], int] = _crc,
        same: Callable[[int, str], bool] | None = None,
    ) -> None:
        self._hash = hash
        self._check = check
        self._same = same
        self.count = 0  # distinct ids
        self.repeats = 0  # adds of an id already there
        self._alloc(max(_MIN_SLOTS, int(expect / _LOAD) + 1))

    def _alloc(self, slots: int) -> None:
        self._slots = slots
        # Repetition allocates the array at once (no temporary bytes of the same size).
        self._keys = array("Q", [0]) * slots
        self._checks = array("I", [0]) * slots  # "I" is 4 bytes where "L" may be 8
        self._lines = array("I", [0]) * slots

    def __len__(self) -> int:
        return self.count

    def add(self, rid: str, line: int, ok: bool = True) -> int | None:
        """Record `rid` as seen on `line` (the newest wins) with its status; the line it had
        before, or None if it is new."""
        # Runs once per line of a whole output: inlined. A slot holds the hash (0: empty), the
        # check (31 bits of CRC-32) shifted left with the status in the low bit, and the line.
        key = (self._hash(rid) & _MASK64) or 1
        check = (self._check(rid) & 0x7FFF_FFFF) << 1
        keys, checks, slots, same = self._keys, self._checks, self._slots, self._same
        i = key % slots
        while True:
            k = keys[i]
            if k == 0:
                break
            if k == key and checks[i] & ~1 == check and (same is None or same(self._lines[i], rid)):
                before = self._lines[i]
                self._lines[i] = line
                checks[i] = check | ok
                self.repeats += 1
                return before
            i += 1
            if i == slots:
                i = 0
        keys[i] = key
        checks[i] = check | ok
        self._lines[i] = line
        self.count += 1
        if self.count > slots * _LOAD:
            self._grow()
        return None

    def _lookup(self, rid: str) -> int:
        """The slot of `rid`, or -1. (Runs once per input line on a resume: kept lean, the
        check computed only when a slot's hash matches.)"""
        key = (self._hash(rid) & _MASK64) or 1
        keys, slots = self._keys, self._slots
        i = key % slots
        check = -1
        while True:
            k = keys[i]
            if k == 0:
                return -1
            if k == key:
                if check < 0:
                    check = (self._check(rid) & 0x7FFF_FFFF) << 1
                if self._checks[i] & ~1 == check and (
                    self._same is None or self._same(self._lines[i], rid)
                ):
                    return i
            i += 1
            if i == slots:
                i = 0

    def __contains__(self, rid: object) -> bool:
        return isinstance(rid, str) and self._lookup(rid) >= 0

    def status(self, rid: str) -> bool | None:
        """True if `rid`'s newest line is an answer, False if a failure, None if absent."""
        i = self._lookup(rid)
        return None if i < 0 else bool(self._checks[i] & 1)

    def line(self, rid: str) -> int | None:
        """The line `rid` was last added on, or None."""
        i = self._lookup(rid)
        return None if i < 0 else self._lines[i]

    def is_ok(self, rid: str) -> bool:
        return self.status(rid) is True

    def is_failed(self, rid: str) -> bool:
        return self.status(rid) is False

    def counts(self) -> tuple[int, int]:
        """(ids whose newest line is an answer, ids whose newest line is a failure)."""
        # The status bit is the low bit of each check (0 in an empty slot): counted at C speed
        # from the checks' low bytes.
        low = memoryview(self._checks).cast("B")[0 if sys.byteorder == "little" else 3 :: 4]
        ok = bytes(low).translate(_ODD).count(1)
        return ok, self.count - ok

    def nbytes(self) -> int:
        """Bytes the table holds (its arrays)."""
        return self._slots * (8 + self._checks.itemsize + self._lines.itemsize)

    def _grow(self) -> None:
        keys, checks, lines = self._keys, self._checks, self._lines
        self._alloc(self._slots * 2)
        nk, nc, nl, slots = self._keys, self._checks, self._lines, self._slots
        for k, c, n in zip(keys, checks, lines, strict=True):
            if not k:
                continue
            i = k % slots
            while nk[i]:
                i += 1
                if i == slots:
                    i = 0
            nk[i], nc[i], nl[i] = k, c, n
