"""The numbers behind a run report, read from an output file in one streaming pass.

    data = aggregate("results.jsonl", limit_rpm=600)
    data["summary"]["requests"], data["latency"]["p95"], data["throughput"]["ok"]

Memory does not grow with the file: requests fall into time buckets (1 s wide, doubled and
merged whenever there would be more than `MAX_BUCKETS`), latencies into log-spaced bins
(`BINS_PER_DECADE`, so percentiles are exact to within 2.3 %), and only the `TOP_N` slowest
requests (a heap) and the first `MAX_FAILED` failures are kept by id.

The newest line of each id counts, as for resume and `llmbatch stats`: a file not compacted
yet (a run killed while redoing failed ids) holds superseded lines. They are found as a
resume finds them (`llmbatch.io.journal.read_output`: the output's index into the compact
table of finished ids), and skipped.

Attempt-level series (refusals over time) place attempt i of a request at its start plus
the admission waits and provider times of attempts 1..i, plus its backoff spread evenly over
the gaps between attempts: the line stores the backoff as one total.
"""

from __future__ import annotations

import heapq
import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..io.journal import superseded_lines
from ..io.line import ResultLine

__all__ = ["BINS_PER_DECADE", "MAX_BUCKETS", "TOP_N", "aggregate"]

MAX_BUCKETS = 480
BINS_PER_DECADE = 100
TOP_N = 25
MAX_FAILED = 100
MAX_MESSAGE = 300
_MIN_EXP = -4  # latencies below 0.1 ms share the first bin
_MAX_EXP = 6
_BITMAP_BITS = 1 << 26  # 8 MB


@dataclass(slots=True)
class _Line:
    """What the report needs of one result line."""

    id: str
    ok: bool
    code: str
    message: str
    cached: bool
    batch_api: bool
    lane: str  # `llmbatch.tiers.lane_of`: batch, flex, standard, priority
    priced_as: str | None  # the price list of a flex or priority answer, if it says
    duration: float
    attempts: int
    tokens_in: int
    tokens_out: int
    cost: float | None
    cache_read: int  # input tokens read from the provider's prompt cache
    cache_saved: float | None  # USD the prompt cache saved
    started_at: float | None
    finished_at: float | None
    wait: float | None
    provider: float | None
    backoff: float
    attempt_log: list[Any]


class _Bucket:
    __slots__ = (
        "attempt_errors",
        "attempts",
        "errors",
        "failed",
        "ok",
        "provider",
        "timed",
        "wait",
    )

    def __init__(self) -> None:
        self.ok = 0
        self.failed = 0
        self.attempts = 0
        self.timed = 0
        self.wait = 0.0
        self.provider = 0.0
        self.errors: Counter[str] = Counter()  # final failures, by code
        self.attempt_errors: Counter[str] = Counter()  # failed attempts, by status or code

    def merge(self, other: _Bucket) -> None:
        self.ok += other.ok
        self.failed += other.failed
        self.attempts += other.attempts
        self.timed += other.timed
        self.wait += other.wait
        self.provider += other.provider
        self.errors.update(other.errors)
        self.attempt_errors.update(other.attempt_errors)


class _Timeline:
    """Buckets by time, coarsened (width doubled) whenever there are too many."""

    def __init__(self) -> None:
        self.width = 1.0
        self.buckets: dict[int, _Bucket] = {}

    def at(self, t: float) -> _Bucket:
        key = math.floor(t / self.width)
        bucket = self.buckets.get(key)
        if bucket is None:
            bucket = self.buckets[key] = _Bucket()
            if len(self.buckets) > MAX_BUCKETS:
                self._coarsen()
                return self.at(t)
        return bucket

    def _coarsen(self) -> None:
        while len(self.buckets) > MAX_BUCKETS:
            self.width *= 2
            merged: dict[int, _Bucket] = {}
            for key, bucket in self.buckets.items():
                into = merged.get(key // 2)
                if into is None:
                    merged[key // 2] = bucket
                else:
                    into.merge(bucket)
            self.buckets = merged


class _LogHistogram:
    """Counts in log-spaced bins: bin k holds [10^(k/B), 10^((k+1)/B))."""

    def __init__(self) -> None:
        self.counts: Counter[int] = Counter()
        self.n = 0
        self.total = 0.0
        self.max = 0.0

    def add(self, value: float) -> None:
        value = max(0.0, value)
        self.n += 1
        self.total += value
        self.max = max(self.max, value)
        lo, hi = _MIN_EXP * BINS_PER_DECADE, _MAX_EXP * BINS_PER_DECADE - 1
        k = lo if value <= 10.0**_MIN_EXP else math.floor(math.log10(value) * BINS_PER_DECADE)
        self.counts[min(hi, max(lo, k))] += 1

    def percentile(self, q: float) -> float:
        """Nearest rank, reported as the geometric middle of its bin (the max for the top)."""
        if not self.n:
            return 0.0
        rank = max(1, math.ceil(q / 100.0 * self.n))
        seen = 0
        for k in sorted(self.counts):
            seen += self.counts[k]
            if seen >= rank:
                if k == _MIN_EXP * BINS_PER_DECADE:
                    return 0.0
                return min(self.max, float(10.0 ** ((k + 0.5) / BINS_PER_DECADE)))
        return self.max

    def display(self, per_decade: int = 20) -> dict[str, list[float]]:
        """Coarser bins for drawing: left edges, right edges and counts (seconds)."""
        step = BINS_PER_DECADE // per_decade
        coarse: Counter[int] = Counter()
        for k, count in self.counts.items():
            coarse[k // step] += count
        keys = sorted(coarse)
        lo = [10.0 ** (k / per_decade) for k in keys]
        hi = [10.0 ** ((k + 1) / per_decade) for k in keys]
        return {"lo": lo, "hi": hi, "count": [float(coarse[k]) for k in keys]}


def _complete_lines(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as f:
        for raw in f:
            if not raw.endswith(b"\n"):
                return  # a torn tail is never data
            yield raw


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


# A Unix time past this (year 5138) or before 0 is a damaged or hand-edited line, not a run.
_LATEST = 1e11


def _span(start: float | None, end: float | None) -> tuple[float | None, float | None]:
    """(started_at, finished_at), or (None, None) when they are not a plausible interval:
    one bad line must not stop the report (a datetime out of range) or stretch its axis."""
    if start is None or end is None or not 0 <= start <= end < _LATEST:
        return None, None
    return start, end


def _parse(raw: bytes) -> _Line | None:
    line = ResultLine.decode(raw)  # a result line as resume and stats read it, or None
    if line is None:
        return None
    start, end = _span(line.started_at, line.finished_at)
    return _Line(
        id=line.custom_id,
        ok=line.ok,
        code=line.code or "",
        message=line.message[:MAX_MESSAGE],
        cached=line.cached,
        batch_api=line.batch_api,
        lane=line.lane,
        priced_as=line.priced_as,
        duration=line.duration,
        attempts=line.attempts,
        tokens_in=line.prompt_tokens or 0,
        tokens_out=line.completion_tokens or 0,
        cost=line.cost,
        cache_read=line.cached_tokens,
        cache_saved=line.cache_saved,
        started_at=start,
        finished_at=end,
        wait=line.wait,
        provider=line.provider,
        backoff=line.backoff or 0.0,
        attempt_log=[list(e) for e in line.attempt_log or ()],
    )


class _Aggregator:
    def __init__(self) -> None:
        self.requests = self.ok = self.failed = self.cached = self.batch_api = 0
        self.lanes: Counter[str] = Counter()  # answers per lane
        self.lane_costs: dict[str, float] = {}
        self.priced: dict[str, Counter[str]] = {}  # lane -> answers per price list
        self.attempts = self.tokens_in = self.tokens_out = 0
        self.cost: float | None = None
        self.cache_read = 0
        self.cache_saved: float | None = None
        self.first: float | None = None
        self.last: float | None = None
        self.wait_total = self.provider_total = self.backoff_total = 0.0
        self.timeline = _Timeline()
        self.latency = _LogHistogram()
        self.waits = _LogHistogram()
        self.providers = _LogHistogram()
        self.errors: Counter[str] = Counter()
        self.attempt_outcomes: Counter[str] = Counter()
        self.attempts_per_request: Counter[int] = Counter()
        self.slowest: list[tuple[float, int, _Line]] = []
        self.failed_lines: list[dict[str, Any]] = []
        self.untimed = 0
        self._seq = 0

    def add(self, line: _Line) -> None:
        self.requests += 1
        self.attempts += line.attempts
        self.attempts_per_request[line.attempts] += 1
        if line.batch_api:
            self.batch_api += 1
        if line.cost is not None:
            self.cost = (self.cost or 0.0) + line.cost
        if line.ok:
            self.ok += 1
            self.lanes[line.lane] += 1
            if line.cost is not None:
                self.lane_costs[line.lane] = self.lane_costs.get(line.lane, 0.0) + line.cost
            if line.priced_as is not None:
                self.priced.setdefault(line.lane, Counter())[line.priced_as] += 1
            self.cached += line.cached
            self.tokens_in += line.tokens_in
            self.tokens_out += line.tokens_out
            self.cache_read += line.cache_read
            if line.cache_saved is not None:
                self.cache_saved = (self.cache_saved or 0.0) + line.cache_saved
        else:
            self.failed += 1
            self.errors[line.code] += 1
            if len(self.failed_lines) < MAX_FAILED:
                self.failed_lines.append(
                    {
                        "id": line.id,
                        "code": line.code,
                        "message": line.message,
                        "attempts": line.attempts,
                    }
                )
        if line.attempts:
            self.latency.add(line.duration)
            self._keep_if_slow(line)
        for entry in line.attempt_log:
            if isinstance(entry, list) and len(entry) >= 3:
                self.attempt_outcomes[str(entry[2])] += 1
        self._timed(line)

    def _timed(self, line: _Line) -> None:
        if line.finished_at is None or line.started_at is None:
            self.untimed += 1
            return
        self.first = line.started_at if self.first is None else min(self.first, line.started_at)
        self.last = line.finished_at if self.last is None else max(self.last, line.finished_at)
        bucket = self.timeline.at(line.finished_at)
        if line.ok:
            bucket.ok += 1
        else:
            bucket.failed += 1
            bucket.errors[line.code] += 1
        self.backoff_total += line.backoff
        if line.wait is not None and line.provider is not None and line.attempts:
            self.wait_total += line.wait
            self.provider_total += line.provider
            self.waits.add(line.wait)
            self.providers.add(line.provider)
            bucket.timed += 1
            bucket.wait += line.wait
            bucket.provider += line.provider
        # Each attempt at (about) the time it ended: see the module docstring.
        log = [e for e in line.attempt_log if isinstance(e, list) and len(e) >= 3]
        gap = line.backoff / (len(log) - 1) if len(log) > 1 else 0.0
        t = line.started_at
        for i, (wait, provider, outcome, *_) in enumerate(log):
            t += (_num(wait) or 0.0) + (_num(provider) or 0.0) + (gap if i else 0.0)
            at = self.timeline.at(min(t, line.finished_at))
            at.attempts += 1
            if outcome != 200:
                at.attempt_errors[str(outcome)] += 1

    def _keep_if_slow(self, line: _Line) -> None:
        self._seq += 1
        item = (line.duration, self._seq, line)
        if len(self.slowest) < TOP_N:
            heapq.heappush(self.slowest, item)
        elif line.duration > self.slowest[0][0]:
            heapq.heapreplace(self.slowest, item)

    def result(self, limit_rpm: float | None, path: str) -> dict[str, Any]:
        wall = (self.last - self.first) if self.first is not None and self.last is not None else 0
        timed = self.requests - self.untimed
        effective = timed / wall * 60.0 if wall > 0 else None
        spent = self.wait_total + self.provider_total + self.backoff_total
        summary = {
            "output": path,
            "requests": self.requests,
            "succeeded": self.ok,
            "failed": self.failed,
            "success_rate": round(100.0 * self.ok / self.requests, 3) if self.requests else 0.0,
            "cached": self.cached,
            "batch_api": self.batch_api,
            "answers_by_lane": dict(self.lanes.most_common()),
            "cost_by_lane": dict(self.lane_costs),
            "priced_by_lane": {lane: dict(n.most_common()) for lane, n in self.priced.items()},
            "attempts": self.attempts,
            "retries": sum((n - 1) * c for n, c in self.attempts_per_request.items() if n > 1),
            "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out,
            "cost_usd": self.cost,
            "cached_prompt_tokens": self.cache_read,
            "cache_hit_share": self.cache_read / self.tokens_in if self.tokens_in else 0.0,
            "cache_saved_usd": self.cache_saved,
            "started_at": self.first,
            "finished_at": self.last,
            "wall_seconds": wall,
            "effective_rpm": effective,
            "limit_rpm": limit_rpm,
            "untimed": self.untimed,
            "wait_seconds": self.wait_total,
            "provider_seconds": self.provider_total,
            "backoff_seconds": self.backoff_total,
            "wait_share": self.wait_total / spent if spent else None,
        }
        keys = sorted(self.timeline.buckets)
        width = self.timeline.width
        buckets = [self.timeline.buckets[k] for k in keys]
        codes = sorted({c for b in buckets for c in b.attempt_errors})
        final_codes = sorted({c for b in buckets for c in b.errors})
        slowest = sorted(self.slowest, key=lambda x: (-x[0], x[1]))
        return {
            "version": 1,
            "summary": summary,
            "bucket_seconds": width,
            "throughput": {
                "t": [k * width for k in keys],
                "ok": [b.ok for b in buckets],
                "failed": [b.failed for b in buckets],
                "attempts": [b.attempts for b in buckets],
            },
            "errors_over_time": {
                "attempts": {c: [b.attempt_errors.get(c, 0) for b in buckets] for c in codes},
                "final": {c: [b.errors.get(c, 0) for b in buckets] for c in final_codes},
            },
            "time_split": {
                "wait_mean": [b.wait / b.timed if b.timed else None for b in buckets],
                "provider_mean": [b.provider / b.timed if b.timed else None for b in buckets],
            },
            "latency": _histogram_data(self.latency),
            "wait": _histogram_data(self.waits),
            "provider": _histogram_data(self.providers),
            "errors_by_code": dict(self.errors.most_common()),
            "attempt_outcomes": dict(self.attempt_outcomes.most_common()),
            "attempts_per_request": {
                str(n): c for n, c in sorted(self.attempts_per_request.items())
            },
            "slowest": [
                {
                    "id": line.id,
                    "duration": line.duration,
                    "attempts": line.attempts,
                    "wait": line.wait,
                    "provider": line.provider,
                    "backoff": line.backoff,
                    "ok": line.ok,
                    "code": line.code,
                }
                for _, _, line in slowest
            ],
            "failed_requests": self.failed_lines,
        }


def _histogram_data(h: _LogHistogram) -> dict[str, Any]:
    return {
        "count": h.n,
        "mean": h.total / h.n if h.n else 0.0,
        "max": h.max,
        "p50": h.percentile(50),
        "p95": h.percentile(95),
        "p99": h.percentile(99),
        "bins": h.display(),
    }


def aggregate(path: str | Path, *, limit_rpm: float | None = None) -> dict[str, Any]:
    """The report's data for the output file at `path` (JSON-ready). `limit_rpm` is the
    run's request limit, if known, shown beside the effective rate."""
    path = Path(path)
    superseded = superseded_lines(path)
    agg = _Aggregator()
    for n, raw in enumerate(_complete_lines(path), 1):
        if superseded and n in superseded:
            continue
        line = _parse(raw)
        if line is not None:
            agg.add(line)
    return agg.result(limit_rpm, str(path))
