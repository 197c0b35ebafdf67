"""When and how long to wait before trying a request again.

    policy = RetryPolicy(max_attempts=6, base_delay=0.5, max_delay=30.0)
    delay = policy.next_delay(error, attempt=2, elapsed=3.1)   # None means: give up

Backoff is "full jitter" exponential (delay drawn uniformly from [0, min(max_delay,
base_delay * 2**(attempt-1))]): it spreads retries of many workers evenly, which matters
when hundreds of requests fail together. A server's Retry-After replaces the drawn delay.
Everything is bounded: attempts, the delay, Retry-After, and total time spent retrying.
"""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from .errors import InvalidResponseError, LLMBatchError, RetryableError

__all__ = ["RetryPolicy", "is_retryable", "parse_retry_after"]

DEFAULT_MAX_ATTEMPTS = 6
DEFAULT_BASE_DELAY = 0.5
DEFAULT_MAX_DELAY = 30.0
DEFAULT_MAX_RETRY_AFTER = 120.0
DEFAULT_MAX_RETRY_TIME = 600.0


def is_retryable(error: BaseException) -> bool:
    """Classification by type only: the clients already turned statuses into types.

    Plain `ConnectionError`/`TimeoutError` come from hand-written clients; they are treated
    as the transient failures they almost always are. llmbatch's own non-retryable errors
    (batch deadline, cancellation, fatal errors) never are.
    """
    if isinstance(error, RetryableError):
        return True
    if isinstance(error, LLMBatchError):
        return False
    return isinstance(error, ConnectionError | TimeoutError)


@dataclass(slots=True, frozen=True)
class RetryPolicy:
    """Bounds and shape of retries.

    `max_attempts` counts every call, the first included (1 disables retries).
    `json_retries` bounds retries caused by `InvalidResponseError` separately: the seed's
    client retries an unparsable JSON reply once.
    `max_retry_time` bounds the seconds between the first attempt's start and the start of a
    retry: past it the last error is final.
    """

    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    base_delay: float = DEFAULT_BASE_DELAY
    max_delay: float = DEFAULT_MAX_DELAY
    max_retry_after: float = DEFAULT_MAX_RETRY_AFTER
    max_retry_time: float = DEFAULT_MAX_RETRY_TIME
    json_retries: int = 1
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"RetryPolicy.max_attempts must be >= 1, got {self.max_attempts}")
        if self.base_delay < 0 or self.max_delay < 0:
            raise ValueError("RetryPolicy delays must be >= 0")

    def backoff(self, attempt: int) -> float:
        """Full-jitter delay after the `attempt`-th failed call (1-based)."""
        ceiling = min(self.max_delay, self.base_delay * (2 ** (attempt - 1)))
        return self.rng.uniform(0.0, ceiling)

    def next_delay(
        self,
        error: BaseException,
        *,
        attempt: int,
        elapsed: float,
        invalid_count: int = 0,
        retry_after_handled: bool = False,
    ) -> float | None:
        """Seconds to wait before the next attempt, or None when `error` is final.

        `attempt` is the number of calls made so far; `invalid_count` the number of those that
        ended in `InvalidResponseError`. `retry_after_handled`: the limiter already paused all
        admissions for the server's Retry-After, so the retry waits for admission instead of
        sleeping the same time again.
        """
        if not is_retryable(error) or attempt >= self.max_attempts:
            return None
        if isinstance(error, InvalidResponseError) and invalid_count > self.json_retries:
            return None
        delay = self.backoff(attempt)
        retry_after = getattr(error, "retry_after", None)
        if isinstance(error, RetryableError) and retry_after is not None:
            delay = min(max(float(retry_after), 0.0), self.max_retry_after)
        if elapsed + delay > self.max_retry_time:
            return None
        # Waited out by the limiter instead, at the retry's admission; still within the bound.
        return 0.0 if retry_after_handled else delay


def parse_retry_after(
    headers: Mapping[str, str], *, cap: float = DEFAULT_MAX_RETRY_AFTER, now: float | None = None
) -> float | None:
    """Seconds to wait from `retry-after-ms`, `retry-after` (seconds or an HTTP date).

    Returns None when absent or unparsable; clamps to [0, cap].
    """
    raw_ms = _get(headers, "retry-after-ms")
    if raw_ms is not None:
        try:
            return _clamp(float(raw_ms) / 1000.0, cap)
        except ValueError:
            pass
    raw = _get(headers, "retry-after")
    if raw is None:
        return None
    try:
        return _clamp(float(raw), cap)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    current = time.time() if now is None else now
    return _clamp(when.timestamp() - current, cap)


def _get(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None:
        value = headers.get(name.title())
    return value


def _clamp(value: float, cap: float) -> float:
    if value != value:  # NaN
        return 0.0
    return min(max(value, 0.0), cap)
