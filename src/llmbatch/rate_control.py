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
  of cuts so far) it was admitted under. A refusal cuts only if its attempt was admitted after
  the last cut: the burst of 429s answering one overshoot is one event, as TCP cuts once per
  window of losses.
- **The cut is relative to the measured send rate**: the admissions of the last second, not a
  guess from what is in flight. `rate = beta * min(current rate, measured)`, beta = 0.7.
- **Regrowth** follows `rate(t) = w_max + c * (t - K)**3` where `w_max` is the rate at the
  last cut and `K = regrow_seconds`: concave back to `w_max` within K seconds, a plateau near
  it, then convex probing above it in case the limit rose. `c` scales with `w_max`, so the
  shape in time is the same at 10 req/min and at 10,000. When cuts keep finding the same
  `w_max`, the probe above it slows down (doubling the convex phase's time scale up to 8x):
  a stable limit is then overshot rarely, which matters because each overshoot of a server
  that sends `retry-after: 1` costs a whole second. CUBIC's fast convergence applies: a cut
  below the previous `w_max` lowers `w_max` further (the limit probably fell).
- **Growth is bounded by use**: the rate never grows past twice the measured send rate, so a
  run held back by its concurrency does not build up a rate it never tested.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

__all__ = ["CubicRate"]

DEFAULT_BETA = 0.7
DEFAULT_REGROW_SECONDS = 2.0
DEFAULT_MIN_RATE = 1.0 / 60.0  # one request a minute
_WINDOW = 1.0  # seconds of admissions that make the measured send rate
_BUCKETS = 10
_STABLE_BAND = 0.15  # two cuts this close in w_max: the limit looks stable
_MAX_PROBE_SLOWDOWN = 8.0


class CubicRate:
    """A learned requests-per-second rate; `rate` is None until the first congestion event."""

    def __init__(
        self,
        *,
        beta: float = DEFAULT_BETA,
        regrow_seconds: float = DEFAULT_REGROW_SECONDS,
        min_rate: float = DEFAULT_MIN_RATE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 < beta < 1 or regrow_seconds <= 0 or min_rate <= 0:
            raise ValueError("beta must be in (0, 1), regrow_seconds and min_rate > 0")
        self.beta = beta
        self.regrow_seconds = regrow_seconds
        self.min_rate = min_rate
        self.ceiling: float | None = None  # a limit stated by the user or the server
        self.rate: float | None = None
        self.generation = 0
        self.cuts = 0
        self._clock = clock
        self._w_max = 0.0
        self._cut_at = 0.0
        self._probe_slowdown = 1.0
        # Admissions per 1/_BUCKETS of the window, as a ring: O(1) per admission.
        self._counts = [0] * _BUCKETS
        self._slot = math.floor(clock() * _BUCKETS / _WINDOW)

    # -- measuring ----------------------------------------------------------------------------

    def _advance(self, now: float) -> None:
        slot = math.floor(now * _BUCKETS / _WINDOW)
        gap = slot - self._slot
        if gap > 0:
            for i in range(1, min(gap, _BUCKETS) + 1):
                self._counts[(self._slot + i) % _BUCKETS] = 0
            self._slot = slot

    def sent(self, count: int = 1) -> None:
        """`count` attempts were admitted now."""
        self._advance(self._clock())
        self._counts[self._slot % _BUCKETS] += count

    def measured(self) -> float:
        """Admissions per second over the last second (a run younger than that reads low,
        which errs on the side of a gentler first cut)."""
        self._advance(self._clock())
        return sum(self._counts) / _WINDOW

    # -- reacting -----------------------------------------------------------------------------

    def congested(self, generation: int) -> bool:
        """A refusal of an attempt admitted under `generation`. Returns True if it cut."""
        if generation < self.generation:
            return False  # part of an event already answered by a cut
        now = self._clock()
        measured = self.measured()
        current = self.rate if self.rate is not None else math.inf
        at_cut = min(current, measured) if measured > 0 else current
        if not math.isfinite(at_cut):
            at_cut = 1.0  # a refusal before anything was measured: start low, regrow fast
        previous = self._w_max
        # Fast convergence: a cut below the last one says the limit fell; aim lower still.
        fell = previous and at_cut < previous
        w_max = at_cut * (1 + self.beta) / 2 if fell else at_cut
        if previous and abs(w_max - previous) <= _STABLE_BAND * previous:
            self._probe_slowdown = min(_MAX_PROBE_SLOWDOWN, self._probe_slowdown * 2)
        else:
            self._probe_slowdown = 1.0
        self._w_max = w_max
        self._cut_at = now
        self.rate = max(self.min_rate, at_cut * self.beta)
        if self.ceiling is not None:
            self.rate = min(self.rate, self.ceiling)
        self.generation += 1
        self.cuts += 1
        return True

    def succeeded(self) -> None:
        """An attempt succeeded: move the rate along the regrowth curve."""
        if self.rate is None:
            return
        self.rate = self._target(self._clock())

    def _target(self, now: float) -> float:
        k = self.regrow_seconds
        t = now - self._cut_at
        w_max = self._w_max
        c = w_max * (1 - self.beta) / k**3
        if t > k:  # above w_max: probe, slower when the limit has looked stable
            scale = self._probe_slowdown
            target = w_max + c * ((t - k) / scale) ** 3
        else:
            target = w_max + c * (t - k) ** 3
        assert self.rate is not None
        # Never grow past twice what is really being sent; never shrink on a success.
        bound = max(self.rate, 2 * self.measured())
        target = max(self.min_rate, min(target, bound))
        if self.ceiling is not None:
            target = min(target, self.ceiling)
        return target
