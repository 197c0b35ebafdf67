"""Statistics over a batch's results, computed in one pass and in bounded memory.

    stats = calculate_batch_stats(results)
    print(stats)             # Total: 100 | Success: 98 | Failed: 2 (98.0%) | Avg: 1.20s ...
    stats.p95_duration, stats.failed_requests, stats.errors_by_type

`StatsCollector` is the incremental form: feed it results as they finish (it is also an
engine listener) and take a `BatchStats` snapshot at any time. It keeps one float per request
for each percentile series (8 MB per million each: duration, admission wait, provider time)
and the failed ids.

Admission wait and provider time are per request, summed over its attempts, and taken over
the requests that made at least one call and carry timing (`BatchResult.timing`, or the
output line's "wait"/"provider"): cache hits and results from elsewhere do not dilute them.
"""

from __future__ import annotations

import math
from array import array
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .errors import error_code
from .events import Event, RequestFinished
from .tiers import lane_of, served_tier
from .types import BatchResult

__all__ = ["BatchStats", "StatsCollector", "calculate_batch_stats", "price_note"]


@dataclass(slots=True, frozen=True)
class BatchStats:
    """Summary of a batch. Durations are seconds.

    `cost` is USD over the results that carry one (`BatchResult.cost`, the output's `cost`),
    failed ones included (a reply paid for but refused or off-schema, an attempt that timed out
    and may have been billed), None when none does; `cost_by_model` splits it by the model
    that answered;
    `unpriced_count` counts successes without a price (an unknown model).
    """

    total_requests: int = 0
    success_count: int = 0
    failure_count: int = 0
    cached_count: int = 0
    average_duration: float = 0.0
    min_duration: float = 0.0
    max_duration: float = 0.0
    p50_duration: float = 0.0
    p95_duration: float = 0.0
    p99_duration: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_attempts: int = 0
    failed_requests: tuple[str, ...] = ()
    errors_by_type: dict[str, int] = field(default_factory=dict)
    cost: float | None = None
    p50_wait: float = 0.0
    p95_wait: float = 0.0
    p99_wait: float = 0.0
    p50_provider: float = 0.0
    p95_provider: float = 0.0
    p99_provider: float = 0.0
    timed_requests: int = 0  # requests the wait and provider percentiles are taken over
    cost_by_model: dict[str, float] = field(default_factory=dict)
    unpriced_count: int = 0
    # Answers per lane ("batch", "flex", "standard", "priority": `llmbatch.tiers.lane_of`)
    # and what they cost; for the flex and priority lanes, their answers per price list
    # that priced them ({"priority": {"priority": 90, "standard": 10}}: the price source).
    answers_by_lane: dict[str, int] = field(default_factory=dict)
    cost_by_lane: dict[str, float] = field(default_factory=dict)
    priced_by_lane: dict[str, dict[str, int]] = field(default_factory=dict)
    # The provider's prompt cache: input tokens read from it and written to it, and the USD
    # the answers cost less than the same answers without a cache would have (None: unpriced).
    cached_prompt_tokens: int = 0
    cache_write_tokens: int = 0
    cache_saved: float | None = None

    @property
    def cache_hit_share(self) -> float:
        """Share of the input tokens read from the provider's prompt cache."""
        return self.cached_prompt_tokens / self.prompt_tokens if self.prompt_tokens else 0.0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def success_rate(self) -> float:
        return 100.0 * self.success_count / self.total_requests if self.total_requests else 0.0

    def to_dict(self) -> dict[str, object]:
        return {
            "total_requests": self.total_requests,
            "success_count": self.success_count,
            "failure_count": self.failure_count,
            "cached_count": self.cached_count,
            "success_rate": round(self.success_rate, 3),
            "avg_duration_ms": round(self.average_duration * 1000, 3),
            "min_duration_ms": round(self.min_duration * 1000, 3),
            "max_duration_ms": round(self.max_duration * 1000, 3),
            "p50_duration_ms": round(self.p50_duration * 1000, 3),
            "p95_duration_ms": round(self.p95_duration * 1000, 3),
            "p99_duration_ms": round(self.p99_duration * 1000, 3),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "total_attempts": self.total_attempts,
            "errors_by_type": dict(self.errors_by_type),
            "failed_requests": list(self.failed_requests),
            "cost": self.cost,
            **self._timing_dict(),
            "cost_by_model": dict(self.cost_by_model),
            "unpriced_count": self.unpriced_count,
            "answers_by_lane": dict(self.answers_by_lane),
            "cost_by_lane": dict(self.cost_by_lane),
            "priced_by_lane": {lane: dict(n) for lane, n in self.priced_by_lane.items()},
            "cached_prompt_tokens": self.cached_prompt_tokens,
            "cache_write_tokens": self.cache_write_tokens,
            "cache_hit_share": round(self.cache_hit_share, 4),
            "cache_saved": None if self.cache_saved is None else round(self.cache_saved, 10),
        }

    def _timing_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"timed_requests": self.timed_requests}
        for series in ("wait", "provider"):
            for q in (50, 95, 99):
                out[f"p{q}_{series}_ms"] = round(getattr(self, f"p{q}_{series}") * 1000, 3)
        return out

    def __str__(self) -> str:
        parts = [
            f"Total: {self.total_requests}",
            f"Success: {self.success_count}",
            f"Failed: {self.failure_count} ({self.success_rate:.1f}% success)",
            f"Avg: {self.average_duration:.2f}s",
            f"Min: {self.min_duration:.2f}s",
            f"Max: {self.max_duration:.2f}s",
            f"p50: {self.p50_duration:.2f}s",
            f"p95: {self.p95_duration:.2f}s",
            f"p99: {self.p99_duration:.2f}s",
            f"Tokens: {self.prompt_tokens} in / {self.completion_tokens} out",
        ]
        if self.cached_count:
            parts.append(f"Cached: {self.cached_count}")
        if self.cached_prompt_tokens:
            saved = "" if self.cache_saved is None else f", saved ${self.cache_saved:.4f}"
            parts.append(f"Prompt cache: {self.cache_hit_share:.1%} of input{saved}")
        if self.cost is not None:
            parts.append(f"Cost: ${self.cost:.4f}")
        return " | ".join(parts)


def price_note(lane: str, priced: dict[str, int] | None) -> str:
    """Which price lists priced a lane's answers, where the answers say (flex, priority):
    "; at the priority price", or "; 10 at the standard price (no priority price known), 90
    at the priority price"."""
    if not priced:
        return ""

    def why(plist: str) -> str:
        return "" if plist == lane else f" (no {lane} price known)"

    if len(priced) == 1:
        (plist,) = priced
        return f"; at the {plist} price{why(plist)}"
    return "; " + ", ".join(f"{n:,} at the {p} price{why(p)}" for p, n in priced.items())


def _percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not ordered:
        return 0.0
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[rank - 1]


# A series longer than this is not sorted whole (a sorted copy costs 32 bytes per value):
# its percentiles are found by counting (`_order_stats`), exactly, in bounded memory.
SORT_LIMIT = 1 << 20


def _quantiles(
    series: array[float], limit: int = SORT_LIMIT
) -> tuple[float, float, float, float, float]:
    """(min, p50, p95, p99, max) of `series` (zeros when empty), nearest rank."""
    n = len(series)
    if not n:
        return (0.0, 0.0, 0.0, 0.0, 0.0)
    ranks = [max(1, math.ceil(q / 100.0 * n)) for q in (50, 95, 99)]
    p50, p95, p99 = _order_stats(series, ranks, limit)
    return (min(series), p50, p95, p99, max(series))


def _order_stats(series: array[float], ranks: list[int], limit: int) -> list[float]:
    """The values of the given ranks (from 1) in `series` sorted, exactly.

    Up to `limit` values, or with a negative one, by sorting. Else by counting: a float that
    is not negative orders as its 64-bit pattern does, so one pass counts values by their top
    20 bits (1/256 of an octave), a second collects only the values of the buckets holding the
    ranks, and sorts those; a bucket still too large (many equal values) is split by its next
    bits the same way. Memory: the counts and one bucket, never the series twice.
    """
    if len(series) <= limit or min(series) < 0:
        ordered = sorted(series)
        return [ordered[r - 1] for r in ranks]
    bits = memoryview(series).cast("B").cast("Q")
    top = Counter(x >> 44 for x in bits)  # one pass shared by every rank
    found: list[float] = []
    for rank in ranks:
        counts, shift = top, 44
        bucket, left = _bucket_of(counts, rank)
        while counts[bucket] > limit and shift > 0:  # many values alike: split by more bits
            prefix, above, shift = bucket, shift, max(0, shift - 20)
            counts = Counter(x >> shift for x in bits if x >> above == prefix)
            bucket, left = _bucket_of(counts, left)
        if shift:
            bucket = sorted(x for x in bits if x >> shift == bucket)[left - 1]
        found.append(array("d", array("Q", [bucket]).tobytes())[0])
    return found


def _bucket_of(counts: Counter[int], rank: int) -> tuple[int, int]:
    """(the bucket holding the value of `rank`, its rank within the bucket)."""
    for bucket in sorted(counts):
        if rank <= counts[bucket]:
            return bucket, rank
        rank -= counts[bucket]
    raise ValueError("rank past the end")


class StatsCollector:
    """Accumulates results one by one; usable as an engine listener.

    `prices` is (USD per million prompt tokens, USD per million completion tokens), applied to
    the token totals. Without it, the cost is the sum of the results' own `cost`; `pricer`
    (a `llmbatch.pricing.Pricer`) prices the results that carry none.
    """

    def __init__(self, prices: tuple[float, float] | None = None, *, pricer: Any = None) -> None:
        self.prices = prices
        self.pricer = pricer
        self._costs: dict[str, float] = {}
        self._unpriced = 0
        self._durations = array("d")
        self._success = 0
        self._cached = 0
        self._prompt = 0
        self._completion = 0
        self._attempts = 0
        self._failed: list[str] = []
        self._errors: Counter[str] = Counter()
        self._waits = array("d")
        self._providers = array("d")
        self._lanes: Counter[str] = Counter()
        self._lane_costs: dict[str, float] = {}
        self._priced: dict[str, Counter[str]] = {}
        self._cache_read = 0
        self._cache_write = 0
        self._cache_saved: float | None = None

    def __call__(self, event: Event) -> None:
        if isinstance(event, RequestFinished):
            self.add(event.result)

    def add(self, result: BatchResult) -> None:
        timing = result.timing
        if timing is not None and result.attempts:
            self.add_timing(timing.wait, timing.provider)
        self._durations.append(result.duration)
        self._attempts += result.attempts
        if result.error is None:
            self._success += 1
            if result.response is not None:
                self._prompt += result.response.usage.prompt_tokens
                self._completion += result.response.usage.completion_tokens
                self._cached += result.response.cached
                usage = result.response.usage
                self.add_prompt_cache(
                    usage.cached_tokens, usage.cache_write_tokens, result.cache_saved
                )
                cost = result.cost
                if cost is None and self.pricer is not None:
                    cost = self.pricer.cost(result.response)
                self.add_cost(result.response.model, cost)
                tier = served_tier(result.response)
                lane = lane_of(result.response.batch_api, tier)
                self.add_lane(lane, cost, result.price_list)
        else:
            self._failed.append(result.id)
            self._errors[error_code(result.error)] += 1
            if result.cost is not None:  # paid, though no answer: still money spent
                reply = getattr(result.error, "response", None)
                self.add_cost(getattr(reply, "model", "") or "", result.cost)

    def add_values(
        self,
        request_id: str,
        *,
        duration: float,
        attempts: int,
        error_type: str | None,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        cached: bool = False,
        wait: float | None = None,
        provider: float | None = None,
        cost: float | None = None,
        model: str = "",
        cached_prompt_tokens: int = 0,
        cache_write_tokens: int = 0,
        cache_saved: float | None = None,
    ) -> None:
        """Add a result read back from an output file rather than a live `BatchResult`.

        `wait` and `provider` are the line's timing, None when it has none."""
        if wait is not None and provider is not None and attempts:
            self.add_timing(wait, provider)
        self._durations.append(duration)
        self._attempts += attempts
        if error_type is None:
            self._success += 1
            self._prompt += prompt_tokens
            self._completion += completion_tokens
            self._cached += cached
            self.add_prompt_cache(cached_prompt_tokens, cache_write_tokens, cache_saved)
            self.add_cost(model, cost)
        else:
            self._failed.append(request_id)
            self._errors[error_type] += 1
            if cost is not None:  # paid, though no answer: still money spent
                self.add_cost(model, cost)

    def add_lane(self, lane: str, cost: float | None, priced_as: str | None = None) -> None:
        """Count one answer under the lane that gave it (`llmbatch.tiers.lane_of`), and the
        price list that priced it when the answer says (flex and priority answers)."""
        self._lanes[lane] += 1
        if cost is not None:
            self._lane_costs[lane] = self._lane_costs.get(lane, 0.0) + cost
        if priced_as is not None:
            self._priced.setdefault(lane, Counter())[priced_as] += 1

    def add_line(
        self,
        request_id: str,
        duration: float,
        attempts: int,
        error_type: str | None,
        prompt_tokens: int,
        completion_tokens: int,
        cached: bool,
        wait: float | None,
        provider: float,
        cost: float | None,
        model: str,
        cached_prompt_tokens: int = 0,
        cache_write_tokens: int = 0,
        cache_saved: float | None = None,
        lane: str = "",
        priced_as: str | None = None,
    ) -> None:
        """`add_values`, positional: the form a reader of millions of lines calls (no keyword
        parsing per line). `wait` is None for a line without timing (`provider` is ignored).
        `lane`: the lane that answered ("" if not known: not counted by lane)."""
        if wait is not None and attempts:
            self._waits.append(wait)
            self._providers.append(provider)
        self._durations.append(duration)
        self._attempts += attempts
        if error_type is None:
            self._success += 1
            self._prompt += prompt_tokens
            self._completion += completion_tokens
            self._cached += cached
            self._cache_read += cached_prompt_tokens
            self._cache_write += cache_write_tokens
            if cache_saved is not None:
                self._cache_saved = (self._cache_saved or 0.0) + cache_saved
            if cost is None:
                self._unpriced += 1
            else:
                self._costs[model] = self._costs.get(model, 0.0) + cost
            if lane:
                self.add_lane(lane, cost, priced_as)
        else:
            self._failed.append(request_id)
            self._errors[error_type] += 1
            if cost is not None:  # paid, though no answer: still money spent
                self.add_cost(model, cost)

    def add_prompt_cache(self, read: int, written: int, saved: float | None) -> None:
        """One answer's prompt-cache tokens and the USD they saved (None: not priced)."""
        self._cache_read += read
        self._cache_write += written
        if saved is not None:
            self._cache_saved = (self._cache_saved or 0.0) + saved

    def add_timing(self, wait: float, provider: float) -> None:
        """One request's admission wait and provider time (seconds, summed over attempts)."""
        self._waits.append(wait)
        self._providers.append(provider)

    def add_cost(self, model: str, cost: float | None) -> None:
        """Count one result's cost (None: a success without a price) under its model."""
        if cost is None:
            self._unpriced += 1
        else:
            self._costs[model] = self._costs.get(model, 0.0) + cost

    def snapshot(self) -> BatchStats:
        # One series sorted at a time: a sorted copy is a list of floats, 32 bytes each.
        n = len(self._durations)
        durations = _quantiles(self._durations)
        waits, providers = _quantiles(self._waits), _quantiles(self._providers)
        cost = None
        if self.prices is not None:
            cost = (self._prompt * self.prices[0] + self._completion * self.prices[1]) / 1e6
        elif self._costs:
            cost = math.fsum(self._costs.values())
        return BatchStats(
            total_requests=n,
            success_count=self._success,
            failure_count=n - self._success,
            cached_count=self._cached,
            average_duration=math.fsum(self._durations) / n if n else 0.0,
            min_duration=durations[0],
            max_duration=durations[4],
            p50_duration=durations[1],
            p95_duration=durations[2],
            p99_duration=durations[3],
            prompt_tokens=self._prompt,
            completion_tokens=self._completion,
            total_attempts=self._attempts,
            failed_requests=tuple(self._failed),
            errors_by_type=dict(self._errors.most_common()),
            cost=cost,
            p50_wait=waits[1],
            p95_wait=waits[2],
            p99_wait=waits[3],
            p50_provider=providers[1],
            p95_provider=providers[2],
            p99_provider=providers[3],
            timed_requests=len(self._waits),
            cost_by_model=dict(sorted(self._costs.items())),
            unpriced_count=self._unpriced,
            answers_by_lane=dict(self._lanes.most_common()),
            cost_by_lane=dict(self._lane_costs),
            priced_by_lane={lane: dict(n.most_common()) for lane, n in self._priced.items()},
            cached_prompt_tokens=self._cache_read,
            cache_write_tokens=self._cache_write,
            cache_saved=self._cache_saved,
        )


def calculate_batch_stats(
    results: Iterable[BatchResult],
    *,
    prices: tuple[float, float] | None = None,
    pricer: Any = None,
) -> BatchStats:
    """The seed's `CalculateBatchStats`: counts, durations, percentiles, tokens, failed ids.

    `pricer` (`llmbatch.Pricer()`) prices results that carry no `cost`, per model."""
    collector = StatsCollector(prices, pricer=pricer)
    for result in results:
        collector.add(result)
    return collector.snapshot()
