"""The one harness (`pipeline/harness.py`): any executor drained into a real journal.

The executors here are scripted streams of results (the harness's input); the journal and
sink are the real ones on real files. Time is looptime's virtual clock, so the periodic
fsync is observed without waiting for it.
"""

from __future__ import annotations

import asyncio
import errno
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import looptime
import pytest

from llmbatch.io.journal import Journal
from llmbatch.io.sink import OutputError, ResultSink
from llmbatch.pipeline.events import Emitter, RunStarted, RunStopped
from llmbatch.pipeline.harness import RunControl, drain, first_error
from llmbatch.types import BatchRequest, BatchResult, CompletionRequest, CompletionResponse

from .helpers import read_out

T = TypeVar("T")
Step = BatchResult | float | BaseException  # a result, a pause (virtual seconds), an error


def in_virtual_time(main: Callable[[], Awaitable[T]]) -> T:
    loop = looptime.new_event_loop(start=0, end=3600)
    try:
        return loop.run_until_complete(main())
    finally:
        loop.close()


def ok(rid: str) -> BatchResult:
    return BatchResult(rid, response=CompletionResponse(f"answer {rid}"), attempts=1)


class Scripted:
    """An executor playing a script of results, pauses and errors; `held` is kept back."""

    name = "scripted"

    def __init__(self, *steps: Step, held: tuple[BatchResult, ...] = ()) -> None:
        self.steps = steps
        self.kept = list(held)
        self.taken: list[str] = []

    async def stream(self, requests: Iterator[BatchRequest]) -> AsyncIterator[BatchResult]:
        for step in self.steps:
            if isinstance(step, BaseException):
                raise step
            if isinstance(step, float):
                await asyncio.sleep(step)
                continue
            self.taken.append(next(requests).id)
            yield step

    def held(self) -> list[BatchResult]:
        return self.kept


class Harness:
    """A real journal and sink in `tmp_path`, the fsyncs it made, the events it emitted."""

    def __init__(self, tmp_path: Path, n: int = 5) -> None:
        self.path = tmp_path / "out.jsonl"
        self.fsyncs: list[tuple[float, list[str]]] = []  # (virtual time, ids on disk)
        self.events: list[Any] = []
        self.n = n

    async def drain(self, executor: Scripted, control: RunControl | None = None) -> bool:
        loop = asyncio.get_running_loop()

        def fsync(fd: int) -> None:
            self.fsyncs.append((loop.time(), [r["custom_id"] for r in read_out(self.path)]))

        journal = Journal(self.path, clock=loop.time, fsync=fsync)
        journal.open()
        self.sink = ResultSink(journal, expected=self.n)
        requests = iter(
            [BatchRequest(f"r{i}", CompletionRequest(prompt=f"q{i}")) for i in range(self.n)]
        )
        try:
            return await drain(
                executor,
                requests,
                self.sink,
                emit=Emitter([self.events.append]),
                total=self.n,
                control=control,
            )
        finally:
            self.sink.close()

    def ids(self) -> list[str]:
        return [r["custom_id"] for r in read_out(self.path)]


def test_results_that_trickle_in_reach_the_disk_while_the_executor_waits(tmp_path: Path) -> None:
    harness = Harness(tmp_path)
    executor = Scripted(ok("r0"), 30.0, ok("r1"))
    in_virtual_time(lambda: harness.drain(executor))
    # r0 was fsynced about a second after it came, long before r1 (30 s later) or the end.
    early = [(t, ids) for t, ids in harness.fsyncs if t < 30.0]
    assert early and early[0][1] == ["r0"] and early[0][0] <= 2.0
    assert harness.ids() == ["r0", "r1"]
    assert harness.events[0] == RunStarted(5, "scripted")
    assert harness.events[-1] == RunStopped(False)


def test_an_executors_error_propagates_and_what_came_before_is_kept(tmp_path: Path) -> None:
    harness = Harness(tmp_path)
    executor = Scripted(ok("r0"), ok("r1"), 5.0, ConnectionError("the provider is gone"))
    with pytest.raises(ConnectionError, match="the provider is gone"):
        in_virtual_time(lambda: harness.drain(executor))
    assert harness.ids() == ["r0", "r1"]
    assert harness.sink.unfinished == 3


def test_stop_ends_the_drain_as_an_interrupt_and_writes_what_was_held(tmp_path: Path) -> None:
    harness = Harness(tmp_path)
    executor = Scripted(ok("r0"), 600.0, ok("r1"), held=(ok("r4"),))
    control = RunControl()

    async def main() -> bool:
        asyncio.get_running_loop().call_later(10.0, control.stop)
        return await harness.drain(executor, control)

    assert in_virtual_time(main) is True
    assert harness.ids() == ["r0", "r4"]  # r1 never came; the held result was paid for
    assert harness.events[-1] == RunStopped(True)


def test_a_stop_before_the_start_sends_nothing(tmp_path: Path) -> None:
    harness = Harness(tmp_path)
    executor = Scripted(ok("r0"))
    control = RunControl()
    control.stop()
    assert in_virtual_time(lambda: harness.drain(executor, control)) is True
    assert executor.taken == [] and harness.ids() == []


def test_a_cancel_from_outside_propagates_after_the_cleanup(tmp_path: Path) -> None:
    harness = Harness(tmp_path)
    executor = Scripted(ok("r0"), 600.0, ok("r1"), held=(ok("r3"),))

    async def main() -> None:
        task = asyncio.create_task(harness.drain(executor))
        await asyncio.sleep(10.0)
        task.cancel()
        await task

    with pytest.raises(asyncio.CancelledError):
        in_virtual_time(main)
    assert harness.ids() == ["r0", "r3"]


def test_an_output_error_is_the_one_reported() -> None:
    full = OutputError(Path("out.jsonl"), OSError(errno.ENOSPC, "No space left on device"))
    group = BaseExceptionGroup("both", [ValueError("late"), ExceptionGroup("inner", [full])])
    assert first_error(group) is full
    assert isinstance(first_error(BaseExceptionGroup("one", [KeyError("x")])), KeyError)
