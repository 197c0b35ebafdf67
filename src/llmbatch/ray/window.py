"""The Ray cluster's opening: a slow start clocked by answers, as TCP's congestion window.

    window = OpeningWindow(clock, on=True)              # off: nothing to learn (limits given)
    window.resolved(used=3, dropped=1, finished=2)    # what a worker's lease reports
    window.sent(3); window.answered(2)
    room = window.room(limits_known=False)             # slots the cluster may lease now
    delays = window.leased(delays, spread_over=0.02)   # the lease's slots, spread

While nothing is known of the server's limits, the cluster holds at most WINDOW_START +
WINDOW_GROWTH x (answers so far) slots leased and not yet finished, so it sends at most
WINDOW_START + 1.5 x answers before the first refusal: answers clock the opening, not time.
A loaded machine reads answers (and refusals) late; an opening that grew with wall time was
then at every worker's full width before the first refusal reached the actor.

The actor (`llmbatch.ray.limiter`) owns one window and asks it for room at every lease; the
window ends (`room` is None) once a limit is known or it is wide open.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Callable

__all__ = [
    "WINDOW_DONE",
    "WINDOW_GROWTH",
    "WINDOW_PRESUME",
    "WINDOW_SPREAD",
    "WINDOW_START",
    "OpeningWindow",
]

# Eight: half the bucket of a 1,000 req/min server, sent before anything is known of it.
WINDOW_START = 8
# Each answer widens the window by this much (TCP's slow start: by one, a doubling per round
# trip). The round that crosses a server's bucket goes out whole before its first refusal is
# read, and a loaded machine reads it late: at a doubling that round was twice what the
# server had just accepted, and up to half of it was refused (15 of 300 at one instant with
# two CPU burners beside the cluster). At 1.5x per round the crossing round is a third new.
# Only while at least half the window is in use (see `OpeningWindow.room`).
WINDOW_GROWTH = 0.5
# An LLM may take seconds to answer, while a refusal comes back at once: a slot in the air
# this long without a refusal counts as answered, so the opening of a slow server still
# grows every WINDOW_PRESUME (answers alone would take many of its latencies). Well above the
# 100-200 ms a loaded machine took to read a refusal and report it.
WINDOW_PRESUME = 0.5
# A lease's slots are spread (see `OpeningWindow.leased`) until this many answers: a
# bucket the opening has not crossed by then holds well over a hundred requests, and the
# spread costs a server that never refuses a timer per slot (measured: +4-18% on 4,000
# requests at 200 ms when every lease was spread).
WINDOW_SPREAD = 256
# Each lease weighs the slots sent and let pass before it by this (see `resolved`: the
# share of a window's held slots counted as in use); about the last twenty leases count.
_KEEP_DECAY = 0.95
WINDOW_DONE = 4096  # a window this wide holds nothing back: slow start is over


class OpeningWindow:
    """The opening's slots: leased, let pass or given back, sent, finished and answered,
    summed over the cluster's workers as their leases report them."""

    def __init__(self, clock: Callable[[], float], on: bool = True) -> None:
        self._clock = clock
        self.on = on  # off for good once slow start is over (see `room`)
        self._leased = 0  # slots leased, less those let pass unused or given back
        self._finished = 0  # attempts ended, any outcome
        self._answers = 0
        self._sent_at: collections.deque[tuple[float, int]] = collections.deque()
        self._aged = 0  # slots leased more than WINDOW_PRESUME ago
        self._removed = 0  # slots leased, then let pass unused or given back
        self.answered_so_far = 0  # answers (or slots aged as answered)
        self._acked = 0  # of those, the ones the window has been widened (or not) by
        self._growth = 0.0  # the window's width beyond WINDOW_START
        self._used = 0  # slots workers sent on (their attempts admitted)
        self._flight = 0.0  # the most slots in use seen since the last `room`
        # Of the slots workers resolved lately, those sent and those let pass (decaying)
        self._kept = 0.0
        self._lost = 0.0

    def resolved(self, used: int, dropped: int, finished: int) -> None:
        """A lease's report: `used` slots sent on, `dropped` let pass unused and `finished`
        attempts ended since the worker's last lease (`sent` counts `used` afterwards)."""
        self._leased -= dropped
        # Slots in use: attempts in the air as the workers last told (the ones this lease
        # reports as finished still count: their answers were for slots sent with these in
        # the air), and of the slots leased and not yet reported (held, or on their way to
        # a worker: with a server quicker than a lease's round trip, most of the window) the
        # share workers lately sent rather than let pass. A worker starved of CPU lets most
        # of its slots pass: they are no use of the window.
        self._kept = self._kept * _KEEP_DECAY + used
        self._lost = self._lost * _KEEP_DECAY + dropped
        resolved = self._kept + self._lost
        share = self._kept / resolved if resolved else 1.0
        used_all = self._used + used
        held = max(0, self._leased - used_all)
        in_use = used_all - self._finished + share * held
        self._flight = max(self._flight, in_use)
        self._removed += dropped
        self._finished += finished

    def sent(self, count: int) -> None:
        self._used += count

    def answered(self, count: int) -> None:
        self._answers += count

    def given_back(self, count: int) -> None:
        self._leased -= count
        self._removed += count

    def room(self, limits_known: bool) -> int | None:
        """Slots the window has room for; None once slow start is over (a limit is known:
        a refusal's cut, the server's headers; or the window is wide open)."""
        if not self.on:
            return None
        sent, old = self._sent_at, self._clock() - WINDOW_PRESUME
        while sent and sent[0][0] <= old:
            self._aged += sent.popleft()[1]
        # Answered (or in the air long enough without a refusal): each leaves the window and
        # widens it by WINDOW_GROWTH, as an acknowledgement in TCP's slow start. Slots let
        # pass or given back are no attempts in the air: they never age as answered (a
        # starved worker drops most of its slots; aged, they had counted its whole lease
        # as answered, and the window as empty).
        aged = max(0, min(self._aged - self._removed, self._leased))
        answered = max(self._answers, aged)
        self.answered_so_far = answered
        if limits_known or WINDOW_START + answered >= WINDOW_DONE:
            self.on = False
            return None
        if answered > self._acked:
            # TCP's congestion-window validation (RFC 7661; Linux grows in slow start only
            # while the window is under twice the packets out): an answer widens the window
            # only if at least half of it was in use. Workers that cannot fill it (few
            # callers, starved of CPU) widened it with every answer, to a width never sent
            # at; workers that joined later (Ray starts them 2-4.5 s apart on a loaded
            # machine) found all that room and took it at once (traced: a window of ~30 grown
            # while 1-4 were in the air; two workers joining at 2.2 s and a starved one
            # waking sent 34 within 30 ms, all 16 of the run's refusals).
            if WINDOW_START + self._growth < 2 * self._flight:
                self._growth += WINDOW_GROWTH * (answered - self._acked)
            self._acked = answered
        self._flight = 0.0
        out = max(self._finished, aged)  # answered, refused or aged out of the air
        return math.floor(WINDOW_START + self._growth + out) - self._leased

    def leased(self, delays: list[float], spread_over: float) -> list[float]:
        """Count a lease's slots (`delays` from now) and return them spread over
        `spread_over` seconds while the opening is young.

        A worker admits the slots due together at one instant, and one starved of CPU right
        after sends them together much later, into a bucket crossed meanwhile (traced with
        two CPU burners: one worker's 8-14 admitted within a few milliseconds, written
        20-330 ms later, all refused). Spread, a stall holds one or two admitted; the worker
        lets the slots it overran pass, or shifts them (see `LeasedLimiter._lag`), and its
        next lease brings the cut in force."""
        if self.answered_so_far < WINDOW_SPREAD and delays:
            step = spread_over / len(delays)
            delays = [max(delay, k * step) for k, delay in enumerate(delays)]
        self._leased += len(delays)
        if delays:
            self._sent_at.append((self._clock() + delays[-1], len(delays)))
        return delays
