"""Executing a run: the sink every result goes through, and the engine (or Ray) feeding it.

    sink = build_sink(args, console, client, journal, check)
    interrupted = await execute(args, spec, client, sink, requests, check)

`execute` is one of three ways: the local engine, Ray workers (--ray), or the provider's
batch API (--batch-api, `cli.batch_run`).

The sink's `write` is called by the loop consuming results, so an `OutputError` (the output
file cannot be written) leaves that loop, which closes the engine's stream: admissions stop
and requests in flight are cancelled. A periodic fsync runs beside it in one task group.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sqlite3
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

from rich.console import Console

from ..budget import Budget
from ..clients import ClientSpec
from ..clients.provider import ProviderClient
from ..engine import Engine, EngineConfig
from ..errorlog import ErrorHandler
from ..io import cache as cache_module
from ..io.cache import SQLiteCache, request_key
from ..io.journal import Journal
from ..io.sink import OutputError, ResultSink
from ..metrics import MetricsListener
from ..progress import RichProgress
from ..replies import ReplyPolicy
from ..types import BatchRequest, CompletionRequest
from ._common import rate_limiter, retry_policy, say
from .costs import pricer_of, until_budget_spent
from .precheck import Precheck
from .structured import reply_policy
from .usage import UsageError

__all__ = ["build_engine", "build_sink", "execute", "execute_realtime", "first_error"]

# `llmbatch.io.cache.CacheError` is being added by another change (a bad cache file raises it
# at construction); until it lands, sqlite's and the OS's errors are what a bad path gives.
_CACHE_OPEN_ERRORS: tuple[type[BaseException], ...] = (
    sqlite3.Error,
    OSError,
    *([cache_module.CacheError] if hasattr(cache_module, "CacheError") else []),
)


def build_sink(
    args: argparse.Namespace,
    console: Console,
    client: ProviderClient,
    journal: Journal,
    check: Precheck,
) -> ResultSink:
    """The one owner of results: output file, progress, error log, cache, what is left."""
    cache = None
    if args.cache:
        provider, base_url = args.provider, client.base_url

        def key(req: CompletionRequest) -> str:
            return request_key(provider, base_url, req.model or client.model, client.body_for(req))

        try:
            cache = SQLiteCache(args.cache, key)
        except _CACHE_OPEN_ERRORS as exc:
            raise UsageError(f"--cache {args.cache}: cannot be used as a cache ({exc})") from None
    error_log = (
        ErrorHandler(args.error_log, prompt_section=args.prompt_section) if args.error_log else None
    )
    progress = RichProgress(description="llmbatch", console=console, disable=args.no_progress)

    def warn(message: str) -> None:
        say(console, f"warning: {message}")

    return ResultSink(
        journal,
        expected=check.runnable,
        progress=progress,
        error_log=error_log,
        cache=cache,
        warn=warn,
        pricer=pricer_of(args, warn),
    )


async def execute(
    args: argparse.Namespace,
    spec: ClientSpec,
    client: ProviderClient,
    sink: ResultSink,
    requests: Iterator[BatchRequest],
    check: Precheck,
    *,
    budget: Budget | None = None,
    reread: Callable[[], Iterator[BatchRequest]] | None = None,
    metrics: MetricsListener | None = None,
) -> bool:
    """Send the requests (here, on Ray, or through the provider's batch API) into the sink;
    return True if interrupted. `reread()` gives the requests again (for --expired realtime).

    With a `budget` (--max-cost), requests stop being pulled once it refused one; those left
    get no line (the sink counts them unfinished) and a rerun picks them up. Through the
    batch API it is checked per submitted batch (`cli.batch_run`).

    A periodic fsync runs beside the results loop in one task group: if either fails (an
    `OutputError`), the other is cancelled and the error propagates.
    """
    if getattr(args, "finish_by", None) is not None:
        from .deadline_run import execute_deadline

        return await execute_deadline(
            args, client, sink, check, reread, budget=budget, metrics=metrics
        )
    if getattr(args, "batch_api", False):
        from .batch_run import execute_batch_api

        return await execute_batch_api(
            args, client, sink, requests, check, reread, budget=budget, metrics=metrics
        )
    if args.ray:
        from .ray_run import execute_on_ray

        requests = _within(budget, sink, requests)
        work = execute_on_ray(args, spec, requests, sink, budget=budget, metrics=metrics)
        return await _with_sync(sink, check.runnable, work)
    return await execute_realtime(
        args, client, sink, requests, check.runnable, budget=budget, metrics=metrics
    )


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
    work = _drain(engine, sink, _within(budget, sink, requests), args.timeout, total)
    return await _with_sync(sink, total, work)


def _within(
    budget: Budget | None, sink: ResultSink, requests: Iterator[BatchRequest]
) -> Iterator[BatchRequest]:
    if budget is None:
        return requests

    def stopped() -> bool:
        return sink.budget_stopped or budget.exhausted is not None

    return until_budget_spent(requests, stopped)


async def _with_sync(sink: ResultSink, total: int, work: Coroutine[Any, Any, None]) -> bool:
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
