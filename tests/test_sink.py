"""The result sink: the one owner of a run's output, whose failure stops the run."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
from pathlib import Path

import pytest

from llmbatch.clients import ClientSpec
from llmbatch.engine import Engine, EngineConfig
from llmbatch.errorlog import ErrorHandler
from llmbatch.errors import BatchCancelledError, BatchTimeoutError, ServerError
from llmbatch.io.cache import SQLiteCache
from llmbatch.io.journal import Journal
from llmbatch.io.sink import OutputError, ResultSink
from llmbatch.types import BatchRequest, BatchResult, CompletionRequest, CompletionResponse, Usage


def ok(rid: str) -> BatchResult:
    return BatchResult(rid, response=CompletionResponse("fine", usage=Usage(1, 1)), attempts=1)


def disk_full_after(n: int) -> tuple[list[int], object]:
    """An `os.write` that fills the disk after `n` lines."""
    done: list[int] = []

    def write(fd: int, data: memoryview) -> int:
        if len(done) >= n:
            raise OSError(errno.ENOSPC, "No space left on device")
        done.append(len(data))
        return os.write(fd, data)

    return done, write


def ids_in(path: Path) -> list[str]:
    return [json.loads(x)["custom_id"] for x in path.read_text().splitlines()]


def test_a_write_failure_is_raised_naming_the_file_and_the_os_error(tmp_path: Path) -> None:
    _, write = disk_full_after(2)
    journal = Journal(tmp_path / "results.jsonl", write=write)  # type: ignore[arg-type]
    journal.open()
    sink = ResultSink(journal, expected=5)
    sink.write(ok("a"))
    sink.write(ok("b"))
    with pytest.raises(OutputError) as info:
        sink.write(ok("c"))
    assert str(info.value) == (
        f"cannot write {tmp_path / 'results.jsonl'}: [Errno 28] No space left on device"
    )
    sink.abandon()
    assert ids_in(tmp_path / "results.jsonl") == ["a", "b"]
    assert sink.written == 2 and sink.unfinished == 3


def test_an_fsync_failure_is_raised_too(tmp_path: Path) -> None:
    def fsync(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    journal = Journal(tmp_path / "out.jsonl", fsync=fsync, fsync_interval=0.0)
    journal.open()
    sink = ResultSink(journal, expected=1)
    with pytest.raises(OutputError, match=r"cannot write .*out.jsonl: \[Errno 5\] Input/output"):
        sink.write(ok("a"))
    sink.abandon()


def test_cut_short_results_are_not_written_but_counted_unfinished(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "out.jsonl")
    journal.open()
    sink = ResultSink(journal, expected=5)
    sink.write(ok("a"))
    sink.write(BatchResult("b", error=ServerError("boom", status_code=500), attempts=1))
    sink.write(BatchResult("c", error=BatchCancelledError("interrupted")))
    sink.write(BatchResult("d", error=BatchTimeoutError("deadline")))
    # "e" never came back at all (not pulled before the stop): unfinished too.
    sink.close()
    assert ids_in(tmp_path / "out.jsonl") == ["a", "b"]
    assert sink.written == 2 and sink.cut_short == 2 and sink.unfinished == 3


def test_a_failing_cache_loses_no_answer(tmp_path: Path) -> None:
    cache = SQLiteCache(tmp_path / "cache.db", key=lambda req: req.prompt)
    journal = Journal(tmp_path / "out.jsonl")
    journal.open()
    warnings: list[str] = []
    sink = ResultSink(journal, expected=2, cache=cache, warn=warnings.append)
    cache._db.close()  # the cache's disk went away: every call now raises
    for rid in ("a", "b"):
        assert sink.needs_call(BatchRequest(rid, CompletionRequest(prompt=rid)))
        sink.write(ok(rid))
    sink.close()
    assert ids_in(tmp_path / "out.jsonl") == ["a", "b"]
    assert len(warnings) == 1 and "cache.db" in warnings[0]


def test_cache_hits_are_written_without_a_call_and_fresh_answers_stored(tmp_path: Path) -> None:
    def key(req: CompletionRequest) -> str:
        return req.prompt

    journal = Journal(tmp_path / "a.jsonl")
    journal.open()
    sink = ResultSink(journal, expected=1, cache=SQLiteCache(tmp_path / "c.db", key))
    assert sink.needs_call(BatchRequest("x", CompletionRequest(prompt="p")))
    sink.write(ok("x"))
    sink.close()
    journal = Journal(tmp_path / "b.jsonl")
    journal.open()
    sink = ResultSink(journal, expected=1, cache=SQLiteCache(tmp_path / "c.db", key))
    assert not sink.needs_call(BatchRequest("y", CompletionRequest(prompt="p")))
    sink.close()
    [line] = (tmp_path / "b.jsonl").read_text().splitlines()
    assert json.loads(line)["llmbatch"]["cached"] is True
    assert sink.written == 1 and sink.unfinished == 0


def test_failures_reach_the_error_log_with_the_prompt_of_message_requests(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "out.jsonl")
    journal.open()
    sink = ResultSink(journal, expected=1, error_log=ErrorHandler(tmp_path / "logs"))
    request = CompletionRequest(messages=[{"role": "user", "content": "the question"}])
    assert sink.needs_call(BatchRequest("m1", request))
    sink.write(BatchResult("m1", error=ServerError("boom", status_code=500), attempts=3))
    sink.close()
    [log] = (tmp_path / "logs").iterdir()
    entry = json.loads(log.read_text())
    assert entry["request_id"] == "m1" and entry["prompt"] == "the question"
    assert entry["error_type"] == "server_error" and entry["retry_count"] == 2


def test_a_full_disk_stops_the_engine_sending(tmp_path: Path, start_sim) -> None:  # type: ignore[no-untyped-def]
    """The consumer loop of `llmbatch run`, in miniature: the failure closes the stream."""
    sim = start_sim("--latency-ms", "20")
    _, write = disk_full_after(30)
    journal = Journal(tmp_path / "out.jsonl", write=write)  # type: ignore[arg-type]
    journal.open()
    sink = ResultSink(journal, expected=1000)
    concurrency = 8

    async def main() -> None:
        client = ClientSpec(base_url=sim.url + "/v1", model="sim").build()
        engine = Engine(client, EngineConfig(max_concurrency=concurrency))
        requests = (
            BatchRequest(f"r{i}", CompletionRequest(prompt=f"q{i}", max_tokens=4))
            for i in range(1000)
        )
        try:
            stream = engine.stream(requests, finish_unstarted=False)
            async with contextlib.aclosing(stream) as results:
                async for result in results:
                    sink.write(result)
        finally:
            await client.aclose()

    with pytest.raises(OutputError):
        asyncio.run(main())
    sink.abandon()
    received = sim.stats()["received"]
    assert len(ids_in(tmp_path / "out.jsonl")) == 30
    # Only what was already in flight or waiting to be consumed was sent after the failure.
    assert received <= 30 + 3 * concurrency
