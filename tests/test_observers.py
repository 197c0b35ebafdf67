"""Stats, progress, the progress logger, the rich bar and the error log."""

from __future__ import annotations

import datetime as dt
import io
import logging
import threading
from pathlib import Path

import orjson
import pytest
from rich.console import Console

from llmbatch import (
    BatchProgress,
    BatchResult,
    CompletionResponse,
    ErrorHandler,
    ProgressLogger,
    ProgressTracker,
    RateLimitError,
    RichProgress,
    ServerError,
    Usage,
    calculate_batch_stats,
)
from llmbatch.clients import FakeClient
from llmbatch.engine import Engine
from llmbatch.types import BatchRequest, CompletionRequest

from .conftest import FakeClock


def test_batch_progress_str_matches_the_seed() -> None:
    p = BatchProgress(
        total=100, completed=40, failed=2, elapsed_time=3.2, estimated_time_remaining=4.8
    )
    assert str(p) == "Progress: 40/100 (40.0%) | Failed: 2 | Elapsed: 3s | ETA: 5s"
    unknown = BatchProgress(None, 7, 0, 65.0, None)
    assert str(unknown) == "Progress: 7 | Failed: 0 | Elapsed: 1m05s | ETA: ?"


def test_stats_counts_percentiles_tokens_and_failed_ids() -> None:
    results = [
        BatchResult(
            f"ok{i}",
            response=CompletionResponse("x", usage=Usage(10, 5)),
            duration=float(i),
            attempts=1,
        )
        for i in range(1, 101)
    ]
    results.append(BatchResult("bad", error=RateLimitError(), duration=0.5, attempts=3))
    stats = calculate_batch_stats(results, prices=(1.0, 2.0))
    assert (stats.total_requests, stats.success_count, stats.failure_count) == (101, 100, 1)
    assert stats.min_duration == 0.5 and stats.max_duration == 100.0
    assert stats.p50_duration == 50.0
    assert stats.p95_duration == 95.0
    assert stats.p99_duration == 99.0
    assert stats.prompt_tokens == 1000 and stats.completion_tokens == 500
    assert stats.failed_requests == ("bad",)
    assert stats.errors_by_type == {"rate_limit": 1}
    assert stats.total_attempts == 103
    assert stats.cost == pytest.approx((1000 * 1 + 500 * 2) / 1e6)
    text = str(stats)
    assert "Total: 101" in text and "Failed: 1" in text and "p95: 95.00s" in text


def test_stats_of_nothing() -> None:
    stats = calculate_batch_stats([])
    assert stats.total_requests == 0 and stats.average_duration == 0.0
    assert "Total: 0" in str(stats)


def test_progress_tracker_counts_and_estimates(clock: FakeClock) -> None:
    tracker = ProgressTracker(10, clock=clock)
    clock.advance(4)
    tracker.on_complete(True)
    tracker.on_complete(False)
    p = tracker.get_progress()
    assert (p.total, p.completed, p.failed) == (10, 2, 1)
    assert p.elapsed_time == 4 and p.estimated_time_remaining == pytest.approx(16.0)


def test_progress_tracker_is_thread_safe() -> None:
    tracker = ProgressTracker(8000)
    threads = [
        threading.Thread(target=lambda: [tracker.on_complete(i % 2 == 0) for i in range(1000)])
        for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    p = tracker.get_progress()
    assert p.completed == 8000 and p.failed == 4000


def test_progress_logger_throttles_to_its_interval(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    logger = ProgressLogger(2.0, enable_console=False, enable_detailed=True, clock=clock)
    tracker = ProgressTracker(100, logger, clock=clock)
    with caplog.at_level(logging.INFO, logger="llmbatch.progress"):
        for _ in range(10):
            tracker.on_complete(True)
            clock.advance(0.5)  # 10 completions over 5 s at a 2 s interval -> 3 lines
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3
    assert "Rate:" in lines[0] and "Success rate: 100.0%" in lines[0]


def test_progress_logger_final_lists_failed_ids(caplog: pytest.LogCaptureFixture) -> None:
    results = [BatchResult(f"id{i}", error=ServerError("x")) for i in range(25)]
    stats = calculate_batch_stats(results)
    logger = ProgressLogger(1.0, False, False)
    with caplog.at_level(logging.INFO, logger="llmbatch.progress"):
        logger.log_final(BatchProgress(25, 25, 25, 1.0, 0.0), stats)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "id0" in text and "id19" in text and "and 5 more" in text


async def test_rich_progress_draws_counts_and_failures() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=140)
    bar = RichProgress(console=console)
    client = FakeClient(failures={"p1": [ServerError("x")] * 10})
    engine = Engine(client)
    from llmbatch import RetryPolicy
    from llmbatch.engine import EngineConfig

    engine = Engine(client, EngineConfig(retry=RetryPolicy(max_attempts=1)))
    requests = [BatchRequest(f"r{i}", CompletionRequest(prompt=f"p{i}")) for i in range(3)]
    async for _ in engine.stream(requests, listeners=[bar]):
        pass
    screen = out.getvalue()
    assert "3/3" in screen and "failed 1" in screen and "req/s" in screen


def test_rich_progress_is_off_when_not_a_terminal() -> None:
    out = io.StringIO()
    bar = RichProgress(console=Console(file=out, force_terminal=False))
    assert bar.disabled


def fixed_now() -> dt.datetime:
    return dt.datetime(2026, 11, 26, 12, 0, 0)


def test_error_handler_writes_daily_jsonl_with_all_fields(tmp_path: Path) -> None:
    handler = ErrorHandler(tmp_path, prompt_section="chunk_summary", now=fixed_now)
    handler.record(
        ServerError("upstream 503", status_code=503),
        prompt="P" * 6000,
        response="R" * 6000,
        retry_count=2,
        request_id="c1",
    )
    handler.close()
    path = tmp_path / "llm_errors_2026-11-26.jsonl"
    [line] = [orjson.loads(x) for x in path.read_bytes().splitlines()]
    assert line["error_type"] == "server_error"
    assert line["prompt_section"] == "chunk_summary"
    assert line["prompt"].startswith("P" * 5000) and "truncated 1000" in line["prompt"]
    assert len(line["response"]) < 5100
    assert line["retry_count"] == 2 and line["request_id"] == "c1"
    assert line["timestamp"].startswith("2026-11-26T12:00:00")
    assert "upstream 503" in line["error_message"]


def test_error_handler_never_writes_keys(tmp_path: Path) -> None:
    handler = ErrorHandler(tmp_path, now=fixed_now)
    secret = "sk-proj-abcdefghijklmnop1234"
    handler.record(
        ServerError(f"Incorrect API key provided: {secret}"),
        prompt="hello",
        response=f'{{"headers": {{"Authorization": "Bearer {secret}", "x-api-key": "{secret}"}}}}',
    )
    handler.close()
    text = (tmp_path / "llm_errors_2026-11-26.jsonl").read_text()
    assert secret not in text and "abcdefghijklmnop" not in text
    assert "***" in text


def test_error_handler_is_thread_safe(tmp_path: Path) -> None:
    handler = ErrorHandler(tmp_path, now=fixed_now)

    def write(k: int) -> None:
        for i in range(50):
            handler.record(ServerError(f"e{k}-{i}"), prompt="x" * 3000, request_id=f"{k}-{i}")

    threads = [threading.Thread(target=write, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    handler.close()
    lines = (tmp_path / "llm_errors_2026-11-26.jsonl").read_bytes().splitlines()
    assert len(lines) == 400
    assert len({orjson.loads(x)["request_id"] for x in lines}) == 400


def test_error_handler_rolls_over_at_midnight(tmp_path: Path) -> None:
    days = iter([dt.datetime(2026, 11, 26, 23, 59), dt.datetime(2026, 11, 27, 0, 1)])
    handler = ErrorHandler(tmp_path, now=lambda: next(days))
    handler.record(ServerError("a"))
    handler.record(ServerError("b"))
    handler.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "llm_errors_2026-11-26.jsonl",
        "llm_errors_2026-11-27.jsonl",
    ]
