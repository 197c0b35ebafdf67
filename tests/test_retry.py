"""`RetryPolicy`: full-jitter backoff, Retry-After, and every bound it promises."""

from __future__ import annotations

import random

import pytest

from llmbatch.errors import (
    APIConnectionError,
    AuthenticationError,
    BadRequestError,
    BatchCancelledError,
    BatchTimeoutError,
    InvalidResponseError,
    RateLimitError,
    RequestTimeoutError,
    ServerError,
)
from llmbatch.retry import RetryPolicy, is_retryable, parse_retry_after


def policy(**kw: object) -> RetryPolicy:
    return RetryPolicy(rng=random.Random(7), **kw)  # type: ignore[arg-type]


def test_full_jitter_draws_within_the_doubling_ceiling_capped_by_max_delay() -> None:
    p = policy(base_delay=0.5, max_delay=3.0, max_attempts=100, max_retry_time=1e9)
    for attempt, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 3.0), (10, 3.0)]:
        draws = [p.backoff(attempt) for _ in range(2000)]
        assert all(0.0 <= d <= ceiling for d in draws)
        # Full jitter spreads over the whole range, not just near the ceiling.
        assert min(draws) < 0.1 * ceiling and max(draws) > 0.9 * ceiling


def test_the_same_seed_gives_the_same_delays() -> None:
    a, b = policy(), policy()
    err = ServerError("boom")
    assert [a.next_delay(err, attempt=n, elapsed=0) for n in range(1, 6)] == [
        b.next_delay(err, attempt=n, elapsed=0) for n in range(1, 6)
    ]


def test_retry_after_replaces_the_drawn_delay_and_is_capped() -> None:
    p = policy(base_delay=0.5, max_delay=1.0, max_retry_after=20.0)
    assert p.next_delay(RateLimitError(retry_after=7.5), attempt=1, elapsed=0) == 7.5
    assert p.next_delay(RateLimitError(retry_after=86400), attempt=1, elapsed=0) == 20.0
    assert p.next_delay(RateLimitError(retry_after=-3), attempt=1, elapsed=0) == 0.0
    without = p.next_delay(RateLimitError(), attempt=1, elapsed=0)
    assert without is not None and 0.0 <= without <= 0.5


def test_max_attempts_counts_the_first_call() -> None:
    p = policy(max_attempts=3)
    err = ServerError("boom")
    assert p.next_delay(err, attempt=1, elapsed=0) is not None
    assert p.next_delay(err, attempt=2, elapsed=0) is not None
    assert p.next_delay(err, attempt=3, elapsed=0) is None
    assert policy(max_attempts=1).next_delay(err, attempt=1, elapsed=0) is None


def test_json_retries_are_bounded_on_their_own() -> None:
    p = policy(max_attempts=10, json_retries=1)
    err = InvalidResponseError("not JSON")
    assert p.next_delay(err, attempt=1, elapsed=0, invalid_count=1) is not None
    assert p.next_delay(err, attempt=2, elapsed=0, invalid_count=2) is None
    # Other retryable errors are not limited by it.
    assert p.next_delay(ServerError("x"), attempt=2, elapsed=0, invalid_count=2) is not None


def test_no_retry_starts_past_max_retry_time() -> None:
    p = policy(max_retry_time=10.0, max_retry_after=60.0)
    assert p.next_delay(RateLimitError(retry_after=4), attempt=1, elapsed=5.0) == 4
    assert p.next_delay(RateLimitError(retry_after=6), attempt=1, elapsed=5.0) is None
    assert p.next_delay(ServerError("x"), attempt=1, elapsed=10.5) is None


@pytest.mark.parametrize(
    "error",
    [
        AuthenticationError("bad key", status_code=401),
        BadRequestError("bad", status_code=400),
        BatchTimeoutError("deadline"),
        BatchCancelledError("cancelled"),
        ValueError("a bug"),
    ],
)
def test_final_errors_are_never_retried(error: BaseException) -> None:
    assert not is_retryable(error)
    assert policy().next_delay(error, attempt=1, elapsed=0) is None


@pytest.mark.parametrize(
    "error",
    [
        RateLimitError(),
        ServerError("x"),
        RequestTimeoutError("slow"),
        APIConnectionError("reset"),
        ConnectionResetError(),
        TimeoutError(),
    ],
)
def test_transient_errors_are_retried(error: BaseException) -> None:
    assert is_retryable(error)
    assert policy().next_delay(error, attempt=1, elapsed=0) is not None


def test_invalid_policies_are_refused() -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValueError, match="delays"):
        RetryPolicy(base_delay=-1)


def test_retry_after_headers_in_milliseconds_seconds_and_dates() -> None:
    assert parse_retry_after({"retry-after-ms": "1500"}) == 1.5
    assert parse_retry_after({"Retry-After": "3"}) == 3.0
    assert parse_retry_after({"retry-after": "86400"}, cap=120) == 120
    assert parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:10 GMT"}, now=1445412480) == 10
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({}) is None


def test_a_retry_after_the_limiter_waits_out_still_counts_against_max_retry_time() -> None:
    policy = RetryPolicy(max_retry_time=150)
    error = RateLimitError(retry_after=100)
    assert policy.next_delay(error, attempt=1, elapsed=10, retry_after_handled=True) == 0.0
    assert policy.next_delay(error, attempt=1, elapsed=60, retry_after_handled=True) is None
