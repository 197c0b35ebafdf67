"""Finishing by a deadline: how long the realtime path needs, and when work must move to it.

    deadline = parse_deadline("6h", now=time.time())             # or "2026-12-01T09:00"
    capacity = RealtimeCapacity(rpm=500, tpm=200_000, concurrency=32, latency=1.2)
    capacity.seconds(Work(1_000, 400_000, 150_000))              # 120.0: 1,000 requests at 500/min
    policy = DeadlinePolicy(deadline, prefer="cost")
    policy.should_switch(now, open_work, capacity)               # True: finish the rest realtime

The provider batch APIs cost half and promise nothing but "within 24 h"; the realtime path
costs full price and its duration follows from the limits. So the cheap plan is: everything
through the batch API, and when the time left falls to what realtime needs for what is still
open (plus a margin), take that work out of the batches and finish it realtime. The fast plan
is the mirror: realtime for what fits before the deadline, the batch API only for the rest.

The realtime estimate is `max` over every limit (requests, tokens, input and output tokens per
minute), over concurrency x latency, and over the throughput the run has measured
(`ThroughputMeter`: answers per second while realtime had more work than requests in flight):
whichever binds sets the pace. The measured bound sees what the others cannot: a client
short of CPU (writing lines, parsing replies), a limit nobody gave. It is a lower bound on
the real duration (retries and 429s only add), which is what the margin is for.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

__all__ = [
    "DeadlinePolicy",
    "Prefer",
    "RealtimeCapacity",
    "SplitPlan",
    "ThroughputMeter",
    "Work",
    "assumed_latency",
    "parse_deadline",
    "split_size",
]

Prefer = Literal["cost", "speed"]

# The realtime path is started with this much room beyond its estimate: a fraction of the
# estimate (retries, 429s, latency drift) and a floor (the switch itself: cancelling batches,
# collecting their partial results, the first requests' latency).
DEFAULT_MARGIN = 0.25
DEFAULT_MIN_MARGIN = 60.0
# Time for cancelled batches to end and return what they finished (OpenAI: "up to 10
# minutes"): the switch comes this much earlier, and waits up to this long before buying the
# still-open requests again realtime.
DEFAULT_CANCEL_TIME = 600.0
# Decode speed assumed for a hosted model when no realtime answer has been seen yet, and the
# fixed part of a call (connection, queueing, time to first token): conservative on purpose,
# since an estimate too low switches too late and misses the deadline.
ASSUMED_TOKENS_PER_SECOND = 50.0
ASSUMED_FIRST_TOKEN_SECONDS = 1.0
# A deadline run splits its work into about this many provider batches, so that a batch
# that comes back late costs only its share at the realtime price (one batch of everything
# makes a late batch cost the whole run twice over). Batch times are drawn per batch, so
# many batches also make the run's cost predictable: its spread shrinks as 1/sqrt(batches).
SPLIT_BATCHES = 20
# ... but no batch smaller than this: each costs an upload, a create and its polls.
MIN_SPLIT_REQUESTS = 100


@dataclass(slots=True, frozen=True)
class Work:
    """Requests and their estimated tokens (input from the text, output from max_tokens)."""

    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0

    def __add__(self, other: Work) -> Work:
        return Work(
            self.requests + other.requests,
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
        )

    def __sub__(self, other: Work) -> Work:
        return Work(
            max(0, self.requests - other.requests),
            max(0, self.input_tokens - other.input_tokens),
            max(0, self.output_tokens - other.output_tokens),
        )

    def share(self, requests: int) -> Work:
        """`requests` of these requests, with the average tokens of this work."""
        if self.requests <= 0 or requests <= 0:
            return Work()
        n = min(requests, self.requests)
        return Work(
            n,
            round(self.input_tokens * n / self.requests),
            round(self.output_tokens * n / self.requests),
        )


@dataclass(slots=True, frozen=True)
class RealtimeCapacity:
    """What the realtime path can do: per-minute limits (None: not limited or not known),
    requests in flight, seconds per request (seen so far, or assumed; None: unknown, and
    then concurrency sets no bound), and the requests per second it was seen to finish when
    it had work to spare (`ThroughputMeter`; None: not measured)."""

    rpm: float | None = None
    tpm: float | None = None
    itpm: float | None = None
    otpm: float | None = None
    concurrency: int = 32
    latency: float | None = None
    throughput: float | None = None

    def limits(self, work: Work) -> dict[str, float]:
        """Seconds `work` needs under each limit, by the name of its flag."""
        need: dict[str, float] = {}
        per_minute = (
            ("rpm", self.rpm, work.requests),
            ("tpm", self.tpm, work.input_tokens + work.output_tokens),
            ("itpm", self.itpm, work.input_tokens),
            ("otpm", self.otpm, work.output_tokens),
        )
        for name, limit, amount in per_minute:
            if limit:
                need[name] = 60.0 * amount / limit
        if work.requests and self.latency is not None:
            waves = math.ceil(work.requests / max(1, self.concurrency))
            need["concurrency"] = waves * self.latency
        if work.requests and self.throughput:
            need["throughput"] = work.requests / self.throughput
        return need

    def seconds(self, work: Work) -> float:
        """The least time the realtime path needs for `work`: the binding limit's."""
        return max(self.limits(work).values(), default=0.0)

    def binding(self, work: Work) -> str | None:
        """The name of the limit that sets the pace for `work`."""
        need = self.limits(work)
        return max(need, key=need.__getitem__) if need else None

    def requests_within(self, seconds: float, work: Work) -> int:
        """How many of `work`'s requests (at their average size) finish within `seconds`."""
        if work.requests <= 0 or seconds <= 0:
            return 0
        lo, hi = 0, work.requests
        while lo < hi:  # the estimate is monotone in the number of requests
            mid = (lo + hi + 1) // 2
            if self.seconds(work.share(mid)) <= seconds:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def needed(self, work: Work, seconds: float) -> dict[str, float]:
        """For each limit too low to finish `work` within `seconds`: the value that would do."""
        if seconds <= 0:
            return {}
        out: dict[str, float] = {}
        for name, took in self.limits(work).items():
            if took <= seconds or name == "throughput":  # measured: no setting raises it
                continue
            if name == "concurrency":
                assert self.latency is not None
                out[name] = float(math.ceil(work.requests * self.latency / seconds))
            else:
                current = getattr(self, name)
                out[name] = math.ceil(current * took / seconds)
        return out


class ThroughputMeter:
    """Answers per second of a path while it is saturated: more requests open than in flight.

        meter = ThroughputMeter()
        meter.finished(now, saturated=open_requests >= concurrency)   # at each answer
        meter.rate                       # requests/s, or None before `min_count` were timed

    Only the time between two answers with the path saturated throughout counts (work waiting
    means the path, not the supply of work, set the pace): idle stretches, and a path fed a
    few requests at a time (probes), say nothing of what it can do. The measure follows the
    recent past (weights halve every `window` answers): a client that grows short of CPU
    mid-run (batch results to write as well) is seen within a few hundred answers.
    """

    __slots__ = ("_since", "count", "min_count", "seconds", "timed", "window")

    def __init__(self, *, min_count: int = 64, window: int = 1000) -> None:
        self.min_count = min_count
        self.window = window
        self.seconds = 0.0  # weighted seconds saturated
        self.count = 0.0  # weighted answers in them
        self.timed = 0  # answers timed in all
        self._since: float | None = None

    def finished(self, now: float, *, saturated: bool) -> None:
        """One answer at `now`; `saturated`: the path still has more open than in flight."""
        if self._since is not None and now >= self._since:
            keep = 0.5 ** (1.0 / self.window)
            self.seconds = self.seconds * keep + (now - self._since)
            self.count = self.count * keep + 1.0
            self.timed += 1
        self._since = now if saturated else None

    @property
    def rate(self) -> float | None:
        if self.timed < self.min_count or self.seconds <= 0:
            return None
        return self.count / self.seconds


@dataclass(slots=True, frozen=True)
class SplitPlan:
    """How a deadline run divides its work, and whether the deadline can be met."""

    prefer: Prefer
    available: float  # seconds from now to the deadline
    realtime: Work  # sent realtime from the start (speed only)
    batch: Work
    realtime_seconds: float  # what realtime needs for the whole work
    reachable: bool  # the realtime path alone can finish everything in time
    shortfall: float  # seconds missing when not reachable
    needed: dict[str, float]  # limits that would make it reachable
    switch_in: float | None  # cost: seconds from now to the latest switch to realtime


@dataclass(slots=True, frozen=True)
class DeadlinePolicy:
    """When to move open work to realtime (cost), or how much to send realtime (speed).

    `deadline` is a `time.time()` value.
    """

    deadline: float
    prefer: Prefer = "cost"
    margin: float = DEFAULT_MARGIN
    min_margin: float = DEFAULT_MIN_MARGIN
    cancel_time: float = DEFAULT_CANCEL_TIME

    def reserve(self, realtime_seconds: float) -> float:
        """Time to set aside for a realtime estimate: the estimate plus the margin."""
        return realtime_seconds * (1.0 + self.margin) + self.min_margin

    def start_by(self, realtime_seconds: float) -> float:
        """The latest moment realtime can start on work of that estimate and finish in time."""
        return self.deadline - self.reserve(realtime_seconds)

    def switch_at(self, work: Work, capacity: RealtimeCapacity) -> float:
        """When `work` must leave the batches: the latest realtime start, less the time the
        cancelled batches get to return what they finished."""
        return self.start_by(capacity.seconds(work)) - self.cancel_time

    def should_switch(self, now: float, work: Work, capacity: RealtimeCapacity) -> bool:
        """True once the open `work` must leave the batches to be done by the deadline."""
        return work.requests > 0 and now >= self.switch_at(work, capacity)

    def realtime_share(self, now: float, work: Work, capacity: RealtimeCapacity) -> int:
        """Speed: how many of `work`'s requests realtime can finish before the deadline."""
        room = (self.deadline - now - self.min_margin) / (1.0 + self.margin)
        return capacity.requests_within(room, work)

    def plan(self, now: float, work: Work, capacity: RealtimeCapacity) -> SplitPlan:
        available = self.deadline - now
        need = capacity.seconds(work)
        reserve = self.reserve(need) + self.cancel_time
        reachable = reserve <= available
        usable = (available - self.min_margin) / (1.0 + self.margin)
        if self.prefer == "speed":
            realtime, switch_in = work.share(self.realtime_share(now, work, capacity)), None
        else:  # all batch; realtime only takes over what is open at the switch
            realtime, switch_in = Work(), max(0.0, available - reserve)
        return SplitPlan(
            prefer=self.prefer,
            available=available,
            realtime=realtime,
            batch=work - realtime,
            realtime_seconds=need,
            reachable=reachable,
            shortfall=0.0 if reachable else reserve - available,
            needed={} if reachable else capacity.needed(work, usable),
            switch_in=switch_in,
        )


def split_size(requests: int, cap: int | None = None) -> int:
    """The most requests one batch of a deadline run holds: the work cut into
    `SPLIT_BATCHES` batches, none under `MIN_SPLIT_REQUESTS`, none over `cap` (the user's or
    the provider's).

        split_size(20_000)          # 1000: twenty batches
        split_size(60)              # 100: one batch
    """
    size = max(MIN_SPLIT_REQUESTS, math.ceil(requests / SPLIT_BATCHES))
    return size if cap is None else max(1, min(size, cap))


def assumed_latency(work: Work) -> float:
    """Seconds per realtime request before any is seen: a first-token delay plus the
    average output bound at a typical decode speed."""
    per_request = work.output_tokens / work.requests if work.requests else 0.0
    return ASSUMED_FIRST_TOKEN_SECONDS + per_request / ASSUMED_TOKENS_PER_SECOND


_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(d|h|m|s)", re.IGNORECASE)
_UNIT = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}


def parse_deadline(text: str, *, now: float) -> float:
    """A deadline as a `time.time()` value, from a duration ("6h", "1h30m", "90m", "45s",
    "2d") or a date and time ("2026-12-01T09:00", local time unless it names a zone).

    Raises `ValueError` with a message meant for the user when `text` is neither, or is a
    duration that is not positive. A date and time already past is returned as it is.
    """
    s = text.strip()
    if s and _DURATION.sub("", s).strip() == "" and _DURATION.search(s):
        seconds = sum(float(n) * _UNIT[u.lower()] for n, u in _DURATION.findall(s))
        if seconds <= 0:
            raise ValueError(f"{text!r} is not a duration in the future")
        return now + seconds
    try:
        when = datetime.fromisoformat(s)
    except ValueError:
        raise ValueError(
            f"{text!r} is neither a duration (6h, 1h30m, 90m) nor a date and time "
            "(2026-12-01T09:00, 2026-12-01 09:00+01:00)"
        ) from None
    # A naive time is local time. A moment already past is accepted: a rerun after the
    # deadline (to finish what a crash left) sends everything open realtime at once.
    return when.timestamp()
