"""What the simulator counts, served as JSON at GET /stats and zeroed by POST /stats/reset.

    counters = Counters()
    counters.answered(429)
    counters.as_dict()["by_status"]    # {"429": 1}

Tests and benchmarks assert on these instead of on wall-clock bounds: what the server saw
is the ground truth of how a client behaved.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Counters"]


class Counters:
    """Mutable counters; `as_dict()` is a snapshot (`rate_limited` is the 429 count)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.received = 0
        self.by_status: dict[str, int] = {}
        self.by_path: dict[str, int] = {}
        self.in_flight = 0
        self.max_in_flight = 0
        self.over_limit = 0  # refused for being over a rate limit, whatever the status
        self.overloaded = 0  # answered 503/529 by `overload_rate`, limits aside
        self.resets = 0
        self.hangs = 0
        self.malformed = 0
        self.undelivered = 0  # answers whose connection was already gone (not in by_status)
        self.abandoned = 0  # queue style: the client had gone when its turn came
        self.max_queue_depth = 0
        self.outages = 0
        self.outage_aborted = 0  # connections cut when an outage began or during it
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.first_received: float | None = None  # wall clock, for measuring makespans
        self.last_answered: float | None = None
        # Batch APIs: files and batches of both providers.
        self.files_uploaded = 0
        self.files_deleted = 0
        self.batches_created = 0
        self.batches_cancelled = 0
        self.batches_expired = 0
        self.batches_failed = 0  # failed validation (OpenAI)
        self.batches_token_limited = 0  # failed for the enqueued-token limit (OpenAI)
        self.enqueued_tokens_max = 0  # the most tokens live in batches of one model at once
        self.batch_lines = 0  # lines in the batches created
        self.batch_lines_answered = 0
        self.batch_polls = 0  # GETs of one batch
        # Service tiers (`tiers.py`): realtime requests that asked for flex, and refused.
        self.flex_requests = 0
        self.flex_refused = 0

    def answered(self, status: int) -> None:
        key = str(status)
        self.by_status[key] = self.by_status.get(key, 0) + 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "received": self.received,
            "by_status": dict(self.by_status),
            "by_path": dict(self.by_path),
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "rate_limited": self.by_status.get("429", 0),
            "over_limit": self.over_limit,
            "overloaded": self.overloaded,
            "resets": self.resets,
            "hangs": self.hangs,
            "malformed": self.malformed,
            "undelivered": self.undelivered,
            "abandoned": self.abandoned,
            "max_queue_depth": self.max_queue_depth,
            "outages": self.outages,
            "outage_aborted": self.outage_aborted,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "first_received": self.first_received,
            "last_answered": self.last_answered,
            "files_uploaded": self.files_uploaded,
            "files_deleted": self.files_deleted,
            "batches_created": self.batches_created,
            "batches_cancelled": self.batches_cancelled,
            "batches_expired": self.batches_expired,
            "batches_failed": self.batches_failed,
            "batches_token_limited": self.batches_token_limited,
            "enqueued_tokens_max": self.enqueued_tokens_max,
            "batch_lines": self.batch_lines,
            "batch_lines_answered": self.batch_lines_answered,
            "batch_polls": self.batch_polls,
            "flex_requests": self.flex_requests,
            "flex_refused": self.flex_refused,
        }
