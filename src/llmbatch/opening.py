"""The rate limiter's opening on a server whose limits are unknown: a slow start clocked by
answers, not by time.

    window = OpeningWindow(clock=time.monotonic)
    if window.room() >= 1:
        window.take()                  # an admission goes out in the opening
    window.finished(ok=True)           # its answer came back: room for GROWTH more
    window.close()                     # a refusal cut, or the server stated its limits

While nothing is known of a server's limits, at most `START` + (`GROWTH` - 1) x answers
admissions are in the air: each answer frees its slot and makes room for `GROWTH` - 1 more,
so every round of answers sends `GROWTH` times the last (TCP's slow start, 2x; here 1.5x).
A refusal comes back at once while an answer takes the server's latency, so in an unhurried
process the first refusal is read before the next round goes out; on a loaded machine it is
read late, and then time alone must not widen the opening: the opening's old pace (doubling
every 50 ms) sent a round into a server that had been refusing for 100 ms (11 refusals of
400 in one run). Answers read clock the window, so a late read delays the sends too.

A slow server (an LLM answering in seconds) would keep the window shut for a latency per
round: a slot in the air `PRESUME` seconds without a refusal counts as answered, so the
window still grows 1.5x per half second. The presumption counts time the process was
running: a gap between the window's own looks (every poll, `POLL`) longer than `STALL`
counts as `STALL`. A process starved of CPU for half a second would otherwise presume every
slot answered the moment it runs again, before it reads the refusals waiting for it.

The Ray cluster's actor has its own window (`llmbatch.ray.limiter`); this one is the local
limiter's, on the permits it admits.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable

__all__ = ["OpeningWindow"]

# The first round: what `concurrency="auto"` opens at too (8 in flight).
START = 8
# Each answer makes room for this many sends (1.5x a round): on a server that refuses without
# headers, the round that finds the bucket empty overshoots by half of what was answered, not
# all of it (2x); a never-refusing server loses a round or two of ramp (8 to 128 in flight in
# 7 answer latencies, not 4), within the time `auto`'s own ramp takes.
GROWTH = 1.5
# A slot in the air this long (process time, see STALL) without a refusal counts as answered:
# well above the 100-200 ms a loaded machine was traced to take to read a refusal.
PRESUME = 0.5
# How often a waiter the window holds looks again, without an answer to wake it.
POLL = 0.025
# A gap between the window's looks longer than this is a stall of the process (traced: 0.3 to
# 1.0 s under two CPU burners), not time the server had to answer in: it counts this much.
STALL = 0.1
# A window this wide holds nothing back: the opening is over.
DONE = 4096


class OpeningWindow:
    """Admissions in the air in the opening, bounded by the answers read (see the module)."""

    __slots__ = (
        "_aged",
        "_alive",
        "_answers",
        "_clock",
        "_finished",
        "_last",
        "_sent",
        "_taken",
        "on",
    )

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.on = True
        self._taken = 0  # slots taken, less those given back
        self._finished = 0  # attempts ended (any outcome)
        self._answers = 0  # of them, answered (not refused)
        self._alive = 0.0  # process time (see STALL)
        self._last = clock()
        self._sent: collections.deque[float] = collections.deque()  # `_alive` at each take
        self._aged = 0  # slots taken more than PRESUME (process time) ago

    def _tick(self) -> float:
        now = self._clock()
        self._alive += min(max(0.0, now - self._last), STALL)
        self._last = now
        return self._alive

    def room(self) -> float:
        """Slots the window has room for now (< 1: none); closes it once it holds nothing
        back (DONE)."""
        if not self.on:
            return float("inf")
        old = self._tick() - PRESUME
        sent = self._sent
        while sent and sent[0] <= old:
            sent.popleft()
            self._aged += 1
        aged = min(self._aged, self._taken)
        answers = max(self._answers, aged)
        if START + answers >= DONE:
            self.on = False
            return float("inf")
        freed = max(self._finished + (GROWTH - 1.0) * self._answers, GROWTH * aged)
        return START + freed - self._taken

    def take(self) -> None:
        """A slot of the window goes to an admission (booked: it sends within the opening's
        pace)."""
        self._taken += 1
        self._sent.append(self._tick())

    def give_back(self) -> None:
        """A slot taken and not used (a cut voided its booking, its waiter was cancelled)."""
        self._taken -= 1

    def finished(self, ok: bool) -> None:
        """An attempt admitted on a slot of the window ended; `ok`: answered (a refusal or a
        failure frees its slot without widening the window)."""
        self._tick()
        self._finished += 1
        if ok:
            self._answers += 1

    def close(self) -> None:
        """The opening is over: a limit is known (a cut, the server's headers)."""
        self.on = False
