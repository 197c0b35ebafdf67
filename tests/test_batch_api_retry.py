"""The batch API's uploads, creates, polls and downloads retry with the requests' building
block (`RetryPolicy`): full jitter, Retry-After honoured, bounded in attempts and in time."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from llmbatch.batch_api import BatchAPIConfig, BatchAPIRunner
from llmbatch.errors import ServerError
from llmbatch.retry import RetryPolicy

from .conftest import FakeClock


def runner(tmp_path: Path, clock: FakeClock, **changes: object) -> BatchAPIRunner:
    from llmbatch.clients import OpenAIClient

    client = OpenAIClient(model="m", base_url="http://127.0.0.1:9/v1", api_key="k")
    config = BatchAPIConfig(tmp_path / "out.jsonl", clock=clock, sleep=clock.sleep, **changes)  # type: ignore[arg-type]
    return BatchAPIRunner(client, config)


def test_a_failing_call_backs_off_with_jitter_and_gives_up_after_its_attempts(
    tmp_path: Path, clock: FakeClock
) -> None:
    calls = 0

    async def failing() -> None:
        nonlocal calls
        calls += 1
        raise ServerError("503 from the provider", status_code=503)

    r = runner(tmp_path, clock, max_retries=4)
    with pytest.raises(ServerError):
        asyncio.run(r._call(failing))
    assert calls == 5 and len(clock.sleeps) == 4
    # Full jitter under a doubling ceiling from 1 s: never the old fixed 1, 2, 4, 8.
    assert all(0 <= s <= 2**i for i, s in enumerate(clock.sleeps))
    assert clock.sleeps != [1.0, 2.0, 4.0, 8.0]


def test_the_total_time_bounds_the_retries(tmp_path: Path, clock: FakeClock) -> None:
    async def failing() -> None:
        raise ServerError("500", status_code=500)

    policy = RetryPolicy(max_attempts=1000, base_delay=10.0, max_delay=10.0, max_retry_time=60.0)
    r = runner(tmp_path, clock, retry=policy)
    with pytest.raises(ServerError):
        asyncio.run(r._call(failing))
    assert sum(clock.sleeps) <= 60.0 and len(clock.sleeps) < 1000
