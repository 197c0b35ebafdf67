"""The realtime path of a run: the engine as the flags build it, draining into the sink.

    interrupted = await execute_realtime(args, client, sink, requests, total)
    engine = build_engine(args, client, sink, budget, metrics)   # for a path of its own

The sink's `write` is called by the loop consuming results, so an `OutputError` (the output
file cannot be written) leaves that loop, which closes the engine's stream: admissions stop
and requests in flight are cancelled. A periodic fsync runs beside it in one task group
(`with_sync`, which the Ray path uses too).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import Coroutine, Iterator
from typing import Any

from ..budget import Budget
from ..clients.provider import ProviderClient
from ..engine import Engine, EngineConfig
from ..io.sink import OutputError, ResultSink
from ..metrics import MetricsListener
from ..replies import ReplyPolicy
from ..types import BatchRequest
from ._common import rate_limiter, retry_policy
from .costs import until_budget_spent
from .structured import reply_policy

__all__ = ["build_engine", "execute_realtime", "first_error", "with_sync", "within_budget"]


async def execute_realtime(
    args: argparse.Namespace,
    client: ProviderClient,
    sink: ResultSink,
    requests: Iterator[BatchRequest],
    total: int,
    *,
    budget: Budget | None = None,
    metrics: MetricsListener | None = None,
    replies: ReplyPolicy | None = None,
) -> bool:
    """Send `requests` through the local engine into the sink; True if interrupted.
    `replies`: the reply policy, if not the flags' (re-asks of batch answers use one less)."""
    engine = build_engine(args, client, sink, budget, metrics, replies)
    work = _drain(engine, sink, within_budget(budget, sink, requests), args.timeout, total)
    return await with_sync(sink, total, work)


def within_budget(
    budget: Budget | None, sink: ResultSink, requests: Iterator[BatchRequest]
) -> Iterator[BatchRequest]:
    if budget is None:
        return requests

    def stopped() -> bool:
        return sink.budget_stopped or budget.exhausted is not None

    return until_budget_spent(requests, stopped)


async def with_sync(sink: ResultSink, total: int, work: Coroutine[Any, Any, None]) -> bool:
    progress = sink.progress
    if progress is not None:
        progress.start(total)
    try:
        async with asyncio.TaskGroup() as group:
            syncer = group.create_task(sink.keep_synced())
            try:
                await work
            finally:
                syncer.cancel()
    except asyncio.CancelledError:
        return True
    except BaseExceptionGroup as group:
        raise first_error(group) from None
    finally:
        if progress is not None:
            progress.stop()
    return False


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


def build_engine(
    args: argparse.Namespace,
    client: ProviderClient,
    sink: ResultSink,
    budget: Budget | None = None,
    metrics: MetricsListener | None = None,
    replies: ReplyPolicy | None = None,
) -> Engine:
    """The realtime engine of a run, as its flags say."""
    engine = Engine(
        client,
        EngineConfig(
            max_concurrency=args.concurrency,
            request_timeout=args.request_timeout,
            retry=retry_policy(args),
            limiter=rate_limiter(args),
            max_outage=args.max_outage,
            listeners=[sink] if metrics is None else [sink, metrics],
            budget=budget,
            replies=replies or reply_policy(args),
        ),
    )
    if metrics is not None:
        metrics.watch(engine.limiter)
    return engine


async def _drain(
    engine: Engine,
    sink: ResultSink,
    requests: Iterator[BatchRequest],
    timeout: float | None,
    total: int,
) -> None:
    """Every result of `requests` through `engine`, into the sink."""
    stream = engine.stream(requests, timeout=timeout, total=total, finish_unstarted=False)
    # Leaving this block by an exception (the sink's OutputError) closes the stream, which
    # stops admissions and cancels the requests in flight.
    async with contextlib.aclosing(stream) as results:
        async for result in results:
            sink.write(result)
