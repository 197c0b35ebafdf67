"""The send rate for a server that refuses without saying its limit: CUBIC, one cut per event.

    control = CubicRate(clock=time.monotonic)
    control.sent()                                   # at every admission
    if control.congested(permit_generation):         # a 429/503/529 came back
        ...                                          # the rate was cut: control.rate
    control.succeeded()                              # a success: regrow along the curve

Most gateways, proxies and self-hosted servers answer 429 (or 503/529 "overloaded") with at
most a `retry-after`, never their limit. The rate must then be found by probing, and the
probing must neither collapse nor oscillate wildly. The design is CUBIC (RFC 9438), the
congestion control that TCP on Linux and the AWS SDKs' "adaptive" retry mode use, applied to
a rate instead of a window. Chosen over AIMD because AIMD's additive regrowth is linear in
time and slow at high rates (minutes to climb back after one cut), while CUBIC's regrowth
time does not depend on the rate, is fast far from the last known limit and flat near it.

- **One decrease per congestion event.** Every admission carries the `generation` (the number
  of events answered so far: cuts, and `held` ones a limiter answered otherwise) it was
  admitted under. A refusal cuts only if its attempt was admitted after
  the last cut, and not within `cooldown` (1 s) of it: the burst of 429s answering one
  overshoot is one event, as TCP cuts once per window of losses, and a server whose bucket
  the overshoot emptied needs a moment to refill before its answers say anything new.
- **The cut is relative to the measured send rate**: the admissions of the last second, not a
  guess from what is in flight. The rate at the cut is `min(current rate, measured)`; the
  limit estimate `w_max` (below) lies between `beta` times it and it, and the new rate is
  `beta * w_max`, beta = 0.7.
- **Regrowth** follows `rate(t) = w_max + C * (t - K)**3` where `w_max` is the limit
  estimate made at the last cut, `C = 0.4` (requests/s per s^3, the AWS SDKs' constant) and
  `K = cbrt(w_max * (1 - beta) / C)`: concave back to `w_max` within K seconds (2.5 s at
  20 req/s, 9 s at 1,000 req/s), a plateau near it, then convex probing above it in case the
  limit rose. Above `w_max` the probe is gentle, `(w_max / 20**3 + 0.005) * t'**3` on top of
  `w_max` (at 20 req/s: +22% after 10 s), relative to `w_max` with a small absolute part so
  that a collapsed rate climbs back too (+5 req/s after 10 s, +17 after 15):
  a server's bucket hides an overshoot until it is empty, so feedback comes late, and limits
  rarely change mid-run. When cuts keep finding the same `w_max`, the probe slows further
  (its time scale doubling up to 8x), so a stable limit is overshot rarely.
- **The limit estimate** (`w_max`) is the goodput, what the server accepted in the second it
  began refusing, and no more than its average over the seconds before (up to 4, since the
  last cut), when there is one. A server's bucket holds a burst (a second's worth at the
  providers that police per second), so the last second alone counts the sustained rate plus
  what the bucket had stored when the second began: up to twice the limit after a lull (a run
  held back by its concurrency, a loaded machine) that let the bucket fill. Over 4 s the
  stored burst weighs a quarter as much. Without a goodput, CUBIC's fast convergence: the
  first cut (an unpaced opening burst overstates the limit) and a cut well below the last one
  aim lower still, at `(1 + beta) / 2` of the rate at the cut.
- **Growth is bounded by use**: the rate never grows past twice the measured send rate, so a
  run held back by its concurrency does not build up a rate it never tested. After the
  opening's guessed cut (below), by answers: 1.5 times the successes of the last second.
- **Units**: the same law paces tokens per second (the `RateLimiter`'s second control, for
  servers whose token budget is what refuses). `unit` (tokens per request, set at each cut)
  scales the law's absolute constants (`scale`, `min_rate`, the probe's floor), so the
  curve in request-equivalents is the same whatever the unit: a token rate recovers as fast
  as a request rate would. The two laws measure the same admissions and successes, so they
  share one `Meter` (requests in one column, tokens in the other): one count per admission
  and per success for both.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

__all__ = ["CubicRate", "Meter"]

DEFAULT_BETA = 0.7
DEFAULT_SCALE = 0.4  # requests/s per s^3
DEFAULT_COOLDOWN = 1.0
DEFAULT_MIN_RATE = 1.0 / 60.0  # one request a minute
_WINDOW = 1.0  # seconds of admissions that make the measured send rate
_BUCKETS = 10  # per _WINDOW
_GOODPUT_LOOKBACK = 4.0  # seconds of successes that bound the goodput at a cut (see `cut`)
_HISTORY = int(_GOODPUT_LOOKBACK / _WINDOW * _BUCKETS)  # buckets the meter keeps
_STABLE_BAND = 0.15  # two cuts this close in w_max: the limit looks stable
_MAX_PROBE_SLOWDOWN = 8.0
_FIRST_PROBE_SLOWDOWN = 1.0
_PROBE_SECONDS = 40.0  # seconds above w_max to double it, before any slowdown
# An absolute part of the probe (requests/s per s^3), so that a rate that collapsed (a w_max
# near zero) still climbs back: +5 req/s after 10 s, +17 after 15.
_PROBE_FLOOR = 0.005
_GUESS_DOUBLING = 1.0  # seconds per doubling while w_max is only a guess
# ... and at most this many times the answers of the last second: the regrowth after the
# opening's guessed cut is a slow start clocked by answers, as the opening was (bounded by
# twice the sends, a loaded machine that read its answers late had doubled into the refusing
# server before reading the refusal).
_GUESS_GROWTH = 1.5


class CubicRate:
    """A learned requests-per-second rate; `rate` is None until the first congestion event."""

    def __init__(
        self,
        *,
        beta: float = DEFAULT_BETA,
        scale: float = DEFAULT_SCALE,
        cooldown: float = DEFAULT_COOLDOWN,
        min_rate: float = DEFAULT_MIN_RATE,
        clock: Callable[[], float] = time.monotonic,
        meter: Meter | None = None,
        column: int = 0,
    ) -> None:
        """`meter` and `column`: measure in that column of a meter shared with another law
        (default: a meter of its own)."""
        if not 0 < beta < 1 or scale <= 0 or min_rate <= 0 or cooldown < 0:
            raise ValueError("beta must be in (0, 1), scale and min_rate > 0, cooldown >= 0")
        self.beta = beta
        self.scale = scale
        self.cooldown = cooldown
        self.min_rate = min_rate
        self.ceiling: float | None = None  # a limit stated by the user or the server
        self.rate: float | None = None
        self.generation = 0
        self.cuts = 0
        self._clock = clock
        self._w_max = 0.0
        self._cut_at = 0.0
        self._probe_slowdown = 1.0
        self._guessed = False  # w_max is a guess, not a measurement (see `cut`)
        self._opening_guess = False  # ... made in the run's first second (see `congested`)
        self._meter = meter if meter is not None else Meter(clock)
        self._column = column
        self.unit = 1.0  # what one request weighs in this control's unit (see the docstring)

    @property
    def limit_estimate(self) -> float | None:
        """The limit the last cut estimated (what the regrowth aims at), None before one."""
        return self._w_max if self.cuts else None

    # -- measuring ----------------------------------------------------------------------------

    def sent(self, count: float = 1, now: float | None = None) -> None:
        """`count` attempts (or tokens) were admitted now (`now`: the clock, if just read)."""
        if now is None:
            now = self._clock()
        self._meter.add(self._column, count, now)

    def measured(self) -> float:
        """Admissions per second over the last second (a run younger than that reads low,
        which errs on the side of a gentler first cut)."""
        return self._meter.rate(self._column)

    # -- reacting -----------------------------------------------------------------------------

    def congested(self, generation: int) -> bool:
        """A refusal of an attempt admitted under `generation`. Returns True if it cut."""
        now = self._clock()
        if generation < self.generation:
            return False  # part of an event already answered by a cut
        if self.cuts and now - self._cut_at < self.cooldown and not self._tested_guess(now):
            return False  # the server's bucket, emptied by the overshoot, is refilling
        self.cut(now)
        return True

    def held(self) -> None:
        """A congestion event answered without a cut (a limiter that knows its limit held
        instead): refusals of attempts admitted before now are part of it."""
        self.generation += 1

    def _tested_guess(self, now: float) -> bool:
        """The last cut was the run's first, in its first second (a guess from a young
        window), and an attempt admitted on the schedule it started (one interval at the
        guessed rate after it, at the earliest) was refused: the guess is too high, and that
        is known now, not after the cooldown. An opening read late on a loaded machine had
        measured 33/s against a 20/s server, and its guess drew a refusal every 0.15 s for
        the whole cooldown: 8 of a run's 21."""
        rate = self.rate
        if not self._opening_guess or not rate:
            return False
        return now - self._cut_at >= self.unit / rate

    def cut(self, now: float) -> None:
        """Cut now, unconditionally: `congested` decided this is a new event (or, for a
        control that follows another, the one it follows did)."""
        measured = self.measured()
        current = self.rate if self.rate is not None else math.inf
        at_cut = min(current, measured) if measured > 0 else current
        if not math.isfinite(at_cut):
            at_cut = self.unit  # a refusal before anything was measured: start low, regrow fast
        goodput = self._goodput(now)
        previous = self._w_max
        # A window younger than itself reads low (it divides by a full second): the first
        # cut in the run's first second (the opening's) only guesses w_max, and grows out of
        # the guess (see `_guessed`) instead of plateauing at it.
        first = self._meter.first_sent
        young = first is None or now - first < _WINDOW
        if young and not self.cuts:
            w_max = at_cut
        elif goodput > 0:
            # What the server accepted in the second it began refusing is its limit, as near
            # as can be measured (bounded: a young or idle window reads low).
            w_max = min(at_cut, max(goodput, self.beta * at_cut))
        elif not self.cuts or at_cut < previous * (1 - _STABLE_BAND):
            # No success to go by: the first cut answers an unpaced opening burst, which
            # overstates the limit, and a cut well below the last says the limit fell. Aim
            # lower still (CUBIC's fast convergence).
            w_max = at_cut * (1 + self.beta) / 2
        else:
            w_max = at_cut
        if previous and abs(w_max - previous) <= _STABLE_BAND * previous:
            self._probe_slowdown = min(_MAX_PROBE_SLOWDOWN, self._probe_slowdown * 2)
        else:
            self._probe_slowdown = _FIRST_PROBE_SLOWDOWN
        # A first cut with no success to measure (the opening's refusal came before any
        # answer) guessed w_max from a young window, which reads low: regrow by doubling
        # until the next refusal measures the limit, rather than plateau at the guess.
        self._guessed = (goodput <= 0 or young) and not self.cuts
        self._opening_guess = young and not self.cuts
        self._w_max = w_max
        self._cut_at = now
        self.rate = max(self.min_rate * self.unit, w_max * self.beta)
        if self.ceiling is not None:
            self.rate = min(self.rate, self.ceiling)
        self.generation += 1
        self.cuts += 1

    def _goodput(self, now: float) -> float:
        """Successes per second at a cut: the last second's, bounded by the average since the
        last cut (or the first admission), up to `_GOODPUT_LOOKBACK` seconds back.

        The server's bucket stored a burst while it was sent less than its limit, and lets it
        through on top of its sustained rate: in the second before a refusal it may have
        accepted twice its limit (traced: 1,320 tokens/s against a bucket refilling 1,000 a
        second, after a lull on a loaded machine). Spread over 4 s the burst counts a quarter
        as much; an average that reaches back into the slower regrowth after the last cut only
        reads low, which the cut bounds (`beta` times the rate at the cut).
        """
        column = _OK + self._column
        goodput = self._meter.rate(column)
        first = self._meter.first_sent
        if goodput <= 0 or first is None:
            return goodput
        start = max(now - _GOODPUT_LOOKBACK, self._cut_at if self.cuts else first)
        span = now - start
        if span >= 2 * _WINDOW:  # shorter: no better than the last second's
            goodput = min(goodput, self._meter.rate(column, span))
        return goodput

    def succeeded(self, count: float = 1, now: float | None = None) -> None:
        """`count` attempts (or tokens) succeeded: move the rate along the regrowth curve."""
        if now is None:
            now = self._clock()
        self._meter.add(_OK + self._column, count, now)
        if self.rate is not None:
            self.rate = self._target(now)

    def regrow(self, now: float) -> None:
        """Move the rate along the curve: a success the shared meter has counted already."""
        if self.rate is not None:
            self.rate = self._target(now)

    def _target(self, now: float) -> float:
        t = now - self._cut_at
        w_max = self._w_max
        unit = self.unit
        assert self.rate is not None
        if self._guessed:
            # Slow start: double every _GUESS_DOUBLING seconds from the cut rate, until a
            # refusal measures the limit; never past 1.5x the answers of the last second (nor
            # twice the sends, like the curve below).
            target: float = w_max * self.beta * 2.0 ** (t / _GUESS_DOUBLING)
            answers = self._meter.rate(_OK + self._column)
            bound = max(self.rate, min(2 * self.measured(), _GUESS_GROWTH * answers))
            target = max(self.min_rate * unit, min(target, bound))
            return target if self.ceiling is None else min(target, self.ceiling)
        c = self.scale * unit
        k = math.cbrt(w_max * (1 - self.beta) / c)
        if t > k:
            # Above w_max: probe, slowly (a server's bucket hides an overshoot for a while, so
            # feedback comes late), and slower still when the limit has looked stable.
            tau = (t - k) / self._probe_slowdown
            target = w_max + (w_max / _PROBE_SECONDS**3 + _PROBE_FLOOR * unit) * tau**3
        else:
            target = w_max + c * (t - k) ** 3
        assert self.rate is not None
        # Never grow past twice what is really being sent; never shrink on a success.
        bound = max(self.rate, 2 * self.measured())
        target = max(self.min_rate * unit, min(target, bound))
        if self.ceiling is not None:
            target = min(target, self.ceiling)
        return target


_COLUMNS = 4  # per bucket: sent and succeeded, each in two units
_OK = 2  # the succeeded columns start here


class Meter:
    """Admissions and successes per second over the last `_WINDOW` seconds (or up to
    `_GOODPUT_LOOKBACK`), in two units (column 0: requests, 1: tokens), in one ring of
    buckets: O(1) per count.

        meter.sent(1, 640, now)         # one request of ~640 tokens admitted
        meter.rate(0)                   # requests admitted per second, lately
    """

    __slots__ = ("_clock", "_counts", "_slot", "first_sent")

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._counts: list[float] = [0.0] * (_HISTORY * _COLUMNS)
        self._slot = math.floor(clock() * _BUCKETS / _WINDOW)
        self.first_sent: float | None = None  # the first admission's time

    def _advance(self, slot: int) -> None:
        gap = slot - self._slot
        if gap > 0:
            counts = self._counts
            for i in range(1, min(gap, _HISTORY) + 1):
                base = (self._slot + i) % _HISTORY * _COLUMNS
                counts[base : base + _COLUMNS] = (0.0, 0.0, 0.0, 0.0)
            self._slot = slot

    def add(self, column: int, count: float, now: float) -> None:
        """Count `count` in `column` (0, 1: sent; `_OK` + 0, 1: succeeded)."""
        slot = math.floor(now * _BUCKETS / _WINDOW)
        if slot != self._slot:
            self._advance(slot)
        if column < _OK and self.first_sent is None:
            self.first_sent = now
        self._counts[slot % _HISTORY * _COLUMNS + column] += count

    def sent(self, requests: float, tokens: float, now: float) -> None:
        """An admission in both units at once (the limiter's hot path)."""
        slot = math.floor(now * _BUCKETS / _WINDOW)
        if slot != self._slot:
            self._advance(slot)
        if self.first_sent is None:
            self.first_sent = now
        base = slot % _HISTORY * _COLUMNS
        counts = self._counts
        counts[base] += requests
        counts[base + 1] += tokens

    def succeeded(self, requests: float, tokens: float, now: float, resent: float = 0.0) -> None:
        """Successes in both units at once; `resent`: tokens to add to what was sent (an
        answer's usage correcting its admission's estimate), counted in the same step."""
        slot = math.floor(now * _BUCKETS / _WINDOW)
        if slot != self._slot:
            self._advance(slot)
        base = slot % _HISTORY * _COLUMNS
        counts = self._counts
        if resent:
            counts[base + 1] += resent
        counts[base + _OK] += requests
        counts[base + _OK + 1] += tokens

    def rate(self, column: int, seconds: float = _WINDOW) -> float:
        """Per second, over the last `seconds` (at most `_GOODPUT_LOOKBACK`), in `column`."""
        slot = math.floor(self._clock() * _BUCKETS / _WINDOW)
        self._advance(slot)
        n = min(_HISTORY, max(1, round(seconds * _BUCKETS / _WINDOW)))
        counts = self._counts
        total = 0.0
        for s in range(slot - n + 1, slot + 1):
            total += counts[s % _HISTORY * _COLUMNS + column]
        return total / (n * _WINDOW / _BUCKETS)
