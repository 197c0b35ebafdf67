"""The rate limiter's opening on a server whose limits are unknown: a slow start clocked by
answers, not by time.

    window = OpeningWindow()
    if window.room() >= 1:
        window.take()                  # an admission goes out in the opening
    window.finished(ok=True)           # its answer came back: room for GROWTH more
    window.looked(late=0.0)            # every POLL while callers wait: prompt time passes

While nothing is known of a server's limits, at most `START` + (`GROWTH` - 1) x answers
admissions are in the air: each answer frees its slot and makes room for `GROWTH` - 1 more,
so every round of answers sends `GROWTH` times the last (TCP's slow start, 2x; here 1.5x).
A refusal comes back at once while an answer takes the server's latency, so in an unhurried
process the first refusal is read before the next round goes out; on a loaded machine it is
read late, and then time alone must not widen the opening: the opening's old pace (doubling
every 50 ms) sent a round into a server that had been refusing for 100 ms (11 refusals of
400 in one run). Answers read clock the window, so a late read delays the sends too.

A slow server (an LLM answering in seconds) would keep the window shut for a latency per
round, and a server that never refuses would pay for the ramp (8 to 512 in flight in ten
answer latencies: 2 s at 200 ms). A refusal comes back within milliseconds, so a slot in
the air `PRESUME` (50 ms) without one, in a process that reads its sockets promptly, was
accepted: it counts as answered, and the window doubles every 50 ms as the opening's old
pace did. Only prompt time counts: the window looks again every `POLL` while callers wait,
and a look that wakes more than `LAG` late says the process is starved or busy (it would read
a refusal late just as well), so that interval counts nothing. Under load the opening is
then clocked by answers, and by a slower presumption that counts every look as POLL,
however late (`SLOW_PRESUME`, half a second of looks, 1.5x): a slow server still opens on
a loaded machine, and a process starved of CPU for half a second does not presume every
slot answered the moment it runs again, before it reads the refusals waiting for it.

The Ray cluster's actor has its own window (`llmbatch.ray.limiter`); this one is the local
limiter's, on the permits it admits.
"""

from __future__ import annotations

import collections

__all__ = ["OpeningWindow"]

# The first round: what `concurrency="auto"` opens at too (8 in flight).
START = 8
# Each answer makes room for this many sends (1.5x a round): on a server that refuses without
# headers, the round that finds the bucket empty overshoots by half of what was answered, not
# all of it (2x). An unloaded process grows faster, by presumption (below).
GROWTH = 1.5
# A slot in the air this long (prompt time, see LAG) without a refusal counts as answered
# (a refusal is read within milliseconds by a process that keeps its timers); each such slot
# makes room for PRESUMED_GROWTH: without any sign of a limit, the old pace's doubling.
PRESUME = 0.05
PRESUMED_GROWTH = 2.0
# ... and any slot this long in the air, in looks however late (POLL each), for GROWTH: a
# loaded process, whose looks are late, still opens on a slow server (a stall of the process
# counts one look).
SLOW_PRESUME = 0.5
# How often the window looks again while callers wait for it, without an answer to wake it.
POLL = 0.01
# A look that wakes later than this after its time: the process is starved (traced: stalls of
# 0.3 to 1.0 s under two CPU burners) or busy, and reads refusals late too: the interval is
# not counted towards PRESUME.
LAG = 0.005
# A window this wide (in the air, by answers) holds nothing back: the opening is over, and
# admissions take the limiter's fast path again (`auto` concurrency goes up to 256).
DONE = 1024


class OpeningWindow:
    """Admissions in the air in the opening, bounded by the answers read (see the module)."""

    __slots__ = (
        "_aged",
        "_aged_slowly",
        "_alive",
        "_answers",
        "_finished",
        "_looks",
        "_sent",
        "_sent_looks",
        "_taken",
        "on",
    )

    def __init__(self) -> None:
        self.on = True
        self._taken = 0  # slots taken, less those given back
        self._finished = 0  # attempts ended (any outcome)
        self._answers = 0  # of them, answered (not refused)
        self._alive = 0.0  # prompt time (see LAG)
        self._looks = 0.0  # looks, however late, POLL each (see SLOW_PRESUME)
        self._sent: collections.deque[float] = collections.deque()  # `_alive` at each take
        self._aged = 0  # slots taken more than PRESUME (prompt time) ago
        self._sent_looks: collections.deque[float] = collections.deque()  # `_looks` at each
        self._aged_slowly = 0  # slots taken more than SLOW_PRESUME (looks) ago

    def looked(self, late: float) -> None:
        """The window looked again `late` seconds after its time (one POLL after the last
        look): a prompt look counts the POLL towards PRESUME."""
        self._looks += POLL
        if late <= LAG:
            self._alive += POLL

    def room(self) -> float:
        """Slots the window has room for now (< 1: none); closes it once it holds nothing
        back (DONE)."""
        if not self.on:
            return float("inf")
        old = self._alive - PRESUME
        sent = self._sent
        while sent and sent[0] <= old:
            sent.popleft()
            self._aged += 1
        old = self._looks - SLOW_PRESUME
        sent = self._sent_looks
        while sent and sent[0] <= old:
            sent.popleft()
            self._aged_slowly += 1
        aged = min(self._aged, self._taken)
        aged_slowly = min(self._aged_slowly, self._taken)
        answers = max(self._answers, aged, aged_slowly)
        if START + (GROWTH - 1.0) * answers >= DONE:
            self.on = False
            return float("inf")
        freed = max(
            self._finished + (GROWTH - 1.0) * self._answers,
            PRESUMED_GROWTH * aged,
            GROWTH * aged_slowly,
        )
        return START + freed - self._taken

    def take(self) -> None:
        """A slot of the window goes to an admission (booked: it sends within the opening's
        pace)."""
        self._taken += 1
        self._sent.append(self._alive)
        self._sent_looks.append(self._looks)

    def give_back(self) -> None:
        """A slot taken and not used (a cut voided its booking, its waiter was cancelled)."""
        self._taken -= 1

    def finished(self, ok: bool) -> None:
        """An attempt admitted on a slot of the window ended; `ok`: answered (a refusal or a
        failure frees its slot without widening the window)."""
        self._finished += 1
        if ok:
            self._answers += 1
