"""Requests of one prefix sent together; a new prefix warmed up by one request first.

    schedule = PrefixSchedule(requests, prefix_of, census.shared)
    async for sched in schedule:                  # Scheduled(item, prefix, shared, ttl)
        send(sched.item)                          # ... and when its result comes back:
        schedule.answered(sched.item.id)
    for sched in schedule.grouped(): ...          # the grouping alone (batch API, Ray)

A provider's cache entry is readable only once the request that wrote it has been answered.
Sent in input order at full concurrency, the first 64 requests of a new prefix all miss (and
on Anthropic all pay the cache write), and with 20 prefixes interleaved, requests land where
their prefix is not. So the schedule reads ahead through a bounded **window** (requests and
characters), groups what it read by prefix, and sends:

1. requests without a cacheable prefix at once, in input order (nothing to wait for);
2. one request of each new (cold) group as soon as it is read, the **warm-up**; the rest of
   that group waits for its answer (`answered`) while other groups go on;
3. the requests of the group it is draining, one after another;
4. the next group (oldest first) that is warm: its prefix was answered recently enough
   (80% of the cache TTL) to still be cached.

With `per_group`, a group takes at most that many of the requests in flight while other
groups have requests to send (OpenAI: a burst of one prefix spills to machines that have not
seen it); with nothing else to send it takes the free workers anyway, so a run of one prefix
goes at full concurrency.

When everything in the window waits on a warm-up, the schedule waits for an answer (or
`max_hold` seconds: a warm-up stuck in retries releases its group rather than stall the
run). A warm-up that fails releases its group too: the others are sent and fail or succeed
on their own. Memory is the window, plus one timestamp per recently warm prefix (at most
`max_warm`). Output order never mattered (every result carries its id; export restores input
order). A prefix the census never saw twice, alone in the window, is sent as is: a warm-up
with nobody waiting behind it would only add a write.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass

from ..types import BatchRequest
from .limits import TTL_SECONDS
from .prefix import Prefix
from .transform import TTL

__all__ = [
    "DEFAULT_MAX_HOLD",
    "DEFAULT_WINDOW",
    "DEFAULT_WINDOW_CHARS",
    "PrefixSchedule",
    "Scheduled",
]

DEFAULT_WINDOW = 8192  # requests read ahead at most
DEFAULT_WINDOW_CHARS = 32_000_000  # ... and characters of their text at most
DEFAULT_MAX_HOLD = 120.0  # seconds a group waits for its warm-up at most
WARM_SHARE = 0.8  # a prefix counts as cached for this share of its TTL after its last use
MAX_WARM = 65_536


@dataclass(slots=True)
class Scheduled:
    """A request as the schedule releases it: with its prefix (None: none worth caching),
    whether other requests share it, and the cache TTL its group asks for."""

    item: BatchRequest
    prefix: Prefix | None
    shared: bool = False
    ttl: TTL = "5m"


class PrefixSchedule:
    """See the module docstring. `prefix_of` gives a request's cacheable prefix (or None);
    `shared` says whether the input holds the prefix more than once (the census); `ttl_of`
    the cache TTL of a group."""

    def __init__(
        self,
        requests: Iterator[BatchRequest],
        prefix_of: Callable[[BatchRequest], Prefix | None],
        shared: Callable[[Prefix], bool],
        *,
        ttl_of: Callable[[Prefix], TTL] = lambda _: "5m",
        window: int = DEFAULT_WINDOW,
        window_chars: int = DEFAULT_WINDOW_CHARS,
        max_hold: float = DEFAULT_MAX_HOLD,
        per_group: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        max_warm: int = MAX_WARM,
    ) -> None:
        self._source = requests
        self._prefix_of = prefix_of
        self._shared = shared
        self._ttl_of = ttl_of
        self.window = max(1, window)
        self.window_chars = window_chars
        self.max_hold = max_hold
        self.per_group = per_group
        self._in_flight: dict[str, int] = {}  # with `per_group`: request id -> group
        self._group_in_flight: collections.Counter[int] = collections.Counter()
        self._parked: set[int] = set()  # groups at `per_group`, back on an answer
        self._clock = clock
        self._max_warm = max_warm
        self._exhausted = False
        self._groups: dict[int, collections.deque[tuple[BatchRequest, Prefix, int]]] = {}
        self._passthrough: collections.deque[tuple[BatchRequest, int]] = collections.deque()
        self._ready: collections.deque[int] = collections.deque()
        self._cold: collections.deque[int] = collections.deque()
        self._warm: collections.OrderedDict[int, float] = collections.OrderedDict()
        self._warming: dict[str, tuple[int, float]] = {}  # warm-up id -> (group, since)
        self._warming_groups: dict[int, str] = {}
        self._current: int | None = None
        self._wake: asyncio.Event | None = None
        self.buffered = 0
        self.buffered_chars = 0
        # What the schedule did, for tests and stats.
        self.max_buffered = 0
        self.warmups = 0
        self.released_on_hold = 0

    # -- reading ahead ------------------------------------------------------------------------

    def _fill(self) -> None:
        while (
            not self._exhausted
            and self.buffered < self.window
            and self.buffered_chars < self.window_chars
        ):
            item = next(self._source, None)
            if item is None:
                self._exhausted = True
                return
            size = item.request.text_length()
            self.buffered += 1
            self.buffered_chars += size
            self.max_buffered = max(self.max_buffered, self.buffered)
            prefix = self._prefix_of(item)
            if prefix is None:
                self._passthrough.append((item, size))
                continue
            queue = self._groups.get(prefix.key)
            if queue is None:
                queue = self._groups[prefix.key] = collections.deque()
            if not queue:
                self._enqueue(prefix.key)
            queue.append((item, prefix, size))

    def _enqueue(self, key: int) -> None:
        if key in self._warming_groups:
            return  # released when its warm-up is answered
        (self._ready if self._is_warm(key, self._clock()) else self._cold).append(key)

    def _is_warm(self, key: int, now: float) -> bool:
        last = self._warm.get(key)
        if last is None:
            return False
        queue = self._groups.get(key)
        ttl = self._ttl_of(queue[0][1]) if queue else "5m"
        return now - last <= WARM_SHARE * TTL_SECONDS[ttl]

    # -- releasing ----------------------------------------------------------------------------

    def _take(self, key: int, now: float, *, warm_up: bool = False) -> Scheduled:
        queue = self._groups[key]
        item, prefix, size = queue.popleft()
        self.buffered -= 1
        self.buffered_chars -= size
        shared = bool(queue) or key in self._warm or self._shared(prefix)
        if not queue:
            del self._groups[key]
        if self.per_group is not None:
            self._in_flight[item.id] = key
            self._group_in_flight[key] += 1
        if warm_up:
            self.warmups += 1
            self._warming[item.id] = (key, now)
            self._warming_groups[key] = item.id
        else:
            self._touch(key, now)
        return Scheduled(item, prefix, shared, self._ttl_of(prefix))

    def _touch(self, key: int, now: float) -> None:
        # Each use refreshes a provider's cache entry, so it refreshes our "warm" too.
        self._warm[key] = now
        self._warm.move_to_end(key)
        while len(self._warm) > self._max_warm:
            self._warm.popitem(last=False)

    def _pick(self, now: float, *, hold: bool) -> Scheduled | None:
        if self._passthrough:
            item, size = self._passthrough.popleft()
            self.buffered -= 1
            self.buffered_chars -= size
            return Scheduled(item, None)
        if hold and (warm_up := self._warm_up(now)) is not None:
            return warm_up
        current = self._current
        if current is not None and current in self._groups and current not in self._warming_groups:
            if not hold:
                return self._take(current, now)
            if self._full(current):
                self._parked.add(current)  # back in `_ready` on an answer
            elif self._is_warm(current, now):
                return self._take(current, now)
            else:
                self._cold.append(current)  # its entry has likely expired: warm it up again
            self._current = None
        while self._ready:
            key = self._ready[0]
            if key not in self._groups or key in self._warming_groups:
                self._ready.popleft()
                continue
            if hold and self._full(key):
                self._ready.popleft()
                self._parked.add(key)
                continue
            if hold and not self._is_warm(key, now):
                self._ready.popleft()
                self._cold.append(key)  # its entry has likely expired: warm it up again
                if (warm_up := self._warm_up(now)) is not None:
                    return warm_up
                continue
            self._current = key
            return self._take(key, now)
        if not hold:
            while self._cold:
                key = self._cold.popleft()
                if key in self._groups:
                    self._current = key
                    return self._take(key, now)
            return None
        if self._parked:
            # Nothing else to send: `per_group` spreads the requests in flight over groups
            # when there are several, it never leaves a worker idle when there are not.
            group_in_flight = self._group_in_flight
            best = min(
                (k for k in self._parked if k in self._groups and self._is_warm(k, now)),
                key=lambda k: group_in_flight[k],
                default=None,
            )
            if best is not None:
                return self._take(best, now)
        return None

    def _warm_up(self, now: float) -> Scheduled | None:
        """One request of the next cold group, ahead of the warm groups' requests: its answer
        takes a request's latency, so it is started as soon as the group is seen, while the
        warm groups keep the workers busy."""
        while self._cold:
            key = self._cold.popleft()
            queue = self._groups.get(key)
            if not queue or key in self._warming_groups:
                continue
            if self._is_warm(key, now):
                self._ready.append(key)
                continue
            prefix = queue[0][1]
            if len(queue) == 1 and not self._shared(prefix) and key not in self._warm:
                return self._take(key, now)  # alone: nobody to warm up for
            # The rest of the group is put back in `_ready` when this one is answered.
            return self._take(key, now, warm_up=True)
        return None

    def _full(self, key: int) -> bool:
        return self.per_group is not None and self._group_in_flight[key] >= self.per_group

    def answered(self, request_id: str) -> None:
        """The result of `request_id` came back: if it was a warm-up, its group goes."""
        if self.per_group is not None:
            group = self._in_flight.pop(request_id, None)
            if group is not None:
                self._group_in_flight[group] -= 1
                if self._group_in_flight[group] <= 0:
                    del self._group_in_flight[group]
                if group in self._parked and not self._full(group):
                    self._parked.discard(group)
                    if group in self._groups:
                        self._ready.append(group)
                    if self._wake is not None:
                        self._wake.set()
        found = self._warming.pop(request_id, None)
        if found is None:
            return
        key, _ = found
        self._release(key, self._clock())

    def _release(self, key: int, now: float) -> None:
        self._warming_groups.pop(key, None)
        self._touch(key, now)
        if key in self._groups:
            self._ready.append(key)
        if self._wake is not None:
            self._wake.set()

    def _release_overdue(self, now: float) -> float | None:
        """Release groups whose warm-up is older than `max_hold`; the seconds until the next
        one would be (None: no warm-up pending)."""
        soonest: float | None = None
        for rid, (key, since) in list(self._warming.items()):
            left = since + self.max_hold - now
            if left <= 0:
                del self._warming[rid]
                self.released_on_hold += 1
                self._release(key, now)
            elif soonest is None or left < soonest:
                soonest = left
        return soonest

    # -- the two ways out ---------------------------------------------------------------------

    def __aiter__(self) -> AsyncIterator[Scheduled]:
        return self._stream()

    async def _stream(self) -> AsyncIterator[Scheduled]:
        self._wake = asyncio.Event()
        while True:
            self._fill()
            now = self._clock()
            item = self._pick(now, hold=True)
            if item is not None:
                yield item
                continue
            parked = any(key in self._groups for key in self._parked)
            if not self._warming and not parked:
                if self._exhausted and self.buffered == 0:
                    return
                # Nothing held and nothing to send: cannot be, unless state is broken.
                raise RuntimeError("prompt-cache schedule: requests buffered but none sendable")
            self._wake.clear()
            wait = self._release_overdue(now)
            if wait is None and not parked:
                continue
            try:
                async with asyncio.timeout(wait):  # None: until an answer comes
                    await self._wake.wait()
            except TimeoutError:
                pass

    def grouped(self) -> Iterator[Scheduled]:
        """The requests grouped by prefix within the window, none held (every warm-up would
        wait for nothing: a provider batch or a Ray chunk is sent at once)."""
        while True:
            self._fill()
            item = self._pick(self._clock(), hold=False)
            if item is None:
                return
            yield item
