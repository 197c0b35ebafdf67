"""The one harness: drains any executor into the run's sink, and owns stopping it.

    control = RunControl()                  # control.stop() from a signal handler
    interrupted = await drain(executor, requests, sink, emit=emit, control=control)

A periodic fsync runs beside the results loop in one task group, so results that trickle in
still reach the disk in time. The first error of either (the output failing: `OutputError`)
cancels the other and propagates: it is never turned into a flag. Stopping is a request,
not an error: `control.stop()` ends the drain as an interrupt (True is returned) and the
run closes its output normally. A cancel from outside (the caller's task cancelled)
propagates as `CancelledError` after the same cleanup. Either way, results the executor
held back are written before returning: they were paid for.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Iterator

from ..io.sink import OutputError, ResultSink
from ..types import BatchRequest
from .events import Emitter, RunStarted, RunStopped
from .executors import Executor

__all__ = ["RunControl", "drain", "first_error"]


class RunControl:
    """Stops a run from outside (a signal handler, another task) as an interrupt: what is
    in flight is cancelled, provider batches keep running, the output is closed, and the
    summary says `interrupted`. Safe to call before the run starts or after it ended."""

    def __init__(self) -> None:
        self.stopped = False
        self._task: asyncio.Task[None] | None = None

    def stop(self) -> None:
        self.stopped = True
        if self._task is not None:
            self._task.cancel()


async def drain(
    executor: Executor,
    requests: Iterator[BatchRequest],
    sink: ResultSink,
    *,
    emit: Emitter,
    total: int,
    control: RunControl | None = None,
) -> bool:
    """Every result of `executor` into `sink`; True if stopped by `control`."""
    control = control or RunControl()
    emit(RunStarted(total, executor.name))
    task = asyncio.create_task(_drain(executor, requests, sink))
    control._task = task
    if control.stopped:
        task.cancel()
    interrupted = False
    try:
        await task
    except asyncio.CancelledError:
        me = asyncio.current_task()
        if me is not None and me.cancelling():
            raise  # cancelled from outside: the caller's cancel, after the cleanup below
        interrupted = True
    finally:
        control._task = None
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        emit(RunStopped(interrupted or control.stopped))
        held = executor.held()
        # Not over a failed output: the error in flight says it all, and the file is gone.
        if held and not isinstance(sys.exception(), OutputError):
            for result in held:
                sink.write(result)
    return interrupted


async def _drain(executor: Executor, requests: Iterator[BatchRequest], sink: ResultSink) -> None:
    try:
        async with asyncio.TaskGroup() as group:
            syncer = group.create_task(sink.keep_synced())
            try:
                stream = executor.stream(requests)
                async with contextlib.aclosing(stream) as results:  # type: ignore[type-var]
                    async for result in results:
                        sink.write(result)
            finally:
                syncer.cancel()
    except BaseExceptionGroup as group:
        raise first_error(group) from None


def first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error to report from a task group: an `OutputError` if there is one."""
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        else:
            leaves.append(exc)

    walk(group)
    return next((e for e in leaves if isinstance(e, OutputError)), leaves[0])
